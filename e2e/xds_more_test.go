package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"github.com/lookaside-lb/lookaside/xds"
)

// startTLSLB starts a balancer serving TLS with files' certificate and,
// when mtls, requiring a client certificate signed by files' CA.
func startTLSLB(t *testing.T, files tlstest.Files, mtls bool) *lb {
	t.Helper()
	cfg := tlsfiles.Config{CertFile: files.Cert, KeyFile: files.Key, Logger: quietLogger()}
	if mtls {
		cfg.CAFile = files.CA
	}
	store, err := tlsfiles.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := store.ServerCredentials()
	if err != nil {
		t.Fatal(err)
	}
	return startLBWith(t, nil, grpc.Creds(creds))
}

// TestXDSOverTLS: xDS clients whose bootstrap (xds.Bootstrap with a CA,
// and a certificate for mTLS) names a balancer serving TLS get their
// configuration and make calls; under mTLS a client without a certificate
// gets nothing and its calls fail.
func TestXDSOverTLS(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 2)
	pki := newTestPKI(t)
	lbFiles := pki.files(t, "balancer", balancerName, "127.0.0.1")
	clientFiles := pki.files(t, "client", "client")

	t.Run("TLS", func(t *testing.T) {
		l := startTLSLB(t, lbFiles, false)
		c := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, CAFile: lbFiles.CA}, svc)
		waitSeen(t, c, bs...)
		checkShares(t, "calls", bs, []int{1, 1}, spread(t, c, 100), 0.01)
		// A plaintext bootstrap gets nothing from a TLS balancer.
		pc := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, NodeID: t.Name() + "-plaintext"}, svc)
		callsFail(t, pc, "a plaintext client")
	})
	t.Run("mTLS", func(t *testing.T) {
		l := startTLSLB(t, lbFiles, true)
		c := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, CAFile: clientFiles.CA, CertFile: clientFiles.Cert, KeyFile: clientFiles.Key}, svc)
		waitSeen(t, c, bs...)
		checkShares(t, "calls", bs, []int{1, 1}, spread(t, c, 100), 0.01)

		// Without a certificate the TLS handshake fails: no configuration,
		// every call fails.
		nc := xdsClientWith(t, xds.BootstrapOptions{Server: l.addr, CAFile: clientFiles.CA, NodeID: t.Name() + "-nocert"}, svc)
		callsFail(t, nc, "a client without a certificate")
		// The client with a certificate still works.
		spread(t, c, 10)
	})
}

// callsFail makes 3 calls with c, each within 3 s, and fails the test
// unless every one fails with Unavailable or DeadlineExceeded.
func callsFail(t *testing.T, c userpb.UserClient, who string) {
	t.Helper()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		start := time.Now()
		r, err := call(ctx, c)
		cancel()
		if err == nil {
			t.Fatalf("call %d of %s was served by %s", i, who, r.BackendId)
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			t.Errorf("call %d of %s: %v, want Unavailable or DeadlineExceeded", i, who, err)
		}
		t.Logf("call %d of %s: %v after %v", i, who, err, time.Since(start).Round(time.Millisecond))
	}
}
