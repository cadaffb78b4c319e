package replica

import (
	"fmt"
	"log/slog"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// serverTLS returns the store of the balancer listener's certificate (and
// client CA for mTLS), or nil when tls.cert_file is empty. healthOpen lets
// clients without a certificate through the TLS handshake, for Consul's
// health check of a registered replica; serveTLS then refuses them
// every call but the health check.
func serverTLS(t config.ServerTLS, healthOpen bool, log *slog.Logger) (*tlsfiles.Store, error) {
	if t.CertFile == "" {
		return nil, nil
	}
	s, err := tlsfiles.New(tlsfiles.Config{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.ClientCAFile,
		ClientCertOptional: healthOpen && t.ClientCAFile != "", Logger: log})
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return s, nil
}

// clientTLS returns the store of a client's TLS material (path names the
// section in errors), or nil when the section asks for no TLS.
func clientTLS(path string, t config.ClientTLS, log *slog.Logger) (*tlsfiles.Store, error) {
	if !t.Enabled && t.CAFile == "" && t.CertFile == "" {
		return nil, nil
	}
	s, err := tlsfiles.New(tlsfiles.Config{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, ServerName: t.ServerName, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// serveTLS sets o's TLS for the listener: its credentials and, when
// clients without a certificate get through the handshake (serverTLS's
// healthOpen with mTLS), the rule that lets them call the health service
// only: interceptors for the grpc.Server and Authorize for the balancer's
// own transport.
func serveTLS(s *tlsfiles.Store, o *lbserver.ServeOptions) error {
	if s == nil {
		return nil
	}
	creds, err := s.ServerCredentials()
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	o.Creds = creds
	if s.Config().ClientCertOptional {
		exempt := []string{healthpb.Health_Check_FullMethodName, healthpb.Health_Watch_FullMethodName}
		u, st := tlsfiles.RequireVerifiedClient(exempt...)
		o.GRPC = append(o.GRPC, grpc.ChainUnaryInterceptor(u), grpc.ChainStreamInterceptor(st))
		o.Authorize = tlsfiles.Verifier(exempt...)
	}
	return nil
}
