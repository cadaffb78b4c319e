package tlsfiles

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// handshake runs a TLS handshake between server and client over loopback
// TCP (a synchronous pipe would deadlock when a side that failed sends its
// alert while the other is still writing) and returns the certificate the client saw and each side's error. The
// server reads one byte after its handshake so that a client certificate
// refused under TLS 1.3 (reported to the client after its handshake) shows
// as a client error too.
func handshake(t *testing.T, server, client *tls.Config) (peer *x509.Certificate, serverErr, clientErr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	c2, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c1, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	defer c2.Close()
	deadline := time.Now().Add(5 * time.Second)
	c1.SetDeadline(deadline)
	c2.SetDeadline(deadline)
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := tls.Server(c1, server)
		if serverErr = sc.Handshake(); serverErr != nil {
			c1.Close()
			return
		}
		_, serverErr = sc.Write([]byte{1})
	})
	cc := tls.Client(c2, client)
	clientErr = cc.Handshake()
	if clientErr == nil {
		if _, err := cc.Read(make([]byte, 1)); err != nil {
			clientErr = err
		}
		if cs := cc.ConnectionState(); len(cs.PeerCertificates) > 0 {
			peer = cs.PeerCertificates[0]
		}
	}
	c2.Close()
	wg.Wait()
	return peer, serverErr, clientErr
}

// pki is a CA with a server and a client certificate, written to files.
type pki struct {
	ca             *tlstest.CA
	server, client tlstest.Leaf
}

func newPKI(t *testing.T, name string) pki {
	ca := tlstest.NewCA(t, name+" CA")
	return pki{
		ca:     ca,
		server: ca.Issue(t, tlstest.Options{CommonName: "lookaside", Names: []string{"lookaside", "127.0.0.1"}}),
		client: ca.Issue(t, tlstest.Options{CommonName: name + " client"}),
	}
}

func mustStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return s
}

