package lbserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/lookaside-lb/lookaside/internal/logthrottle"
)

// limit names one of the server's limits. Its name is the one status
// messages, logs and the lbserver flags use.
type limit int

const (
	limitStreams limit = iota
	limitStreamsPerIP
	limitStreamsPerConn
	limitConns
	limitConnsPerIP
	numLimits
)

var limitNames = [numLimits]string{
	limitStreams:        "max-streams",
	limitStreamsPerIP:   "max-streams-per-ip",
	limitStreamsPerConn: "max-streams-per-conn",
	limitConns:          "max-conns",
	limitConnsPerIP:     "max-conns-per-ip",
}

// refusedMsgs are the log messages of refusals, one kind per limit for the
// log throttle.
var refusedMsgs = [numLimits]string{
	limitStreams:        "stream refused: too many streams",
	limitStreamsPerIP:   "stream refused: too many streams from one IP",
	limitStreamsPerConn: "stream refused: too many streams on one connection",
	limitConns:          "connection refused: too many connections",
	limitConnsPerIP:     "connection refused: too many connections from one IP",
}

func (l limit) String() string { return limitNames[l] }

// LimitCounts counts refusals per limit.
type LimitCounts struct {
	Streams        int64 // streams refused by MaxStreams
	StreamsPerIP   int64 // streams refused by MaxStreamsPerIP
	StreamsPerConn int64 // streams refused by MaxStreamsPerConn
	Conns          int64 // connections closed at accept by MaxConns
	ConnsPerIP     int64 // connections closed at accept by MaxConnsPerIP
}

func (c Config) validateLimits() []error {
	var errs []error
	if c.MaxStreams < 1 {
		errs = append(errs, fmt.Errorf("max streams %d is under 1", c.MaxStreams))
	}
	if c.MaxStreamsPerIP < 1 || c.MaxStreamsPerIP > c.MaxStreams {
		errs = append(errs, fmt.Errorf("max streams per IP %d is not in [1, max streams %d]", c.MaxStreamsPerIP, c.MaxStreams))
	}
	if c.MaxStreamsPerConn < 1 || c.MaxStreamsPerConn > c.MaxStreamsPerIP {
		errs = append(errs, fmt.Errorf("max streams per connection %d is not in [1, max streams per IP %d]", c.MaxStreamsPerConn, c.MaxStreamsPerIP))
	}
	if c.MaxStreamsPerConn > 1<<30 {
		errs = append(errs, fmt.Errorf("max streams per connection %d is over %d", c.MaxStreamsPerConn, 1<<30))
	}
	if c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("max connections %d is under 1", c.MaxConns))
	}
	if c.MaxConnsPerIP < 1 || c.MaxConnsPerIP > c.MaxConns {
		errs = append(errs, fmt.Errorf("max connections per IP %d is not in [1, max connections %d]", c.MaxConnsPerIP, c.MaxConns))
	}
	if c.MaxRequestSize < 4<<10 || c.MaxRequestSize > 4<<20 {
		errs = append(errs, fmt.Errorf("max request size %d is not in [4096, 4194304] bytes", c.MaxRequestSize))
	}
	if c.SendTimeout < time.Second || c.SendTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("send timeout %v is not in [1s, 10m]", c.SendTimeout))
	}
	return errs
}

// streamSlots counts the open streams: in total, per client IP and per
// connection (told apart by the client's address and port). Safe for
// concurrent use.
type streamSlots struct {
	max, perIP, perConn int

	mu      sync.Mutex
	total   int                    // guarded by mu
	ips     map[netip.Addr]int     // guarded by mu; no zero counts
	streams map[netip.AddrPort]int // guarded by mu; no zero counts
}

func newStreamSlots(cfg Config) *streamSlots {
	return &streamSlots{max: cfg.MaxStreams, perIP: cfg.MaxStreamsPerIP, perConn: cfg.MaxStreamsPerConn,
		ips: map[netip.Addr]int{}, streams: map[netip.AddrPort]int{}}
}

// take counts a stream from peer and reports ok, or reports which limit
// it would exceed and counts nothing. A taken slot is given back with
// give.
func (l *streamSlots) take(peer netip.AddrPort) (exceeded limit, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lim, full := l.fullLocked(peer); full {
		return lim, false
	}
	l.total++
	l.ips[peer.Addr()]++
	l.streams[peer]++
	return 0, true
}

// full reports whether a stream from peer would exceed a limit now, and
// which, without taking a slot.
func (l *streamSlots) full(peer netip.AddrPort) (exceeded limit, full bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fullLocked(peer)
}

func (l *streamSlots) fullLocked(peer netip.AddrPort) (exceeded limit, full bool) {
	switch {
	case l.streams[peer] >= l.perConn:
		return limitStreamsPerConn, true
	case l.ips[peer.Addr()] >= l.perIP:
		return limitStreamsPerIP, true
	case l.total >= l.max:
		return limitStreams, true
	}
	return 0, false
}

func (l *streamSlots) give(peer netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.ips[peer.Addr()]--; l.ips[peer.Addr()] <= 0 {
		delete(l.ips, peer.Addr())
	}
	if l.streams[peer]--; l.streams[peer] <= 0 {
		delete(l.streams, peer)
	}
}

