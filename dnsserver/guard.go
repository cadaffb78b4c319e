package dnsserver

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// This file holds what stands between the network and the answers: the
// allowed source networks, the per-source rate limit of UDP answers, and
// the bounds on TCP connections. The UDP checks run in the one goroutine
// that reads the socket (a decorated dns.Reader), before miekg/dns starts a
// goroutine for the packet, so that a packet dropped costs no goroutine
// and a malformed one from a source not allowed gets no FORMERR either.

// addrOf returns the IP of a remote address, unmapped and without zone.
func addrOf(a net.Addr) (netip.Addr, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if a == nil {
			return netip.Addr{}, false
		}
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return netip.Addr{}, false
		}
	}
	ip := ap.Addr().Unmap().WithZone("")
	return ip, ip.IsValid()
}

// allowed reports whether ip is in one of Config.Allow's networks.
func (s *Server) allowed(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, p := range s.cfg.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// verdict is the rate limiter's decision about one UDP question.
type verdict int

const (
	admit verdict = iota // answer it
	slip                 // over the rate: answer with TC and no record
	drop                 // over the rate: no answer
)

// rateLimiter is a token bucket per source (an IPv4 or IPv6 prefix), in a
// table of bounded size that evicts the source seen longest ago. Safe for
// concurrent use.
type rateLimiter struct {
	// Read-only after construction.
	rate, burst float64
	slip        int
	max         int
	v4, v6      int
	clock       clock.Clock

	mu      sync.Mutex
	buckets map[netip.Prefix]*list.Element // guarded by mu; values *bucket
	lru     list.List                      // guarded by mu; front: seen last
	evicted int64                          // guarded by mu
}

type bucket struct {
	key    netip.Prefix
	tokens float64
	last   time.Time
	over   int64 // questions over the rate since the bucket last had a token
}

func newRateLimiter(cfg Config) *rateLimiter {
	return &rateLimiter{rate: cfg.RateLimit, burst: float64(cfg.RateBurst), slip: cfg.RateLimitSlip,
		max: cfg.RateLimitSources, v4: cfg.RateLimitIPv4Bits, v6: cfg.RateLimitIPv6Bits, clock: cfg.Clock,
		buckets: map[netip.Prefix]*list.Element{}}
}

// source is the prefix ip is counted in.
func (r *rateLimiter) source(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap().WithZone("")
	bits := r.v6
	if ip.Is4() {
		bits = r.v4
	}
	p, _ := ip.Prefix(bits)
	return p
}

// take spends one token of ip's source and says what to do with its
// question: admit while the bucket has a token; over the rate, slip the
// first question and every slip-th after it, drop the others. It does not
// block.
func (r *rateLimiter) take(ip netip.Addr) (verdict, netip.Prefix) {
	key := r.source(ip)
	r.mu.Lock()
	defer r.mu.Unlock()
	// Read under the lock, so that a bucket's time only moves forward and
	// no interval is refilled twice.
	now := r.clock.Now()
	var b *bucket
	if e := r.buckets[key]; e != nil {
		b = e.Value.(*bucket)
		r.lru.MoveToFront(e)
		if d := now.Sub(b.last); d > 0 {
			b.tokens = min(r.burst, b.tokens+d.Seconds()*r.rate)
			b.last = now
		}
	} else {
		for len(r.buckets) >= r.max {
			old := r.lru.Back()
			delete(r.buckets, r.lru.Remove(old).(*bucket).key)
			r.evicted++
		}
		b = &bucket{key: key, tokens: r.burst, last: now}
		r.buckets[key] = r.lru.PushFront(b)
	}
	if b.tokens >= 1 {
		b.tokens--
		b.over = 0
		return admit, key
	}
	b.over++
	if r.slip > 0 && (b.over-1)%int64(r.slip) == 0 {
		return slip, key
	}
	return drop, key
}

// size returns the number of sources in the table and how many were
// evicted so far.
func (r *rateLimiter) size() (n int, evicted int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets), r.evicted
}

// admitUDP decides, in the socket's reading goroutine, whether the packet
// m from `from` is answered: not if its source is not allowed (dropped,
// counted) nor if it is over its rate (dropped, or answered by reply with
// an empty truncated message). It does not block beyond reply, a UDP
// write.
func (s *Server) admitUDP(m []byte, from net.Addr, reply func([]byte) error) bool {
	ip, ok := addrOf(from)
	if !ok || !s.allowed(ip) {
		s.counters.denied.Add(1)
		s.guard(GuardDenied)
		s.tlog.Warn("DNS question from a source not allowed: dropped (see -dns-allow)", "source", ip.String())
		return false
	}
	v, src := s.limiter.take(ip)
	if v == admit {
		return true
	}
	s.tlog.Warn("DNS source over its rate limit: answers truncated or dropped", "source", src.String())
	if v == slip {
		if b := truncatedReply(m, s.cfg.MaxUDPSize); b != nil && reply(b) == nil {
			s.counters.slipped.Add(1)
			s.guard(GuardSlipped)
			return false
		}
	}
	s.counters.rateLimited.Add(1)
	s.guard(GuardRateLimited)
	return false
}