func mustServerConfig(t *testing.T, s *Store) *tls.Config {
	t.Helper()
	c, err := s.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewRejects(t *testing.T) {
	p := newPKI(t, "a")
	other := tlstest.NewCA(t, "other").Issue(t, tlstest.Options{CommonName: "x"})
	expired := p.ca.Issue(t, tlstest.Options{CommonName: "old", NotAfter: time.Now().Add(-time.Minute)})
	tests := []struct {
		name  string
		write func(dir string) Config
		want  []string // substrings of the error
	}{
		{"certificate without key", func(string) Config { return Config{CertFile: "c.pem"} },
			[]string{"certificate file c.pem has no key file"}},
		{"key without certificate", func(string) Config { return Config{KeyFile: "k.pem"} },
			[]string{"key file k.pem has no certificate file"}},
		{"optional client certificate without CA", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			return Config{CertFile: f.Cert, KeyFile: f.Key, ClientCertOptional: true}
		}, []string{"ClientCertOptional needs a CA file"}},
		{"negative poll interval", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			return Config{CertFile: f.Cert, KeyFile: f.Key, PollInterval: -time.Second}
		}, []string{"poll interval -1s is negative"}},
		{"poll interval too short", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			return Config{CertFile: f.Cert, KeyFile: f.Key, PollInterval: time.Millisecond}
		}, []string{"poll interval 1ms is under 10ms"}},
		{"missing certificate file", func(dir string) Config {
			return Config{CertFile: filepath.Join(dir, "nope.pem"), KeyFile: filepath.Join(dir, "k.pem")}
		}, []string{"certificate file", "nope.pem", "no such file"}},
		{"missing CA file", func(dir string) Config {
			return Config{CAFile: filepath.Join(dir, "ca-nope.pem")}
		}, []string{"CA file", "ca-nope.pem", "no such file"}},
		{"certificate file not PEM", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			os.WriteFile(f.Cert, []byte("hello"), 0o600)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"certificate file", "cert.pem", "no PEM CERTIFICATE block"}},
		{"certificate file cut short", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			os.WriteFile(f.Cert, p.server.CertPEM[:len(p.server.CertPEM)/2], 0o600)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"certificate file", "cert.pem", "no PEM CERTIFICATE block"}},
		{"second certificate cut short", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			os.WriteFile(f.Cert, append(p.server.CertPEM, p.ca.PEM[:40]...), 0o600)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"certificate file", "cert.pem", "data after certificate 1 is not PEM"}},
		{"key in the certificate file", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			os.WriteFile(f.Cert, p.server.KeyPEM, 0o600)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"certificate file", "cert.pem", `"PRIVATE KEY", not a CERTIFICATE`}},
		{"key file empty", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			os.WriteFile(f.Key, nil, 0o600)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"key file", "key.pem", "no PEM PRIVATE KEY block"}},
		{"key of another certificate", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, p.server)
			os.WriteFile(f.Key, other.KeyPEM, 0o600)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"key file", "key.pem", "does not go with certificate file", "cert.pem"}},
		{"expired certificate", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, expired)
			return Config{CertFile: f.Cert, KeyFile: f.Key}
		}, []string{"certificate file", "cert.pem", "expired at"}},
		{"CA file with no certificate", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, tlstest.Leaf{}, []byte("# nothing\n"))
			return Config{CAFile: f.CA}
		}, []string{"CA file", "ca.pem", "no PEM CERTIFICATE block"}},
		{"CA file holding a key", func(dir string) Config {
			f := tlstest.WriteFiles(t, dir, tlstest.Leaf{}, p.ca.PEM, p.server.KeyPEM)
			return Config{CAFile: f.CA}
		}, []string{"CA file", "ca.pem", "PEM block 2", "not a CERTIFICATE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.write(t.TempDir())
			s, err := New(cfg)
			if err == nil {
				t.Fatalf("New(%+v) = %v, nil; want an error", cfg, s)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("New error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestHandshakes(t *testing.T) {
	p := newPKI(t, "a")
	q := newPKI(t, "q") // another CA
	dir := t.TempDir()
	srvTLS := tlstest.WriteFiles(t, filepath.Join(mkdir(t, dir, "srv")), p.server)
	srvMTLS := tlstest.WriteFiles(t, filepath.Join(mkdir(t, dir, "srvm")), p.server, p.ca.PEM)
	cliA := tlstest.WriteFiles(t, filepath.Join(mkdir(t, dir, "clia")), p.client, p.ca.PEM)
	cliQ := tlstest.WriteFiles(t, filepath.Join(mkdir(t, dir, "cliq")), q.client, p.ca.PEM)
	cliNoCert := tlstest.WriteFiles(t, filepath.Join(mkdir(t, dir, "clin")), tlstest.Leaf{}, p.ca.PEM)
	cliWrongRoots := tlstest.WriteFiles(t, filepath.Join(mkdir(t, dir, "cliw")), p.client, q.ca.PEM)

	tests := []struct {
		name        string
		server      Config
		client      Config
		serverName  string // tls.Config.ServerName set by the dialer
		wantErr     string // "" for success; else a substring of either side's error
		wantVerifed bool   // the server verified a client certificate
	}{
		{"TLS", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key}, Config{CAFile: cliNoCert.CA}, "lookaside", "", false},
		{"TLS, name by override", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key},
			Config{CAFile: cliNoCert.CA, ServerName: "lookaside"}, "", "", false},
		{"TLS, wrong name", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key}, Config{CAFile: cliNoCert.CA}, "user-srv",
			"certificate is valid for lookaside, not user-srv", false},
		{"TLS, override wins over the dialed name", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key},
			Config{CAFile: cliNoCert.CA, ServerName: "user-srv"}, "lookaside", "not user-srv", false},
		{"TLS, no name", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key}, Config{CAFile: cliNoCert.CA}, "",
			"no server name", false},
		{"TLS, untrusted server", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key}, Config{CAFile: cliWrongRoots.CA}, "lookaside",
			"unknown authority", false},
		{"TLS, system roots", Config{CertFile: srvTLS.Cert, KeyFile: srvTLS.Key}, Config{}, "lookaside",
			"unknown authority", false},
		{"mTLS", Config{CertFile: srvMTLS.Cert, KeyFile: srvMTLS.Key, CAFile: srvMTLS.CA},
			Config{CertFile: cliA.Cert, KeyFile: cliA.Key, CAFile: cliA.CA}, "lookaside", "", true},
		{"mTLS, no client certificate", Config{CertFile: srvMTLS.Cert, KeyFile: srvMTLS.Key, CAFile: srvMTLS.CA},
			Config{CAFile: cliNoCert.CA}, "lookaside", "certificate", false},
		{"mTLS, client certificate of another CA", Config{CertFile: srvMTLS.Cert, KeyFile: srvMTLS.Key, CAFile: srvMTLS.CA},
			Config{CertFile: cliQ.Cert, KeyFile: cliQ.Key, CAFile: cliQ.CA}, "lookaside", "unknown authority", false},
		{"optional client certificate, none", Config{CertFile: srvMTLS.Cert, KeyFile: srvMTLS.Key, CAFile: srvMTLS.CA, ClientCertOptional: true},
			Config{CAFile: cliNoCert.CA}, "lookaside", "", false},
		{"optional client certificate, given", Config{CertFile: srvMTLS.Cert, KeyFile: srvMTLS.Key, CAFile: srvMTLS.CA, ClientCertOptional: true},
			Config{CertFile: cliA.Cert, KeyFile: cliA.Key, CAFile: cliA.CA}, "lookaside", "", true},
		{"optional client certificate, of another CA", Config{CertFile: srvMTLS.Cert, KeyFile: srvMTLS.Key, CAFile: srvMTLS.CA, ClientCertOptional: true},
			Config{CertFile: cliQ.Cert, KeyFile: cliQ.Key, CAFile: cliQ.CA}, "lookaside", "unknown authority", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := mustServerConfig(t, mustStore(t, tc.server))
			var verified bool
			srv.VerifyConnection = func(cs tls.ConnectionState) error {
				verified = len(cs.VerifiedChains) > 0
				return nil
			}
			cli := mustStore(t, tc.client).ClientConfig()
			if tc.serverName != "" {
				cli.ServerName = tc.serverName
			}
			peer, serr, cerr := handshake(t, srv, cli)
			if tc.wantErr == "" {
				if serr != nil || cerr != nil {
					t.Fatalf("handshake failed: server %v, client %v", serr, cerr)
				}
				if peer.SerialNumber.Cmp(p.server.Cert.SerialNumber) != 0 {
					t.Errorf("client saw certificate %v, want the server's %v", peer.SerialNumber, p.server.Cert.SerialNumber)
				}
				if verified != tc.wantVerifed {
					t.Errorf("server verified a client certificate: %v, want %v", verified, tc.wantVerifed)
				}
				return
			}
			if serr == nil && cerr == nil {
				t.Fatalf("handshake succeeded; want an error saying %q", tc.wantErr)
			}
			if !strings.Contains(errString(serr)+" | "+errString(cerr), tc.wantErr) {
				t.Errorf("errors: server %v, client %v; want one saying %q", serr, cerr, tc.wantErr)
			}
		})
	}
	if _, err := mustStore(t, Config{CAFile: cliA.CA}).ServerConfig(); err == nil {
		t.Error("ServerConfig of a store without a certificate: no error")
	}
}

