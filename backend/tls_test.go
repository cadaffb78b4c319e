package backend

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
	"github.com/lookaside-lb/lookaside/loadreport"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// tlsSetup is a CA, the backend's files and a client's.
type tlsSetup struct {
	ca     *tlstest.CA
	server tlstest.Files // cert, key, and the CA as client CA
	client tlstest.Files // a client certificate, and the CA as roots
}

func newTLSSetup(t *testing.T) tlsSetup {
	ca := tlstest.NewCA(t, "ca")
	dir := t.TempDir()
	mk := func(name string) string {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return tlsSetup{
		ca:     ca,
		server: tlstest.WriteFiles(t, mk("server"), ca.Issue(t, tlstest.Options{CommonName: "backend", Names: []string{"user-srv", "127.0.0.1"}}), ca.PEM),
		client: tlstest.WriteFiles(t, mk("client"), ca.Issue(t, tlstest.Options{CommonName: "client"}), ca.PEM),
	}
}

// clientCreds returns credentials trusting the CA, with the client
// certificate when cert is set.
func (s tlsSetup) clientCreds(t *testing.T, cert bool) credentials.TransportCredentials {
	cfg := tlsfiles.Config{CAFile: s.client.CA, ServerName: "user-srv", Logger: slog.New(slog.DiscardHandler)}
	if cert {
		cfg.CertFile, cfg.KeyFile = s.client.Cert, s.client.Key
	}
	st, err := tlsfiles.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st.ClientCredentials()
}

func dialCreds(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// callCodes makes a User call and a health check and returns their codes.
func callCodes(t *testing.T, cc *grpc.ClientConn) (user, health codes.Code) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := userpb.NewUserClient(cc).GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
	user = status.Code(err)
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return user, status.Code(err)
}

func TestTLSServing(t *testing.T) {
	s := newTLSSetup(t)
	tests := []struct {
		name       string
		tls        tlsfiles.Config
		healthOpen bool
		// codes of a User call and a health check for a plaintext client,
		// a TLS client without certificate, and one with.
		plain, noCert, withCert [2]codes.Code
	}{
		{"TLS", tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key}, false,
			[2]codes.Code{codes.Unavailable, codes.Unavailable}, [2]codes.Code{codes.OK, codes.OK}, [2]codes.Code{codes.OK, codes.OK}},
		{"mTLS", tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key, CAFile: s.server.CA}, false,
			[2]codes.Code{codes.Unavailable, codes.Unavailable}, [2]codes.Code{codes.Unavailable, codes.Unavailable}, [2]codes.Code{codes.OK, codes.OK}},
		{"mTLS, health without client certificate", tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key, CAFile: s.server.CA}, true,
			[2]codes.Code{codes.Unavailable, codes.Unavailable}, [2]codes.Code{codes.Unauthenticated, codes.OK}, [2]codes.Code{codes.OK, codes.OK}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.TLS = tc.tls
			cfg.HealthWithoutClientCert = tc.healthOpen
			r := serve(t, cfg)
			for _, c := range []struct {
				what string
				cc   *grpc.ClientConn
				want [2]codes.Code
			}{
				{"plaintext client", dial(t, r.Addr()), tc.plain},
				{"TLS client without certificate", dialCreds(t, r.Addr(), s.clientCreds(t, false)), tc.noCert},
				{"TLS client with certificate", dialCreds(t, r.Addr(), s.clientCreds(t, true)), tc.withCert},
			} {
				if u, h := callCodes(t, c.cc); u != c.want[0] || h != c.want[1] {
					t.Errorf("%s: User call %v, health check %v; want %v, %v", c.what, u, h, c.want[0], c.want[1])
				}
			}
		})
	}
}

