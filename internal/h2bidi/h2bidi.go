// Package h2bidi is a minimal gRPC-over-HTTP/2 server transport for one
// bidirectional-streaming method, built to hold many idle streams
// cheaply: a connection costs one goroutine (its reader) and a stream one
// more (its handler) while the handler runs; a handler at rest may park
// the stream (Park) and be resumed later (Stream.Resume, Stream.OnReady),
// so that an idle stream holds no goroutine. Frames are written to the
// socket directly, under a per-connection write mutex, by the goroutine that has something to say
// (a handler's Send, the reader's acknowledgements, a timer's ping); there
// is no writer goroutine, keepalive goroutine or per-stream receive
// goroutine, and an idle connection holds no write buffer.
//
// A Server peeks at each connection's first request: if it is the
// configured method, uncompressed, the connection is served here; any
// other connection (health checks, reflection, xDS, compressed calls) is
// handed, with every byte read so far replayed, to a grpc.Server serving
// Others with OthersCreds.
//
// Streams of other methods on connections served here go to
// Config.Other (the same grpc.Server, through its ServeHTTP), or get
// Unimplemented without it. Message compression is not supported for
// the configured method. Connection-level errors are logged at DEBUG only, since a
// client can cause them.
package h2bidi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// Defaults of Config's zero values.
const (
	defaultHandshakeTimeout     = 20 * time.Second
	defaultMaxConcurrentStreams = 100
	defaultInitialWindowSize    = 65535
	defaultMaxRecvMsgSize       = 4 << 20
	defaultMaxHeaderListSize    = 16 << 10
	defaultWriteTimeout         = 10 * time.Second
	defaultKeepaliveTimeout     = 20 * time.Second
	defaultMinPingInterval      = 5 * time.Minute
	// maxPeek bounds what a connection may send before its first HEADERS.
	maxPeek = 64 << 10
)

// Config configures a Server. Zero values get the defaults in brackets.
type Config[Req any] struct {
	// Method is the :path served, e.g. "/grpc.lb.v1.LoadBalancer/BalanceLoad" (required).
	Method string
	// Unmarshal decodes one message's payload, in Stream.Next, on the
	// handler's goroutine (required). The payload is valid only during the
	// call: a decoder that keeps parts of it must copy them
	// (proto.Unmarshal does).
	Unmarshal func([]byte) (Req, error)
	// Handler serves one stream on a goroutine of its own; its returned
	// error's grpc status (status.FromError; nil = OK) goes in the trailers
	// (required).
	Handler func(*Stream[Req]) error
	// Tap, if set, runs on the reader goroutine for each new stream of
	// Method before any handler goroutine starts; an error (a grpc status
	// error; another error means PermissionDenied) refuses the stream with
	// a trailers-only response carrying that status, at the cost of no
	// goroutine. The ctx it returns becomes the stream's: it must be
	// derived from the ctx given, so that the stream's end cancels it.
	Tap func(ctx context.Context) (context.Context, error)
	// Creds: nil serves plaintext h2c (prior knowledge). Otherwise
	// ServerHandshake runs on each accepted connection; its AuthInfo goes in
	// peer.Peer.
	Creds credentials.TransportCredentials
	// HandshakeTimeout [20s] bounds the TLS handshake and the client preface.
	HandshakeTimeout time.Duration
	// MaxConcurrentStreams [100] is SETTINGS_MAX_CONCURRENT_STREAMS; a
	// stream over it is refused (RST_STREAM REFUSED_STREAM). A stream counts
	// until its handler returns.
	MaxConcurrentStreams uint32
	// InitialWindowSize [65535] is the stream and connection receive window
	// offered (SETTINGS_INITIAL_WINDOW_SIZE and a connection WINDOW_UPDATE
	// to reach it). It must be at least 65535, the window a client may use
	// before it sees our settings. The connection window is given back as
	// DATA is read; a stream's only as its handler takes the messages
	// (Stream.Next), so a stream holds at most this many bytes received and
	// not taken (or one message, if larger), and a client sending faster
	// than its handler takes waits for window.
	InitialWindowSize uint32
	// MaxRecvMsgSize [4 MiB]: a larger message ends the stream with
	// ResourceExhausted.
	MaxRecvMsgSize int
	// MaxHeaderListSize [16 KiB] is SETTINGS_MAX_HEADER_LIST_SIZE, enforced.
	MaxHeaderListSize uint32
	// WriteTimeout [10s]: a write to the socket blocked that long closes
	// the connection.
	WriteTimeout time.Duration
	// KeepaliveTime [0 = off]: the server pings a connection that read
	// nothing for KeepaliveTime and closes it if it still reads nothing
	// within KeepaliveTimeout [20s].
	KeepaliveTime, KeepaliveTimeout time.Duration
	// MinPingInterval [5 min] and PermitWithoutStream enforce the clients'
	// keepalive pings as grpc-go's server does (keepalive.EnforcementPolicy):
	// a ping sooner than MinPingInterval after the last one (or, with no
	// open stream and !PermitWithoutStream, sooner than 2 h) is a strike,
	// writing headers or data forgives them, and a third strike ends the
	// connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
	MinPingInterval     time.Duration
	PermitWithoutStream bool
	// MaxConnectionAge and MaxConnectionAgeGrace [0 = off] are as in
	// keepalive.ServerParameters: at the age (±10%) the connection is sent a
	// graceful GOAWAY; after the grace it is closed.
	MaxConnectionAge, MaxConnectionAgeGrace time.Duration
	// Other, if set, serves the streams of other methods on the
	// connections served here, as HTTP/2 requests: pass the grpc.Server
	// that serves Others() (it implements http.Handler with ServeHTTP). Its
	// ServeHTTP runs on the stream's goroutine (the stream counts against
	// MaxConcurrentStreams until it returns); the request has ProtoMajor 2,
	// the request's header fields as Header, RemoteAddr, TLS (the
	// connection's state, with TLS credentials), the stream's context, and
	// a Body reading the stream's DATA, its window given back as it is
	// read; the http.ResponseWriter is an http.Flusher writing DATA under
	// the client's flow control and sends trailers as net/http's HTTP/2
	// server does (keys declared in the "Trailer" header, or prefixed with
	// http.TrailerPrefix). Tap does not run for them. Nil answers them
	// Unimplemented.
	Other http.Handler
	// Logger [discard] gets connection-level errors, at DEBUG only (and a
	// panic of Other, at ERROR).
	Logger *slog.Logger
}

