package lbserver

import (
	"container/list"
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
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
	limitStreamRatePerIP
	numLimits
)

var limitNames = [numLimits]string{
	limitStreams:        "max-streams",
	limitStreamsPerIP:   "max-streams-per-ip",
	limitStreamsPerConn: "max-streams-per-conn",
	limitConns:          "max-conns",
	limitConnsPerIP:     "max-conns-per-ip",
	// The rate limit is one setting with its burst (stream-burst-per-ip).
	limitStreamRatePerIP: "max-stream-rate-per-ip",
}

// refusedMsgs are the log messages of refusals, one kind per limit for the
// log throttle.
var refusedMsgs = [numLimits]string{
	limitStreams:         "stream refused: too many streams",
	limitStreamsPerIP:    "stream refused: too many streams from one IP",
	limitStreamsPerConn:  "stream refused: too many streams on one connection",
	limitConns:           "connection refused: too many connections",
	limitConnsPerIP:      "connection refused: too many connections from one IP",
	limitStreamRatePerIP: "stream refused: one IP opens streams too fast",
}

func (l limit) String() string { return limitNames[l] }

// label is the limit's name for Observer.Refused: its name in snake case.
func (l limit) label() string { return strings.ReplaceAll(limitNames[l], "-", "_") }

// LimitCounts counts refusals per limit.
type LimitCounts struct {
	Streams        int64 // streams refused by MaxStreams
	StreamsPerIP   int64 // streams refused by MaxStreamsPerIP
	StreamsPerConn int64 // streams refused by MaxStreamsPerConn
	Conns          int64 // connections closed at accept by MaxConns
	ConnsPerIP     int64 // connections closed at accept by MaxConnsPerIP
	// StreamRatePerIP counts streams refused by MaxStreamRatePerIP (their
	// address opened streams faster than it, beyond StreamBurstPerIP).
	StreamRatePerIP int64
}

func (c Settings) validateLimits() []error {
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
	if c.MaxStreamsPerConn > MaxMaxStreamsPerConn {
		errs = append(errs, fmt.Errorf("max streams per connection %d is over %d", c.MaxStreamsPerConn, MaxMaxStreamsPerConn))
	}
	if c.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("max connections %d is under 1", c.MaxConns))
	}
	if c.MaxConnsPerIP < 1 || c.MaxConnsPerIP > c.MaxConns {
		errs = append(errs, fmt.Errorf("max connections per IP %d is not in [1, max connections %d]", c.MaxConnsPerIP, c.MaxConns))
	}
	if c.SendTimeout < time.Second || c.SendTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("send timeout %v is not in [1s, 10m]", c.SendTimeout))
	}
	if !(c.MaxStreamRatePerIP >= 0 && c.MaxStreamRatePerIP <= MaxMaxStreamRatePerIP) {
		errs = append(errs, fmt.Errorf("max stream rate per IP %v is not in [0 (off), %v] streams/s", c.MaxStreamRatePerIP, float64(MaxMaxStreamRatePerIP)))
	}
	if c.MaxStreamRatePerIP > 0 && (c.StreamBurstPerIP < 1 || c.StreamBurstPerIP > MaxStreamBurstPerIP) {
		errs = append(errs, fmt.Errorf("stream burst per IP %d is not in [1, %d]", c.StreamBurstPerIP, MaxStreamBurstPerIP))
	}
	if c.MaxIgnoredMessages < 0 || c.MaxIgnoredMessages > MaxMaxIgnoredMessages {
		errs = append(errs, fmt.Errorf("max ignored messages %d is not in [0 (off), %d]", c.MaxIgnoredMessages, MaxMaxIgnoredMessages))
	}
	return errs
}

// Upper bounds of the limits of Settings (New and Reconfigure reject
// values above them), for callers that check a configuration first.
const (
	// MaxMaxStreamsPerConn bounds MaxStreamsPerConn.
	MaxMaxStreamsPerConn = 1 << 30
	// MaxMaxStreamRatePerIP bounds MaxStreamRatePerIP, in streams/s.
	MaxMaxStreamRatePerIP = 1e6
	// MaxStreamBurstPerIP bounds StreamBurstPerIP (at least 1 while
	// MaxStreamRatePerIP is on).
	MaxStreamBurstPerIP = 1 << 20
	// MaxMaxIgnoredMessages bounds MaxIgnoredMessages.
	MaxMaxIgnoredMessages = 1 << 20
)

// streamSlots counts the open streams: in total, per client IP and per
// connection (told apart by the client's address and port). Safe for
// concurrent use.
type streamSlots struct {
	mu                  sync.Mutex
	max, perIP, perConn int                    // guarded by mu
	total               int                    // guarded by mu
	ips                 map[netip.Addr]int     // guarded by mu; no zero counts
	streams             map[netip.AddrPort]int // guarded by mu; no zero counts
}

