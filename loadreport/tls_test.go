package loadreport

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/lookaside-lb/lookaside/internal/clock"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// TestCollectorTLS runs a Reporter behind mutual TLS: a collector with
// the right credentials gets its reports; without credentials, or
// without a client certificate, it gets none and records why.
func TestCollectorTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	other := tlstest.NewCA(t, "other")
	dir := t.TempDir()
	srvFiles := tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.Options{CommonName: "backend", Names: []string{"user-srv"}}), ca.PEM)
	srvStore, err := tlsfiles.New(tlsfiles.Config{CertFile: srvFiles.Cert, KeyFile: srvFiles.Key, CAFile: srvFiles.CA, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	screds, err := srvStore.ServerCredentials()
	if err != nil {
		t.Fatal(err)
	}
	src := &fixedMetrics{}
	src.set(Metrics{CPU: 0.25, QPS: 7})
	r := newTestReporter(t, src, ReporterConfig{MinInterval: 20 * time.Millisecond})
	addr, _ := serve(t, func(s *grpc.Server) { r.Register(s) }, grpc.Creds(screds))

	clientStore := func(t *testing.T, leaf tlstest.Leaf, cas []byte, serverName string) credentials.TransportCredentials {
		f := tlstest.WriteFiles(t, t.TempDir(), leaf, cas)
		cfg := tlsfiles.Config{CAFile: f.CA, ServerName: serverName, Logger: slog.New(slog.DiscardHandler)}
		if leaf.CertPEM != nil {
			cfg.CertFile, cfg.KeyFile = f.Cert, f.Key
		}
		s, err := tlsfiles.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s.ClientCredentials()
	}
	clientLeaf := ca.Issue(t, tlstest.Options{CommonName: "lookaside"})
	tests := []struct {
		name    string
		creds   func(t *testing.T) credentials.TransportCredentials
		wantErr string // "" when reports must arrive
	}{
		{"mTLS", func(t *testing.T) credentials.TransportCredentials {
			return clientStore(t, clientLeaf, ca.PEM, "user-srv")
		}, ""},
		{"plaintext to a TLS server", func(*testing.T) credentials.TransportCredentials { return nil }, "Unavailable"},
		{"no client certificate", func(t *testing.T) credentials.TransportCredentials {
			return clientStore(t, tlstest.Leaf{}, ca.PEM, "user-srv")
		}, "Unavailable"},
		{"wrong server name", func(t *testing.T) credentials.TransportCredentials {
			return clientStore(t, clientLeaf, ca.PEM, "orders")
		}, "not orders"},
		{"untrusted server", func(t *testing.T) credentials.TransportCredentials {
			return clientStore(t, clientLeaf, other.PEM, "user-srv")
		}, "unknown authority"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			c := newTestCollector(t, Config{Interval: 20 * time.Millisecond, Credentials: tc.creds(t), BackoffBase: 20 * time.Millisecond, BackoffMax: 50 * time.Millisecond}, clock.Real{})
			c.Update(snapshot("a", addr))
			if tc.wantErr == "" {
				eventually(ctx, t, "a report over mTLS", func() bool {
					r, ok := c.Load("a")
					return ok && r.CPU == 0.25 && r.QPS == 7
				})
				return
			}
			eventually(ctx, t, "a failed stream", func() bool { return c.Loads().Streams["a"].Failures >= 2 })
			l := c.Loads()
			if _, ok := l.Reports["a"]; ok {
				t.Fatalf("got a report: %+v", l.Reports)
			}
			if err := l.Streams["a"].LastError; err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("LastError = %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
}