// truncatedReply is the answer to the query m with no record and the TC
// bit, which makes a real client ask again over TCP; it is no larger than
// m plus an OPT record if m had one. It returns nil if m is not a query.
func truncatedReply(m []byte, ednsSize int) []byte {
	req := new(dns.Msg)
	if err := req.Unpack(m); err != nil || req.Response || req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		return nil
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Truncated = true
	if req.IsEdns0() != nil {
		resp.SetEdns0(uint16(ednsSize), false)
	}
	b, err := resp.Pack()
	if err != nil {
		return nil
	}
	return b
}

// guardedReader is the UDP side of the guard: it reads packets until one
// is admitted.
type guardedReader struct {
	dns.Reader
	s *Server
}

var _ dns.PacketConnReader = guardedReader{}

// ReadUDP returns the next packet admitted. A dropped packet's buffer is
// reused for the next read, under the deadline the inner reader set (it
// sets none once the server shuts down), so that a flood of dropped
// packets allocates nothing.
func (g guardedReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	m, sess, err := g.Reader.ReadUDP(conn, timeout)
	for err == nil {
		reply := func(b []byte) error { _, err := dns.WriteToSessionUDP(conn, b, sess); return err }
		if g.s.admitUDP(m, sess.RemoteAddr(), reply) {
			return m, sess, nil
		}
		var n int
		buf := m[:cap(m)]
		n, sess, err = dns.ReadFromSessionUDP(conn, buf)
		m = buf[:max(n, 0)]
	}
	return nil, nil, err
}

// ReadPacketConn is ReadUDP for other net.PacketConns.
func (g guardedReader) ReadPacketConn(conn net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	pcr, ok := g.Reader.(dns.PacketConnReader)
	if !ok {
		return nil, nil, &net.OpError{Op: "read", Net: "udp", Err: net.ErrClosed}
	}
	m, from, err := pcr.ReadPacketConn(conn, timeout)
	for err == nil {
		reply := func(b []byte) error { _, err := conn.WriteTo(b, from); return err }
		if g.s.admitUDP(m, from, reply) {
			return m, from, nil
		}
		var n int
		buf := m[:cap(m)]
		n, from, err = conn.ReadFrom(buf)
		m = buf[:max(n, 0)]
	}
	return nil, nil, err
}

// guardedListener is the TCP side of the guard: it closes at once the
// connections from sources not allowed, and those over MaxTCPConns or
// MaxTCPConnsPerSource. Safe for concurrent use.
type guardedListener struct {
	net.Listener
	s *Server

	mu    sync.Mutex
	open  int                // guarded by mu
	perIP map[netip.Addr]int // guarded by mu; only IPs with open connections
}

func newGuardedListener(l net.Listener, s *Server) *guardedListener {
	return &guardedListener{Listener: l, s: s, perIP: map[netip.Addr]int{}}
}

// Accept returns the next connection admitted. It blocks.
func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip, ok := addrOf(c.RemoteAddr())
		if !ok || !l.s.allowed(ip) {
			c.Close()
			l.s.counters.denied.Add(1)
			l.s.guard(GuardDenied)
			l.s.tlog.Warn("DNS TCP connection from a source not allowed: closed (see -dns-allow)", "source", ip.String())
			continue
		}
		l.mu.Lock()
		full := l.open >= l.s.cfg.MaxTCPConns || l.perIP[ip] >= l.s.cfg.MaxTCPConnsPerSource
		if !full {
			l.open++
			l.perIP[ip]++
		}
		open, mine := l.open, l.perIP[ip]
		l.mu.Unlock()
		if full {
			// Counted before the close, so that a client that sees its
			// connection closed sees it counted too.
			l.s.counters.tcpRejected.Add(1)
			l.s.guard(GuardTCPRejected)
			c.Close()
			l.s.tlog.Warn("DNS TCP connection over the limit: closed", "source", ip.String(), "open", open, "open_from_source", mine)
			continue
		}
		return &guardedConn{Conn: c, l: l, ip: ip}, nil
	}
}

func (l *guardedListener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

// guardedConn gives its slot back when closed (once).
type guardedConn struct {
	net.Conn
	l    *guardedListener
	ip   netip.Addr
	once sync.Once
}

func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}
