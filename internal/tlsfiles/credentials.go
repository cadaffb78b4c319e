package tlsfiles

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ServerCredentials returns gRPC transport credentials serving
// ServerConfig: pass them to grpc.NewServer with grpc.Creds (for
// lbserver.Serve, in ServeOptions.GRPC). It fails when the Store has no
// certificate.
func (s *Store) ServerCredentials() (credentials.TransportCredentials, error) {
	cfg, err := s.ServerConfig()
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// ClientCredentials returns gRPC transport credentials that, at each
// handshake, verify the server against the current CA bundle (the system
// roots without one) and the name ServerName, else the dialed host (an IP
// address is checked against the certificate's IP addresses), and offer
// the current client certificate. Use them with
// grpc.WithTransportCredentials (or loadreport.Config.Credentials).
func (s *Store) ClientCredentials() credentials.TransportCredentials {
	return &clientCreds{s: s, info: credentials.NewTLS(&tls.Config{}).Info()}
}

// clientCreds builds a tls.Config from the current material for each
// handshake, so that the roots are a plain RootCAs and IP addresses are
// verified as the standard library does.
type clientCreds struct {
	s    *Store
	info credentials.ProtocolInfo
}

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	m := c.s.cur.Load()
	name := c.s.cfg.ServerName
	if name == "" {
		name = authority
		if host, _, err := net.SplitHostPort(authority); err == nil {
			name = host
		}
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: name,
		RootCAs:    m.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if m.cert != nil {
				return m.cert, nil
			}
			return &tls.Certificate{}, nil
		},
	}
	// gRPC's TLS credentials take the name to verify from the authority
	// they are given, whatever the Config says.
	return credentials.NewTLS(cfg).ClientHandshake(ctx, name, raw)
}

func (c *clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsfiles: client credentials used by a server")
}

func (c *clientCreds) Info() credentials.ProtocolInfo { return c.info }

func (c *clientCreds) Clone() credentials.TransportCredentials {
	return &clientCreds{s: c.s, info: c.info}
}

// OverrideServerName is deprecated in gRPC and not supported: set
// Config.ServerName.
func (c *clientCreds) OverrideServerName(string) error {
	return errors.New("tlsfiles: set Config.ServerName instead")
}

// VerifiedClient reports whether the TLS peer of ctx (a gRPC server
// handler's context) presented a client certificate that verified. With
// ClientCertOptional, servers call it to require a certificate for all
// but the calls they let in without one.
func VerifiedClient(ctx context.Context) bool {
	info, ok := peerTLS(ctx)
	return ok && len(info.State.VerifiedChains) > 0
}

// peerTLS returns the TLS information of ctx's gRPC peer.
func peerTLS(ctx context.Context) (credentials.TLSInfo, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return credentials.TLSInfo{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return info, ok
}

// Verifier returns the rule RequireVerifiedClient's interceptors apply,
// for servers that do not run interceptors: nil for a call of method
// whose peer (in ctx) presented a client certificate that verified, or
// for a call of an exempt method; otherwise an Unauthenticated status
// error.
func Verifier(exempt ...string) func(ctx context.Context, method string) error {
	skip := make(map[string]bool, len(exempt))
	for _, m := range exempt {
		skip[m] = true
	}
	return func(ctx context.Context, method string) error {
		if skip[method] || VerifiedClient(ctx) {
			return nil
		}
		return status.Error(codes.Unauthenticated, "a client certificate signed by the server's client CA is required")
	}
}

// RequireVerifiedClient returns server interceptors that end every call
// whose peer presented no verified client certificate with
// Unauthenticated, except calls to the exempt methods (full names, such
// as healthpb.Health_Check_FullMethodName). With a Store whose
// ClientCertOptional is set, they make a server mutual-TLS for all but
// those methods: a Consul agent that presents no certificate can still
// run its gRPC health check.
func RequireVerifiedClient(exempt ...string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	check := Verifier(exempt...)
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return h(srv, ss)
	}
	return unary, stream
}
