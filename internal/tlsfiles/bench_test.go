package tlsfiles

import (
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// BenchmarkHandshake compares a full mutual-TLS handshake (ECDSA P-256,
// TLS 1.3, no resumption) with a Store's configs, which look the material
// up at each handshake, to one with a fixed tls.Config.
func BenchmarkHandshake(b *testing.B) {
	ca := tlstest.NewCA(b, "ca")
	srvLeaf := ca.Issue(b, tlstest.Options{CommonName: "lookaside", Names: []string{"lookaside"}})
	cliLeaf := ca.Issue(b, tlstest.Options{CommonName: "client"})
	sf := tlstest.WriteFiles(b, mkdirB(b, b.TempDir(), "s"), srvLeaf, ca.PEM)
	cf := tlstest.WriteFiles(b, mkdirB(b, b.TempDir(), "c"), cliLeaf, ca.PEM)
	quiet := slog.New(slog.DiscardHandler)
	srvStore, err := New(Config{CertFile: sf.Cert, KeyFile: sf.Key, CAFile: sf.CA, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	cliStore, err := New(Config{CertFile: cf.Cert, KeyFile: cf.Key, CAFile: cf.CA, ServerName: "lookaside", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	storeSrv, err := srvStore.ServerConfig()
	if err != nil {
		b.Fatal(err)
	}
	storeCli := cliStore.ClientConfig()

	srvPair, _ := tls.X509KeyPair(srvLeaf.CertPEM, srvLeaf.KeyPEM)
	cliPair, _ := tls.X509KeyPair(cliLeaf.CertPEM, cliLeaf.KeyPEM)
	fixedSrv := &tls.Config{Certificates: []tls.Certificate{srvPair}, ClientCAs: srvStore.cur.Load().pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	fixedCli := &tls.Config{Certificates: []tls.Certificate{cliPair}, RootCAs: cliStore.cur.Load().pool, ServerName: "lookaside"}

	for _, bc := range []struct {
		name     string
		srv, cli *tls.Config
	}{{"fixed", fixedSrv, fixedCli}, {"store", storeSrv, storeCli}} {
		b.Run(bc.name, func(b *testing.B) {
			srv, cli := bc.srv.Clone(), bc.cli.Clone()
			srv.SessionTicketsDisabled = true
			cli.ClientSessionCache = nil
			b.ReportAllocs()
			for b.Loop() {
				c1, c2 := net.Pipe()
				var wg sync.WaitGroup
				var serr error
				wg.Go(func() { serr = tls.Server(c1, srv).Handshake() })
				if err := tls.Client(c2, cli).Handshake(); err != nil {
					b.Fatal(err)
				}
				wg.Wait()
				if serr != nil {
					b.Fatal(serr)
				}
				c1.Close()
				c2.Close()
			}
		})
	}
}

func mkdirB(b *testing.B, parts ...string) string {
	b.Helper()
	d := filepath.Join(parts...)
	if err := os.MkdirAll(d, 0o700); err != nil {
		b.Fatal(err)
	}
	return d
}