// Stats are a Server's counters.
type Stats struct {
	// Conns is the number of open connections served here.
	Conns int64
	// HandedOff is the number of connections handed to Others, in total.
	HandedOff int64
	// Streams is the number of streams whose handler runs.
	Streams int64
	// ProtocolErrors is the number of connections ended for a protocol
	// error, in total.
	ProtocolErrors int64
}

// Server serves Config.Method over connections of its own.
type Server[Req any] struct {
	cfg    Config[Req]
	log    *slog.Logger
	others *othersListener

	// wg counts the connection goroutines and the handler goroutines.
	wg sync.WaitGroup

	mu        sync.Mutex // protects the fields below
	listeners map[net.Listener]struct{}
	conns     map[*conn[Req]]struct{} // every connection with a goroutine, peeking or served
	stopped   bool                    // Stop or GracefulStop began: no new connections
	graceful  bool                    // it was GracefulStop

	nConns, nHandedOff, nStreams, nProtoErrs atomic.Int64
}

// New returns a Server for cfg, or an error if cfg is incomplete or
// inconsistent.
func New[Req any](cfg Config[Req]) (*Server[Req], error) {
	var errs []error
	if cfg.Method == "" || cfg.Method[0] != '/' {
		errs = append(errs, fmt.Errorf("h2bidi: Config.Method %q must be a path like /pkg.Service/Method", cfg.Method))
	}
	if cfg.Unmarshal == nil {
		errs = append(errs, errors.New("h2bidi: Config.Unmarshal is required"))
	}
	if cfg.Handler == nil {
		errs = append(errs, errors.New("h2bidi: Config.Handler is required"))
	}
	if cfg.InitialWindowSize != 0 && (cfg.InitialWindowSize < defaultInitialWindowSize || cfg.InitialWindowSize > 1<<31-1) {
		errs = append(errs, fmt.Errorf("h2bidi: Config.InitialWindowSize %d must be within [65535, 2^31-1]", cfg.InitialWindowSize))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"HandshakeTimeout", cfg.HandshakeTimeout}, {"WriteTimeout", cfg.WriteTimeout},
		{"KeepaliveTime", cfg.KeepaliveTime}, {"KeepaliveTimeout", cfg.KeepaliveTimeout},
		{"MinPingInterval", cfg.MinPingInterval}, {"MaxConnectionAge", cfg.MaxConnectionAge},
		{"MaxConnectionAgeGrace", cfg.MaxConnectionAgeGrace},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("h2bidi: Config.%s %v is negative", d.name, d.v))
		}
	}
	if cfg.MaxRecvMsgSize < 0 {
		errs = append(errs, fmt.Errorf("h2bidi: Config.MaxRecvMsgSize %d is negative", cfg.MaxRecvMsgSize))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	setDefault(&cfg.HandshakeTimeout, defaultHandshakeTimeout)
	setDefault(&cfg.MaxConcurrentStreams, defaultMaxConcurrentStreams)
	setDefault(&cfg.InitialWindowSize, defaultInitialWindowSize)
	setDefault(&cfg.MaxRecvMsgSize, defaultMaxRecvMsgSize)
	setDefault(&cfg.MaxHeaderListSize, defaultMaxHeaderListSize)
	setDefault(&cfg.WriteTimeout, defaultWriteTimeout)
	setDefault(&cfg.KeepaliveTimeout, defaultKeepaliveTimeout)
	setDefault(&cfg.MinPingInterval, defaultMinPingInterval)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server[Req]{
		cfg:       cfg,
		log:       log,
		others:    newOthersListener(),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn[Req]]struct{}),
	}, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Serve accepts connections from lis until lis fails or Stop or