func mkdir(t *testing.T, parts ...string) string {
	d := filepath.Join(parts...)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// logCounter is a logger whose WARN lines the test counts.
func logCounter() (*slog.Logger, *syncbuf.Buffer) {
	var buf syncbuf.Buffer
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), &buf
}

// TestRotation rewrites the files of a running store, reloaded by Reload
// or by the poller, and checks what a new handshake sees.
func TestRotation(t *testing.T) {
	p := newPKI(t, "a")
	rotated := p.ca.Issue(t, tlstest.Options{CommonName: "lookaside-2", Names: []string{"lookaside"}})
	garbage := tlstest.Leaf{CertPEM: []byte("garbage"), KeyPEM: []byte("garbage")}
	for _, mode := range []string{"Reload", "poll"} {
		t.Run(mode, func(t *testing.T) {
			tests := []struct {
				name string
				// steps rewrite the files; after each the store reloads.
				steps []func(f tlstest.Files)
				// want is the serial the client sees after the steps.
				want *x509.Certificate
				// warns is how many WARN lines the poller writes.
				warns int
			}{
				{"new certificate", []func(tlstest.Files){
					func(f tlstest.Files) { tlstest.WriteFiles(t, filepath.Dir(f.Cert), rotated) },
				}, rotated.Cert, 0},
				{"garbage keeps the old one", []func(tlstest.Files){
					func(f tlstest.Files) { tlstest.WriteFiles(t, filepath.Dir(f.Cert), garbage) },
					func(tlstest.Files) {}, // the same bad content again: logged once
				}, p.server.Cert, 1},
				{"half-written: new certificate, old key, then the key", []func(tlstest.Files){
					func(f tlstest.Files) { tlstest.WriteAtomic(t, f.Cert, rotated.CertPEM) },
					func(f tlstest.Files) { tlstest.WriteAtomic(t, f.Key, rotated.KeyPEM) },
				}, rotated.Cert, 1},
				{"truncated in place keeps the old one", []func(tlstest.Files){
					func(f tlstest.Files) { os.WriteFile(f.Cert, rotated.CertPEM[:100], 0o600) },
				}, p.server.Cert, 1},
				{"deleted keeps the old one", []func(tlstest.Files){
					func(f tlstest.Files) { os.Remove(f.Key) },
				}, p.server.Cert, 1},
				{"bad, then good", []func(tlstest.Files){
					func(f tlstest.Files) { tlstest.WriteFiles(t, filepath.Dir(f.Cert), garbage) },
					func(f tlstest.Files) { tlstest.WriteFiles(t, filepath.Dir(f.Cert), rotated) },
				}, rotated.Cert, 1},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					f := tlstest.WriteFiles(t, t.TempDir(), p.server, p.ca.PEM)
					log, buf := logCounter()
					s := mustStore(t, Config{CertFile: f.Cert, KeyFile: f.Key, PollInterval: 20 * time.Millisecond, Logger: log})
					srv := mustServerConfig(t, s)
					cli := mustStore(t, Config{CAFile: f.CA, ServerName: "lookaside"}).ClientConfig()
					ctx, cancel := context.WithCancel(t.Context())
					var wg sync.WaitGroup
					defer func() { cancel(); wg.Wait() }()
					if mode == "poll" {
						wg.Go(func() { s.Run(ctx) })
					}
					for _, step := range tc.steps {
						step(f)
						if mode == "Reload" {
							s.Reload()
							s.poll() // logs as the poller would, when
							s.poll() // two polls see the same bad content
						} else {
							time.Sleep(80 * time.Millisecond) // a few polls
						}
					}
					peer, serr, cerr := handshake(t, srv, cli)
					if serr != nil || cerr != nil {
						t.Fatalf("handshake after rotation failed: server %v, client %v", serr, cerr)
					}
					if peer.SerialNumber.Cmp(tc.want.SerialNumber) != 0 {
						t.Errorf("client saw certificate %v (%s), want %v (%s)", peer.SerialNumber, peer.Subject, tc.want.SerialNumber, tc.want.Subject)
					}
					if got := strings.Count(buf.String(), "level=WARN"); got != tc.warns {
						t.Errorf("%d WARN lines, want %d:\n%s", got, tc.warns, buf)
					}
					if tc.warns > 0 && !strings.Contains(buf.String(), filepath.Dir(f.Cert)) {
						t.Errorf("the warning does not name the file:\n%s", buf)
					}
					if tc.want == rotated.Cert && !strings.Contains(buf.String(), "TLS files reloaded") {
						t.Errorf("no INFO line for the new certificate:\n%s", buf)
					}
					info := s.Info()
					if info.NotAfter.IsZero() || info.Subject != "CN="+tc.want.Subject.CommonName {
						t.Errorf("Info = %+v, want subject CN=%s", info, tc.want.Subject.CommonName)
					}
					if bad := tc.want != rotated.Cert; bad != (info.LastError != nil) {
						t.Errorf("Info.LastError = %v with the old certificate kept: %v", info.LastError, bad)
					}
				})
			}
		})
	}
}

