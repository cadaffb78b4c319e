package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/logthrottle"
)

// Server answers DNS questions about its zone. Create it with New and run
// it with Serve, or use it as a dns.Handler. Safe for concurrent use.
type Server struct {
	// Read-only after construction.
	cfg    Config
	zone   string // lowercase, with trailing dot: "lb.internal."
	serial uint32
	log    *slog.Logger
	// txt holds the TXT strings of each child policy.
	txt map[string][]string
	// tlog writes the lines a client can cause, one per kind per second.
	tlog *logthrottle.Logger
	// dir tells which services exist; nil if unknown.
	dir     discovery.Directory
	limiter *rateLimiter
	// inflight holds a token per UDP question being answered.
	inflight chan struct{}

	rotation atomic.Uint64 // rotates the order of SRV records
	counters counters
}

var _ dns.Handler = (*Server)(nil)

// counters are the server's own event counts.
type counters struct {
	queries, answers, noData, nxDomain, refused, servFail, errors, truncated atomic.Int64
	minimalANY, denied, rateLimited, slipped, overloaded, tcpRejected        atomic.Int64
}

// Stats is a copy of the server's counters. Every question answered is
// counted once in Queries and once in Answers, NoData, NXDomain, Refused,
// ServFail or Errors; the questions the guard stops (Denied, RateLimited,
// Slipped, Overloaded) are not in Queries.
type Stats struct {
	Queries    int64 // questions answered
	Answers    int64 // NOERROR with records
	NoData     int64 // NOERROR without records
	NXDomain   int64 // names that do not exist in the zone
	Refused    int64 // names outside the zone, zone transfers, other classes
	ServFail   int64 // no first answer from the catalog or the balancers in time
	Errors     int64 // FORMERR, NOTIMP, BADVERS
	Truncated  int64 // UDP answers sent with the TC bit (over a size bound)
	MinimalANY int64 // ANY questions answered with RFC 8482's HINFO (in Answers)

	Denied      int64 // UDP questions dropped and TCP connections closed: source not in Config.Allow
	RateLimited int64 // UDP questions dropped over their source's rate
	Slipped     int64 // UDP questions over their source's rate answered empty with TC
	Overloaded  int64 // UDP questions dropped over Config.MaxInflight
	TCPRejected int64 // TCP connections closed over Config.MaxTCPConns or MaxTCPConnsPerSource
}

// New validates cfg and returns a Server. It starts nothing.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:    cfg,
		zone:   dns.CanonicalName(cfg.Zone),
		serial: uint32(time.Now().Unix()),
		log:    cfg.Logger.With("component", "dnsserver"),
		txt:    map[string][]string{},
		dir:    cfg.Directory,
	}
	s.tlog = logthrottle.New(s.log, time.Second)
	s.limiter = newRateLimiter(cfg)
	s.inflight = make(chan struct{}, cfg.MaxInflight)
	if d, ok := cfg.Catalog.(discovery.Directory); ok && s.dir == nil {
		s.dir = d
	}
	for _, p := range []string{RoundRobin, PickFirst} {
		s.txt[p] = splitTXT(serviceConfig(p))
	}
	return s, nil
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	c := &s.counters
	return Stats{
		Queries: c.queries.Load(), Answers: c.answers.Load(), NoData: c.noData.Load(), NXDomain: c.nxDomain.Load(),
		Refused: c.refused.Load(), ServFail: c.servFail.Load(), Errors: c.errors.Load(), Truncated: c.truncated.Load(),
		MinimalANY: c.minimalANY.Load(), Denied: c.denied.Load(), RateLimited: c.rateLimited.Load(),
		Slipped: c.slipped.Load(), Overloaded: c.overloaded.Load(), TCPRejected: c.tcpRejected.Load(),
	}
}

// Zone returns the zone the server answers for, lowercase with a trailing
// dot.
func (s *Server) Zone() string { return s.zone }

// ServeDNS answers one question; it implements dns.Handler for servers run
// outside Serve. It blocks at most Config.LookupTimeout. It applies
// Config.Allow and Config.MaxInflight, but not the rate limit nor the TCP
// bounds, which only Serve applies. Safe for concurrent use.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.handle(context.Background(), w, req)
}

func (s *Server) handle(ctx context.Context, w dns.ResponseWriter, req *dns.Msg) {
	udp := w.LocalAddr() == nil || !strings.HasPrefix(w.LocalAddr().Network(), "tcp")
	// Serve checked UDP sources already, and TCP ones at accept; this
	// check is for handlers run outside Serve.
	if ip, ok := addrOf(w.RemoteAddr()); !ok || !s.allowed(ip) {
		s.counters.denied.Add(1)
		s.guard(GuardDenied)
		s.tlog.Warn("DNS question from a source not allowed: dropped (see -dns-allow)", "source", ip.String())
		return
	}
	// A TCP connection answers one question at a time, and connections
	// are bounded: only UDP questions need a bound here.
	if udp {
		select {
		case s.inflight <- struct{}{}:
			defer func() { <-s.inflight }()
		default:
			s.counters.overloaded.Add(1)
			s.guard(GuardOverloaded)
			s.tlog.Warn("DNS questions over the in-flight bound: dropped", "max_inflight", s.cfg.MaxInflight)
			return
		}
	}
	m := s.answer(ctx, req)
	limit := dns.MaxMsgSize
	if udp {
		limit = s.udpLimit(req)
	}
	truncated := s.fit(m, limit) && udp
	if truncated {
		s.counters.truncated.Add(1)
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.DNSAnswer(qtypeLabel(req), rcodeLabel(m.Rcode), truncated)
	}
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("writing answer", "err", err)
	}
}

