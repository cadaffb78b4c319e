package tlsfiles

import (
	"strings"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// FuzzParse feeds arbitrary file contents to the parsers: they never
// panic, an error always names the file at fault, and material they
// accept is usable (a leaf certificate that goes with its key).
func FuzzParse(f *testing.F) {
	ca := tlstest.NewCA(f, "ca")
	leaf := ca.Issue(f, tlstest.Options{CommonName: "x", Names: []string{"x"}})
	f.Add(leaf.CertPEM, leaf.KeyPEM, ca.PEM)
	f.Add(append(leaf.CertPEM, ca.PEM...), leaf.KeyPEM, append(ca.PEM, ca.PEM...))
	f.Add(leaf.CertPEM[:len(leaf.CertPEM)/2], leaf.KeyPEM, ca.PEM[:40])
	f.Add(leaf.KeyPEM, leaf.CertPEM, leaf.KeyPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte{}, []byte("\n\n"))
	now := time.Now()
	f.Fuzz(func(t *testing.T, certPEM, keyPEM, caPEM []byte) {
		cert, err := parsePair("cert.pem", "key.pem", certPEM, keyPEM, now)
		if err != nil {
			if !strings.Contains(err.Error(), "cert.pem") && !strings.Contains(err.Error(), "key.pem") {
				t.Errorf("error %q names no file", err)
			}
		} else if cert.Leaf == nil || cert.PrivateKey == nil || len(cert.Certificate) == 0 {
			t.Errorf("accepted an unusable certificate: %+v", cert)
		}
		certs, err := parseCerts("ca.pem", "CA file", caPEM)
		if err != nil {
			if !strings.Contains(err.Error(), "ca.pem") {
				t.Errorf("error %q does not name the CA file", err)
			}
		} else if len(certs) == 0 {
			t.Error("accepted a CA file without certificates")
		}
	})
}