// GracefulStop is called, serving each on a goroutine of its own: the TLS
// handshake (Config.Creds), the client preface, our SETTINGS, then frames
// until the connection's first request. A request for Config.Method
// (content-type application/grpc or application/grpc+proto, no
// compression) makes the connection ours, and the goroutine goes on as its
// reader; any other connection is handed to Others, its bytes read so far
// replayed (but for the PINGs acknowledged meanwhile). A connection that
// sends more than 64 KiB before its first request is closed. Serve returns
// nil after Stop or GracefulStop, and closes lis and Others when it
// returns.
func (s *Server[Req]) Serve(lis net.Listener) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		lis.Close()
		return nil
	}
	s.listeners[lis] = struct{}{}
	s.others.setAddr(lis.Addr())
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, lis)
		s.mu.Unlock()
		lis.Close()
		s.others.Close()
	}()
	var delay time.Duration
	for {
		nc, err := lis.Accept()
		if err != nil {
			s.mu.Lock()
			stopped := s.stopped
			s.mu.Unlock()
			if stopped {
				return nil
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Debug("h2bidi: accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		c := newConn(s, nc)
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// Others is a net.Listener of the connections that are not ours, for a
// grpc.Server: grpc.NewServer(grpc.Creds(s.OthersCreds()), ...).Serve(s.Others()).
// Its Addr is the served listener's. Close makes its Accept fail; the end
// of Serve, Stop and GracefulStop close it too. A connection waits to be
// accepted until then.
func (s *Server[Req]) Others() net.Listener { return s.others }

// OthersCreds returns transport credentials for the grpc.Server of Others:
// the handshake already happened here, so its ServerHandshake returns the
// handed-off connection as is, with the AuthInfo our handshake got
// (credentials.TLSInfo with TLS credentials; the insecure credentials'
// info for plaintext).
func (s *Server[Req]) OthersCreds() credentials.TransportCredentials {
	return newOthersCreds(s.cfg.Creds)
}

// GracefulStop stops accepting connections, closes those still before
// their first request, sends a graceful GOAWAY on every connection served
// here and refuses new streams on them, waits until every stream's
// handler returned and its trailers were written, then closes the
// connections. It blocks until then.
func (s *Server[Req]) GracefulStop() {
	conns := s.stop(true)
	for _, c := range conns {
		if c.isOwned() {
			c.drain("graceful_stop")
		} else {
			c.close(errStopped)
		}
	}
	s.wg.Wait()
}

// Stop closes every connection at once (stream contexts are cancelled)
// and waits for the handlers to return.
func (s *Server[Req]) Stop() {
	for _, c := range s.stop(false) {
		c.close(errStopped)
	}
	s.wg.Wait()
}

// stop marks s stopped, closes its listeners and Others, and returns its
// connections.
func (s *Server[Req]) stop(graceful bool) []*conn[Req] {
	s.mu.Lock()
	if !s.stopped {
		s.graceful = graceful
	}
	s.stopped = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn[Req], 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.others.Close()
	return conns
}

// Stats returns s's counters.
func (s *Server[Req]) Stats() Stats {
	return Stats{
		Conns:          s.nConns.Load(),
		HandedOff:      s.nHandedOff.Load(),
		Streams:        s.nStreams.Load(),
		ProtocolErrors: s.nProtoErrs.Load(),
	}
}