// udpLimit is the largest UDP answer to req: its sender's EDNS0 buffer
// size (512 without EDNS0), at most Config.MaxUDPSize, and at most
// Config.MaxUDPRatio times the size of req, so that no question makes the
// server send much more than it received.
func (s *Server) udpLimit(req *dns.Msg) int {
	limit := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		limit = min(max(int(opt.UDPSize()), dns.MinMsgSize), s.cfg.MaxUDPSize)
	}
	return min(limit, s.cfg.MaxUDPRatio*req.Len())
}

// fit makes m fit in limit bytes: first without the additional records
// (the targets' addresses, which clients look up themselves), then by
// dropping records and setting the TC bit. Below 512 bytes (a bound set by
// the question's size) it drops every record but the OPT. It reports
// whether TC is set.
func (s *Server) fit(m *dns.Msg, limit int) bool {
	m.Compress = true
	if m.Len() > limit && len(m.Extra) > 0 {
		m.Extra = onlyOPT(m)
	}
	if m.Len() > limit {
		if limit >= dns.MinMsgSize {
			m.Truncate(limit)
		} else {
			// dns.Msg.Truncate never goes below 512 bytes.
			m.Answer, m.Ns, m.Extra = nil, nil, onlyOPT(m)
			m.Truncated = true
		}
	}
	return m.Truncated
}

// onlyOPT returns m's additional section without its records but the OPT.
func onlyOPT(m *dns.Msg) []dns.RR {
	if opt := m.IsEdns0(); opt != nil {
		return []dns.RR{opt}
	}
	return nil
}

// Listen opens the UDP and TCP listeners of addr ("127.0.0.1:8053") on the
// same port; with port 0 it picks a port free for both.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dnsserver: listen address %q: %w", addr, err)
	}
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dnsserver: %w", err)
		}
		_, p, _ := net.SplitHostPort(pc.LocalAddr().String())
		lis, err := net.Listen("tcp", net.JoinHostPort(host, p))
		if err == nil {
			return pc, lis, nil
		}
		pc.Close()
		lastErr = err
		if port != "0" {
			break // the port was asked for: no other to try
		}
	}
	return nil, nil, fmt.Errorf("dnsserver: %w", lastErr)
}

// Serve answers on udp and tcp (either may be nil, not both) until ctx is
// done, then stops both listeners, waits for the answers in progress and
// returns nil; or returns the error that stopped a listener, after
// stopping the other. It closes both listeners. Blocks.
func (s *Server) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	if udp == nil && tcp == nil {
		return errors.New("dnsserver: Serve: no listener")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) { s.handle(ctx, w, req) })
	var servers []*dns.Server
	if udp != nil {
		servers = append(servers, &dns.Server{PacketConn: udp, Handler: handler, UDPSize: dns.DefaultMsgSize,
			DecorateReader: func(r dns.Reader) dns.Reader { return guardedReader{Reader: r, s: s} }})
		s.log.Info("serving", "zone", s.zone, "udp", udp.LocalAddr().String())
	}
	if tcp != nil {
		servers = append(servers, &dns.Server{Listener: newGuardedListener(tcp, s), Handler: handler})
		s.log.Info("serving", "zone", s.zone, "tcp", tcp.Addr().String())
	}
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(servers))
	started := make([]chan struct{}, len(servers))
	for i, srv := range servers {
		started[i] = make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started[i]) }
		srv.ReadTimeout = 2 * time.Second
		srv.WriteTimeout = 2 * time.Second
		srv.IdleTimeout = func() time.Duration { return 2 * time.Second } // frees TCP slots held by idle clients
		go func() { results <- result{i, srv.ActivateAndServe()} }()
	}

	var firstErr error
	stopped := make([]bool, len(servers))
	record := func(r result) {
		stopped[r.i] = true
		if firstErr == nil && ctx.Err() == nil {
			err := r.err
			if err == nil {
				err = errors.New("listener closed")
			}
			firstErr = fmt.Errorf("dnsserver: serve: %w", err)
		}
	}
	select {
	case <-ctx.Done():
	case r := <-results:
		record(r)
	}
	cancel() // ends the lookups in progress
	for i, srv := range servers {
		for !stopped[i] {
			select {
			case <-started[i]:
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := srv.ShutdownContext(sctx); err != nil {
					s.log.Debug("shutdown", "err", err)
				}
				scancel()
				record(<-results)
			case r := <-results:
				record(r)
			}
		}
	}
	if udp != nil {
		udp.Close()
	}
	if tcp != nil {
		tcp.Close()
	}
	return firstErr
}
