package lbserver

import (
	"context"
	"fmt"
	"net/http"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/internal/h2bidi"
)

// Transports: what serves BalanceLoad connections (Config.Transport).
const (
	// TransportLookaside serves a connection whose first stream is
	// BalanceLoad with internal/h2bidi: one goroutine per connection and
	// one per stream, lists written to the socket by the stream that sends
	// them, and a list encoded once for every stream that gets it. Other
	// connections (health, reflection, xDS, compressed BalanceLoad) go to
	// the grpc.Server. The default.
	TransportLookaside = "lookaside"
	// TransportGRPC serves every connection with grpc-go's server, which
	// costs about twice the memory per client and takes longer to reach
	// many clients with a change; for a client the balancer's own
	// transport does not serve as grpc-go's does.
	TransportGRPC = "grpc"
)

// ValidTransport reports whether t names a transport: TransportLookaside
// or TransportGRPC. (Config.Transport may also be "", the default.)
func ValidTransport(t string) bool { return t == TransportLookaside || t == TransportGRPC }

// validTransport is Config.Transport's rule: ValidTransport, or "".
func validTransport(t string) error {
	if t == "" || ValidTransport(t) {
		return nil
	}
	return fmt.Errorf("transport %q is not %q or %q", t, TransportLookaside, TransportGRPC)
}

// ownStreams is the internal/h2bidi server of BalanceLoad connections.
type ownStreams = h2bidi.Server[*lbpb.LoadBalanceRequest]

// newOwnStreams returns the h2bidi server that serves s's BalanceLoad
// connections with the same limits, windows and keepalive as the
// grpc.Server's (see GRPCOptions), TLS from creds (nil: plaintext), and
// authorize (nil: none) run on each stream before its handler. Streams of
// other methods on those connections (a health check on the ClientConn
// of a BalanceLoad stream) go to other: the grpc.Server's ServeHTTP.
func (s *Server) newOwnStreams(creds credentials.TransportCredentials, authorize func(ctx context.Context, method string) error, other http.Handler) (*ownStreams, error) {
	cfg := h2bidi.Config[*lbpb.LoadBalanceRequest]{
		Other:  other,
		Method: balanceLoadMethod,
		Unmarshal: func(b []byte) (*lbpb.LoadBalanceRequest, error) {
			req := new(lbpb.LoadBalanceRequest)
			if err := proto.Unmarshal(b, req); err != nil {
				return nil, err
			}
			return req, nil
		},
		Handler: func(st *h2bidi.Stream[*lbpb.LoadBalanceRequest]) error {
			return s.BalanceLoad(&ownStream{st: st})
		},
		Tap: func(ctx context.Context) (context.Context, error) {
			if authorize != nil {
				if err := authorize(ctx, balanceLoadMethod); err != nil {
					return nil, err
				}
			}
			return s.admitStream(ctx)
		},
		Creds:                creds,
		WriteTimeout:         ownWriteTimeout,
		MaxConcurrentStreams: s.maxConcurrentStreams(),
		InitialWindowSize:    InitialWindowSize,
		MaxRecvMsgSize:       s.cfg.MaxRequestSize,
		KeepaliveTime:        KeepaliveParams.Time,
		KeepaliveTimeout:     KeepaliveParams.Timeout,
		MinPingInterval:      KeepaliveEnforcement.MinTime,
		PermitWithoutStream:  KeepaliveEnforcement.PermitWithoutStream,
		Logger:               s.log,
	}
	if age := s.cfg.MaxStreamAge; age > 0 {
		cfg.MaxConnectionAge, cfg.MaxConnectionAgeGrace = connectionAge(age)
	}
	return h2bidi.New(cfg)
}

// ownWriteTimeout is how long a write to a client's socket may block on
// the balancer's own transport before the connection closes: a client
// that stopped reading its socket altogether. A send that the client's
// flow control takes at once is written by the stream's handler when the
// settings' SendTimeout is at least this long (see streamState.send), so
// it cannot hold the handler for longer than SendTimeout.
const ownWriteTimeout = 10 * time.Second

// connectionAge returns the connection age and grace that go with the
// streams' maximum age: a GOAWAY at about that age (± 10 %), so that
// clients reconnect, and may pick another replica, when their stream
// ends; streams still open after the grace are cut.
func connectionAge(streamAge time.Duration) (age, grace time.Duration) {
	return streamAge, streamAge/5 + 10*time.Second
}

// ownStream is a BalanceLoad stream served by internal/h2bidi, as the
// handler sees a stream (balanceStream). Its messages come from the
// connection's reader (see receive) and the lists it shares are framed
// once (see encodedList.message).
type ownStream struct {
	grpcStreamStubs
	st *h2bidi.Stream[*lbpb.LoadBalanceRequest]
}

func (o *ownStream) Context() context.Context { return o.st.Context() }

// Send encodes m and sends it.
func (o *ownStream) Send(m *lbpb.LoadBalanceResponse) error {
	return o.SendMsg(m)
}

// SendMsg sends a *lbpb.LoadBalanceResponse, or a framedMsg as it is.
func (o *ownStream) SendMsg(m any) error {
	b, err := frame(m)
	if err != nil {
		return err
	}
	return o.st.Send(b)
}

// trySend sends m at once if the client's flow control takes it whole
// (h2bidi.Stream.TrySend): it returns true and the send's error, or false
// when it wrote nothing.
func (o *ownStream) trySend(m any) (bool, error) {
	b, err := frame(m)
	if err != nil {
		return true, err
	}
	return o.st.TrySend(b)
}

// frame returns what the own transport sends for m: a framedMsg as it
// is, a *lbpb.LoadBalanceResponse encoded and framed.
func frame(m any) ([]byte, error) {
	switch m := m.(type) {
	case framedMsg:
		return m, nil
	case *lbpb.LoadBalanceResponse:
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, err
		}
		return h2bidi.Frame(b), nil
	}
	return nil, fmt.Errorf("lbserver: cannot send a %T", m)
}

// Recv waits for the next message; the handler takes them from the
// stream's inbox instead (see receive).
func (o *ownStream) Recv() (*lbpb.LoadBalanceRequest, error) {
	for {
		if m, ok, err := o.st.Next(); ok || err != nil {
			return m, err
		}
		<-o.st.Ready()
	}
}

// RecvMsg is Recv for a *lbpb.LoadBalanceRequest.
func (o *ownStream) RecvMsg(m any) error {
	req, ok := m.(*lbpb.LoadBalanceRequest)
	if !ok {
		return fmt.Errorf("lbserver: cannot receive into a %T", m)
	}
	got, err := o.Recv()
	if err != nil {
		return err
	}
	proto.Merge(req, got)
	return nil
}

// grpcStreamStubs are the parts of grpc.ServerStream that BalanceLoad
// never uses: it sends no header metadata and no trailer metadata.
type grpcStreamStubs struct{}

func (grpcStreamStubs) SetHeader(metadata.MD) error  { return nil }
func (grpcStreamStubs) SendHeader(metadata.MD) error { return nil }
func (grpcStreamStubs) SetTrailer(metadata.MD)       {}

// framedMsg is a whole gRPC message, prefix and payload, as h2bidi
// streams send it.
type framedMsg []byte