func newStreamSlots(cfg Settings) *streamSlots {
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

// set changes the bounds. Streams over a lowered bound stay; new ones are
// refused until enough have left.
func (l *streamSlots) set(max, perIP, perConn int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.max, l.perIP, l.perConn = max, perIP, perConn
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

// limitMax returns the bound of a limit in force.
func (s *Server) limitMax(l limit) int {
	set := s.live()
	switch l {
	case limitStreams:
		return set.MaxStreams
	case limitStreamsPerIP:
		return set.MaxStreamsPerIP
	case limitStreamsPerConn:
		return set.MaxStreamsPerConn
	case limitConns:
		return set.MaxConns
	case limitStreamRatePerIP:
		return set.StreamBurstPerIP
	default:
		return set.MaxConnsPerIP
	}
}

// refuse counts and logs (throttled) a refusal by l of a stream or
// connection from peer.
func (s *Server) refuse(l limit, peer netip.AddrPort) {
	s.counters.refused[l].Add(1)
	s.obs.Refused(l.label())
	if l == limitStreamRatePerIP {
		set := s.live()
		s.throttle.Warn(refusedMsgs[l], "limit", l.String(), "rate", set.MaxStreamRatePerIP, "burst", set.StreamBurstPerIP, "peer", peer.String())
		return
	}
	s.throttle.Warn(refusedMsgs[l], "limit", l.String(), "max", s.limitMax(l), "peer", peer.String())
}

// refusedStatus is the status a stream refused by l ends with.
func (s *Server) refusedStatus(l limit) error {
	if l == limitStreamRatePerIP {
		set := s.live()
		return status.Errorf(codes.ResourceExhausted, "lbserver: stream refused: your IP address opens streams faster than %v a second (burst %d; limit %s); retry later with backoff",
			set.MaxStreamRatePerIP, set.StreamBurstPerIP, l)
	}
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
	mu    sync.Mutex
	max   int                // guarded by mu
	perIP int                // guarded by mu
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

// set changes the bounds; connections over a lowered bound stay.
func (c *connSlots) set(max, perIP int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max, c.perIP = max, perIP
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
// Settings.MaxStreamsPerConn; from its value at New), the largest message received
// (Config.MaxRequestSize), and a grpc.InTapHandle that refuses a stream
// beyond the stream limits before grpc starts a handler for it, the
// cheapest refusal there is (extra must then set no InTapHandle of its
// own: grpc allows one). Serve uses them.
func (s *Server) GRPCOptions(extra ...grpc.ServerOption) []grpc.ServerOption {
	return append(ServerOptions(extra...),
		grpc.MaxConcurrentStreams(s.maxConcurrentStreams()),
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestSize),
		grpc.InTapHandle(s.tapStream))
}

// maxConcurrentStreams is the HTTP/2 MAX_CONCURRENT_STREAMS both
// transports announce: twice MaxStreamsPerConn (from its value at New),
// so that the per-connection limit refuses with its own status, while the
// streams ended whose client has not read their end yet stay bounded.
func (s *Server) maxConcurrentStreams() uint32 { return uint32(2 * s.cfg.MaxStreamsPerConn) }

// balanceLoadMethod is the full name of BalanceLoad.
var balanceLoadMethod = "/" + lbpb.LoadBalancer_ServiceDesc.ServiceName + "/BalanceLoad"

// tapStream refuses a new BalanceLoad stream when its client is already at
// one of the stream limits, or opens streams faster than
// MaxStreamRatePerIP, before grpc starts a handler. For the slots it only
// looks: the handler takes the slot (and refuses streams that raced past
// here). A stream within the limits takes a token of its address's rate
// bucket here, and its context says so, so that the handler does not take
// another. Called by grpc's transport for every new stream, under the
// transport's lock; does not block.
func (s *Server) tapStream(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != balanceLoadMethod {
		return ctx, nil
	}
	return s.admitStream(ctx)
}

// admitStream is tapStream for a BalanceLoad stream of either transport:
// it refuses the stream of ctx's peer when that peer is at a stream limit
// or over its stream rate, and otherwise returns ctx marked as having
// taken its rate token. Does not block.
func (s *Server) admitStream(ctx context.Context) (context.Context, error) {
	peer := peerOf(ctx)
	if lim, full := s.slots.full(peer); full {
		s.refuse(lim, peer)
		return nil, s.refusedStatus(lim)
	}
	if !s.rates.take(peer.Addr()) {
		s.refuse(limitStreamRatePerIP, peer)
		return nil, s.refusedStatus(limitStreamRatePerIP)
	}
	return context.WithValue(ctx, rateTakenKey{}, true), nil
}

// rateTakenKey marks the context of a stream that took its rate token in
// tapStream.
type rateTakenKey struct{}

// rateTaken reports whether tapStream took the stream's rate token.
func rateTaken(ctx context.Context) bool {
	taken, _ := ctx.Value(rateTakenKey{}).(bool)
	return taken
}

// maxRateAddrs bounds the addresses streamRates keeps a bucket for.
const maxRateAddrs = 1 << 15

// streamRates is a token bucket per client address (an IPv4 address, an
// IPv6 /64, as for ClientStats shares) on the streams it opens: rate
// tokens a second, burst at most. A full bucket is the same as none, so a
// bucket is dropped once it has refilled, and the table holds only the
// addresses that opened a stream within the last burst/rate seconds; at
// most maxRateAddrs of them, a new one beyond evicting the least recently
// seen (which then starts again with a full bucket). The zero rate
// limits nothing. Safe for concurrent use.
type streamRates struct {
	max int
	now func() time.Time

	mu          sync.Mutex
	rate, burst float64                        // guarded by mu
	addrs       map[netip.Prefix]*list.Element // guarded by mu; values *rateBucket
	lru         list.List                      // guarded by mu; of *rateBucket, most recently seen first
}

// rateBucket is the bucket of one address.
type rateBucket struct {
	key netip.Prefix
	tokenBucket
}

// tokenBucket holds tokens that refill at a rate up to a capacity. Not
// safe for concurrent use.
type tokenBucket struct {
	tokens float64
	at     time.Time // last refill: for a rateBucket, when its address was last seen
}

// fullBucket returns a bucket holding burst tokens at now.
func fullBucket(burst float64, now time.Time) tokenBucket {
	return tokenBucket{tokens: burst, at: now}
}

// take refills b up to now and takes one token, or reports false when
// it holds less than one (and takes nothing).
func (b *tokenBucket) take(now time.Time, rate, burst float64) bool {
	if d := now.Sub(b.at).Seconds(); d > 0 {
		b.tokens = min(b.tokens+d*rate, burst)
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func newStreamRates(cfg Settings, now func() time.Time) *streamRates {
	r := &streamRates{rate: cfg.MaxStreamRatePerIP, burst: float64(cfg.StreamBurstPerIP), max: maxRateAddrs, now: now,
		addrs: map[netip.Prefix]*list.Element{}}
	r.lru.Init()
	return r
}

// rateKey returns the address a client is rate limited by: its IPv4
// address or its IPv6 /64.
func rateKey(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// take takes a token from the bucket of the client address a and reports
// true, or reports false when its bucket is empty (a refused stream takes
// nothing). Peers without an IP address (Unix sockets) are not limited.
func (r *streamRates) take(a netip.Addr) bool {
	if !a.IsValid() {
		return true
	}
	key := rateKey(a)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rate <= 0 {
		return true
	}
	// Read under the lock, so that buckets only see time move forward.
	now := r.now()
	r.pruneLocked(now)
	var b *rateBucket
	if e, ok := r.addrs[key]; ok {
		b = e.Value.(*rateBucket)
		r.lru.MoveToFront(e)
	} else {
		if r.lru.Len() >= r.max {
			old := r.lru.Remove(r.lru.Back()).(*rateBucket)
			delete(r.addrs, old.key)
		}
		b = &rateBucket{key: key, tokenBucket: fullBucket(r.burst, now)}
		r.addrs[key] = r.lru.PushFront(b)
	}
	return b.take(now, r.rate, r.burst) // at is now, refused or not: the list stays in order
}

// pruneLocked drops the buckets that have refilled by now: those seen
// longest ago, from the back of the list.
func (r *streamRates) pruneLocked(now time.Time) {
	refill := time.Duration(math.Ceil(r.burst / r.rate * float64(time.Second)))
	for e := r.lru.Back(); e != nil; e = r.lru.Back() {
		b := e.Value.(*rateBucket)
		if now.Sub(b.at) < refill {
			return
		}
		r.lru.Remove(e)
		delete(r.addrs, b.key)
	}
}

// set changes the rate and burst (rate 0: off). Buckets keep their
// tokens, up to the new burst.
func (r *streamRates) set(rate, burst float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rate, r.burst = rate, burst
	if rate <= 0 {
		r.addrs = map[netip.Prefix]*list.Element{}
		r.lru.Init()
		return
	}
	for e := r.lru.Front(); e != nil; e = e.Next() {
		b := e.Value.(*rateBucket)
		b.tokens = min(b.tokens, burst)
	}
}

// len returns how many addresses have a bucket.
func (r *streamRates) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lru.Len()
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
