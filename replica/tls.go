package replica

import (
	"fmt"
	"log/slog"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
)

// serverTLS returns the store of the balancer listener's certificate (and
// client CA for mTLS), or nil when tls.cert_file is empty.
func serverTLS(t config.ServerTLS, log *slog.Logger) (*tlsfiles.Store, error) {
	if t.CertFile == "" {
		return nil, nil
	}
	s, err := tlsfiles.New(tlsfiles.Config{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.ClientCAFile, Logger: log})
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