// limitMax returns the configured bound of a limit.
func (s *Server) limitMax(l limit) int {
	switch l {
	case limitStreams:
		return s.cfg.MaxStreams
	case limitStreamsPerIP:
		return s.cfg.MaxStreamsPerIP
	case limitStreamsPerConn:
		return s.cfg.MaxStreamsPerConn
	case limitConns:
		return s.cfg.MaxConns
	default:
		return s.cfg.MaxConnsPerIP
	}
}

// refuse counts and logs (throttled) a refusal by l of a stream or
// connection from peer.
func (s *Server) refuse(l limit, peer netip.AddrPort) {
	s.counters.refused[l].Add(1)
	s.throttle.Warn(refusedMsgs[l], "limit", l.String(), "max", s.limitMax(l), "peer", peer.String())
}

// refusedStatus is the status a stream refused by l ends with.
func (s *Server) refusedStatus(l limit) error {
	what := map[limit]string{
		limitStreams:        "streams are open on this balancer",
		limitStreamsPerIP:   "streams are open from your IP address",
		limitStreamsPerConn: "streams are open on your connection",
	}[l]
	return status.Errorf(codes.ResourceExhausted, "lbserver: stream refused: %d %s (limit %s); retry later or on another balancer replica", s.limitMax(l), what, l)
}

// connSlots counts the open client connections, in total and per IP.
// Safe for concurrent use.
type connSlots struct {
	max, perIP int

	mu    sync.Mutex
	total int                // guarded by mu
	ips   map[netip.Addr]int // guarded by mu; no zero counts
}

func (c *connSlots) take(ip netip.Addr) (exceeded limit, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.ips[ip] >= c.perIP:
		return limitConnsPerIP, false
	case c.total >= c.max:
		return limitConns, false
	}
	c.total++
	c.ips[ip]++
	return 0, true
}

func (c *connSlots) give(ip netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.ips[ip]--; c.ips[ip] <= 0 {
		delete(c.ips, ip)
	}
}

func (c *connSlots) open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Listener returns lis with the connection limits MaxConns and
// MaxConnsPerIP applied: a connection beyond either is closed as soon as
// it is accepted, counted in Stats().Refused and logged (at most once a
// second per limit). Serve wraps its listener with it; a caller that runs
// its own grpc.Server should too. Safe for concurrent use.
func (s *Server) Listener(lis net.Listener) net.Listener {
	return &limitListener{Listener: lis, srv: s}
}

// GRPCOptions returns the grpc.ServerOptions that go with s's limits,
// after ServerOptions(extra...): HTTP/2 MAX_CONCURRENT_STREAMS (see
// Config.MaxStreamsPerConn), the largest message received
// (Config.MaxRequestSize), and a grpc.InTapHandle that refuses a stream
// beyond the stream limits before grpc starts a handler for it, the
// cheapest refusal there is (extra must then set no InTapHandle of its
// own: grpc allows one). Serve uses them.
func (s *Server) GRPCOptions(extra ...grpc.ServerOption) []grpc.ServerOption {
	return append(ServerOptions(extra...),
		grpc.MaxConcurrentStreams(uint32(2*s.cfg.MaxStreamsPerConn)),
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestSize),
		grpc.InTapHandle(s.tapStream))
}

// balanceLoadMethod is the full name of BalanceLoad.
var balanceLoadMethod = "/" + lbpb.LoadBalancer_ServiceDesc.ServiceName + "/BalanceLoad"

// tapStream refuses a new BalanceLoad stream when its client is already at
// one of the stream limits, before grpc starts a handler. It only looks:
// the handler takes the slot (and refuses streams that raced past here).
// Called by grpc's transport for every new stream; does not block.
func (s *Server) tapStream(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != balanceLoadMethod {
		return ctx, nil
	}
	peer := peerOf(ctx)
	if lim, full := s.slots.full(peer); full {
		s.refuse(lim, peer)
		return nil, s.refusedStatus(lim)
	}
	return ctx, nil
}

type limitListener struct {
	net.Listener
	srv *Server
}

// Accept returns the next connection within the limits, closing those
// beyond them. It blocks like the wrapped Accept.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := addrPortOf(c.RemoteAddr())
		if lim, ok := l.srv.conns.take(peer.Addr()); !ok {
			c.Close()
			l.srv.refuse(lim, peer)
			continue
		}
		return &limitConn{Conn: c, slots: l.srv.conns, ip: peer.Addr()}, nil
	}
}

// limitConn gives its slot back when first closed.
type limitConn struct {
	net.Conn
	slots  *connSlots
	ip     netip.Addr
	closed atomic.Bool
}

func (c *limitConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.slots.give(c.ip)
	}
	return c.Conn.Close()
}

// addrPortOf returns a net.Addr as an AddrPort with IPv4 unmapped, or the
// zero AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}
	var ap netip.AddrPort
	if tcp, ok := a.(*net.TCPAddr); ok {
		ap = tcp.AddrPort()
	} else {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	// A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; unmap so
	// that every replica hashes a client the same way.
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// quote is logthrottle.Quote: client-supplied strings go to logs through it.
func quote(s string) string { return logthrottle.Quote(s) }