// TestReloadReturnsError: Reload names the bad file and keeps the material.
func TestReloadReturnsError(t *testing.T) {
	p := newPKI(t, "a")
	f := tlstest.WriteFiles(t, t.TempDir(), p.server)
	s := mustStore(t, Config{CertFile: f.Cert, KeyFile: f.Key})
	tlstest.WriteAtomic(t, f.Key, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	err := s.Reload()
	if err == nil || !strings.Contains(err.Error(), f.Key) {
		t.Fatalf("Reload = %v, want an error naming %s", err, f.Key)
	}
	if got := s.cur.Load().cert.Leaf.SerialNumber; got.Cmp(p.server.Cert.SerialNumber) != 0 {
		t.Errorf("certificate in force %v, want the old %v", got, p.server.Cert.SerialNumber)
	}
	tlstest.WriteAtomic(t, f.Key, p.server.KeyPEM)
	if err := s.Reload(); err != nil {
		t.Errorf("Reload after the fix: %v", err)
	}
	if err := s.Info().LastError; err != nil {
		t.Errorf("Info.LastError after a good reload = %v", err)
	}
}

// TestCAChange rotates the CA bundles on both sides: clients of the new CA
// are accepted, of the old one refused, and a client trusting only the new
// CA accepts the server's new certificate.
func TestCAChange(t *testing.T) {
	oldPKI, newPKI := newPKI(t, "old"), newPKI(t, "new")
	for _, mode := range []string{"Reload", "poll"} {
		t.Run(mode, func(t *testing.T) {
			sf := tlstest.WriteFiles(t, mkdir(t, t.TempDir(), "srv"), oldPKI.server, oldPKI.ca.PEM)
			cf := tlstest.WriteFiles(t, mkdir(t, t.TempDir(), "cli"), oldPKI.client, oldPKI.ca.PEM)
			srvStore := mustStore(t, Config{CertFile: sf.Cert, KeyFile: sf.Key, CAFile: sf.CA, PollInterval: 20 * time.Millisecond})
			cliStore := mustStore(t, Config{CertFile: cf.Cert, KeyFile: cf.Key, CAFile: cf.CA, ServerName: "lookaside", PollInterval: 20 * time.Millisecond})
			srv, cli := mustServerConfig(t, srvStore), cliStore.ClientConfig()
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			defer func() { cancel(); wg.Wait() }()
			if mode == "poll" {
				wg.Go(func() { srvStore.Run(ctx) })
				wg.Go(func() { cliStore.Run(ctx) })
			}
			reload := func() {
				if mode == "Reload" {
					if err := srvStore.Reload(); err != nil {
						t.Fatal(err)
					}
					if err := cliStore.Reload(); err != nil {
						t.Fatal(err)
					}
				} else {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if _, serr, cerr := handshake(t, srv, cli); serr != nil || cerr != nil {
				t.Fatalf("before the change: server %v, client %v", serr, cerr)
			}
			// The server moves to the new CA and trusts both while clients move.
			tlstest.WriteFiles(t, filepath.Dir(sf.Cert), newPKI.server, oldPKI.ca.PEM, newPKI.ca.PEM)
			reload()
			_, serr, cerr := handshake(t, srv, cli)
			if cerr == nil || !strings.Contains(cerr.Error(), "unknown authority") {
				t.Errorf("a client trusting only the old CA accepted the new server certificate: server %v, client %v", serr, cerr)
			}
			// The client moves to the new CA and certificate.
			tlstest.WriteFiles(t, filepath.Dir(cf.Cert), newPKI.client, newPKI.ca.PEM)
			reload()
			if _, serr, cerr := handshake(t, srv, cli); serr != nil || cerr != nil {
				t.Fatalf("after both moved: server %v, client %v", serr, cerr)
			}
			// The server drops the old CA: an old client is refused.
			tlstest.WriteFiles(t, filepath.Dir(sf.Cert), newPKI.server, newPKI.ca.PEM)
			reload()
			oldCli := mustStore(t, Config{CertFile: cf.Cert, KeyFile: cf.Key, CAFile: cf.CA, ServerName: "lookaside"})
			tlstest.WriteFiles(t, filepath.Dir(cf.Cert), oldPKI.client, newPKI.ca.PEM)
			if err := oldCli.Reload(); err != nil {
				t.Fatal(err)
			}
			_, serr, cerr = handshake(t, srv, oldCli.ClientConfig())
			if serr == nil || !strings.Contains(serr.Error(), "unknown authority") {
				t.Errorf("a client of the dropped CA was accepted: server %v, client %v", serr, cerr)
			}
		})
	}
}
