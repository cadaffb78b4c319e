package tlsfiles

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// TestGRPCCredentials serves gRPC health with ServerCredentials and calls
// it with ClientCredentials, as the balancer's ORCA client calls backends
// by IP address.
func TestGRPCCredentials(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	byIP := ca.Issue(t, tlstest.Options{CommonName: "backend", Names: []string{"127.0.0.1"}})
	byName := ca.Issue(t, tlstest.Options{CommonName: "backend", Names: []string{"user-srv"}})
	client := ca.Issue(t, tlstest.Options{CommonName: "lookaside"})
	tests := []struct {
		name       string
		server     tlstest.Leaf
		mtls       bool
		clientCert bool
		serverName string
		wantErr    string
	}{
		{"IP address in the certificate", byIP, false, false, "", ""},
		{"name in the certificate, dialed by IP", byName, false, false, "", "127.0.0.1 because it doesn't contain any IP SANs"},
		{"name in the certificate, ServerName set", byName, false, false, "user-srv", ""},
		{"mTLS", byIP, true, true, "", ""},
		{"mTLS without a client certificate", byIP, true, false, "", "Unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sf := tlstest.WriteFiles(t, mkdir(t, t.TempDir(), "s"), tc.server, ca.PEM)
			scfg := Config{CertFile: sf.Cert, KeyFile: sf.Key}
			if tc.mtls {
				scfg.CAFile = sf.CA
			}
			screds, err := mustStore(t, scfg).ServerCredentials()
			if err != nil {
				t.Fatal(err)
			}
			cf := tlstest.WriteFiles(t, mkdir(t, t.TempDir(), "c"), client, ca.PEM)
			ccfg := Config{CAFile: cf.CA, ServerName: tc.serverName}
			if tc.clientCert {
				ccfg.CertFile, ccfg.KeyFile = cf.Cert, cf.Key
			}
			err = checkHealth(t, screds, mustStore(t, ccfg).ClientCredentials())
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("health check over TLS: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("health check error = %v, want one saying %q", err, tc.wantErr)
			}
		})
	}
	t.Run("bare ClientConfig to an IP address", func(t *testing.T) {
		sf := tlstest.WriteFiles(t, t.TempDir(), byIP, ca.PEM)
		screds, _ := mustStore(t, Config{CertFile: sf.Cert, KeyFile: sf.Key}).ServerCredentials()
		err := checkHealth(t, screds, credentials.NewTLS(mustStore(t, Config{CAFile: sf.CA}).ClientConfig()))
		if err == nil || !strings.Contains(err.Error(), "no server name") {
			t.Fatalf("health check error = %v, want one saying there is no server name", err)
		}
	})
}

// checkHealth serves health with screds on loopback and calls Check once
// with ccreds.
func checkHealth(t *testing.T, screds, ccreds credentials.TransportCredentials) error {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(screds))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	defer gs.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(ccreds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
	return err
}

// TestRequireVerifiedClient: with an optional client certificate, the
// exempt health check answers anyone, every other method only clients
// with a verified certificate.
func TestRequireVerifiedClient(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	sf := tlstest.WriteFiles(t, mkdir(t, t.TempDir(), "s"), ca.Issue(t, tlstest.Options{Names: []string{"127.0.0.1"}}), ca.PEM)
	srv := mustStore(t, Config{CertFile: sf.Cert, KeyFile: sf.Key, CAFile: sf.CA, ClientCertOptional: true})
	screds, err := srv.ServerCredentials()
	if err != nil {
		t.Fatal(err)
	}
	unary, stream := RequireVerifiedClient(healthpb.Health_Check_FullMethodName)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(screds), grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	defer gs.Stop()

	cf := tlstest.WriteFiles(t, mkdir(t, t.TempDir(), "c"), ca.Issue(t, tlstest.Options{CommonName: "client"}), ca.PEM)
	for _, tc := range []struct {
		name                string
		cfg                 Config
		wantCheck, wantList codes.Code
	}{
		{"no client certificate", Config{CAFile: cf.CA}, codes.OK, codes.Unauthenticated},
		{"client certificate", Config{CAFile: cf.CA, CertFile: cf.Cert, KeyFile: cf.Key}, codes.OK, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(mustStore(t, tc.cfg).ClientCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			hc := healthpb.NewHealthClient(cc)
			_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
			if status.Code(err) != tc.wantCheck {
				t.Errorf("Check: %v, want %v", err, tc.wantCheck)
			}
			_, err = hc.List(ctx, &healthpb.HealthListRequest{})
			if status.Code(err) != tc.wantList {
				t.Errorf("List: %v, want %v", err, tc.wantList)
			}
		})
	}
}