// TestTLSORCA: the ORCA service on the TLS server answers a collector with
// the same credentials as the User service.
func TestTLSORCA(t *testing.T) {
	s := newTLSSetup(t)
	cfg := testConfig(t)
	cfg.TLS = tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key, CAFile: s.server.CA}
	cfg.ORCAMinInterval = 20 * time.Millisecond
	r := serve(t, cfg)
	c, err := loadreport.NewCollector(loadreport.Config{Interval: 20 * time.Millisecond, Credentials: s.clientCreds(t, true), Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Update(discovery.Snapshot{Endpoints: []discovery.Endpoint{{ID: r.ID(), Addr: netip.MustParseAddrPort(r.ListenAddr().String())}}})
	deadline := time.After(testTimeout)
	for {
		l := c.Loads()
		if _, ok := l.Reports[r.ID()]; ok {
			break
		}
		select {
		case <-l.Changed:
		case <-deadline:
			t.Fatalf("no ORCA report over mTLS: %+v", l.Streams)
		}
	}
}

// TestTLSRotation rewrites the backend's certificate: a new connection
// gets it after ReloadTLS, and after a poll without it.
func TestTLSRotation(t *testing.T) {
	for _, mode := range []string{"ReloadTLS", "poll"} {
		t.Run(mode, func(t *testing.T) {
			s := newTLSSetup(t)
			cfg := testConfig(t)
			cfg.TLS = tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key, PollInterval: 50 * time.Millisecond}
			if mode == "ReloadTLS" {
				cfg.TLS.PollInterval = time.Hour
			}
			r := serve(t, cfg)
			first := serverCert(t, r.Addr(), s.clientCreds(t, false))
			next := s.ca.Issue(t, tlstest.Options{CommonName: "backend-2", Names: []string{"user-srv"}})
			tlstest.WriteFiles(t, filepath.Dir(s.server.Cert), next)
			if mode == "ReloadTLS" {
				if err := r.ReloadTLS(); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(testTimeout)
			for {
				got := serverCert(t, r.Addr(), s.clientCreds(t, false))
				if got.SerialNumber.Cmp(next.Cert.SerialNumber) == 0 {
					break
				}
				if got.SerialNumber.Cmp(first.SerialNumber) != 0 || time.Now().After(deadline) {
					t.Fatalf("server certificate %v, want %v (the new one)", got.SerialNumber, next.Cert.SerialNumber)
				}
				if mode == "ReloadTLS" {
					t.Fatal("the new certificate is not in force right after ReloadTLS")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// serverCert makes a call on a new connection and returns the server's
// certificate.
func serverCert(t *testing.T, addr string, creds credentials.TransportCredentials) *x509.Certificate {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
}

func TestTLSConfigRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want string
	}{
		{"CA without certificate", func(c *Config) { c.TLS.CAFile = "ca.pem" }, "TLS needs a certificate and key file"},
		{"certificate without key", func(c *Config) { c.TLS.CertFile = "c.pem" }, "has no key file"},
		{"health exemption without CA", func(c *Config) {
			c.TLS.CertFile, c.TLS.KeyFile, c.HealthWithoutClientCert = "c.pem", "k.pem", true
		}, "HealthWithoutClientCert needs a TLS client CA file"},
		{"check options without TLS", func(c *Config) { c.CheckTLSVerify = true }, "need TLS"},
		{"check server name without verification", func(c *Config) {
			c.TLS.CertFile, c.TLS.KeyFile, c.CheckTLSServerName = "c.pem", "k.pem", "user-srv"
		}, "CheckTLSServerName needs CheckTLSVerify"},
		{"missing file", func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile = "/nonexistent/c.pem", "k.pem" }, "/nonexistent/c.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.cfg(&cfg)
			b, err := New(cfg)
			if err == nil {
				b.Serve(canceled())
				t.Fatal("New accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestTLSConsulCheck registers TLS backends with a real agent, which
// presents no client certificate: its gRPC check passes over TLS (skipping
// verification) and under mTLS with HealthWithoutClientCert, and stays
// critical under strict mTLS.
func TestTLSConsulCheck(t *testing.T) {
	skipInShort(t)
	agent := consultest.Start(t)
	s := newTLSSetup(t)
	tests := []struct {
		name        string
		tls         tlsfiles.Config
		healthOpen  bool
		wantPassing bool
	}{
		{"TLS", tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key}, false, true},
		{"mTLS, health without client certificate", tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key, CAFile: s.server.CA}, true, true},
		{"strict mTLS", tlsfiles.Config{CertFile: s.server.Cert, KeyFile: s.server.Key, CAFile: s.server.CA}, false, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Service = "user-srv-tls-" + string(rune('a'+i))
			cfg.Consul = agent.Client()
			cfg.CheckInterval = time.Second
			cfg.TLS = tc.tls
			cfg.HealthWithoutClientCert = tc.healthOpen
			r := serve(t, cfg)
			if tc.wantPassing {
				waitFor(t, "backend passing in Consul", func() (bool, error) {
					m, err := instances(agent.Client(), cfg.Service, true)
					return m[r.ID()] != nil, err
				})
				return
			}
			time.Sleep(3 * time.Second) // three checks
			checks, _, err := agent.Client().Health().Checks(cfg.Service, nil)
			if err != nil || len(checks) != 1 || checks[0].Status != api.HealthCritical {
				t.Errorf("strict mTLS backend checked by an agent without a client certificate: %v, %+v; want one critical check", err, checks)
			}
		})
	}
}
