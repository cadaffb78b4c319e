package lbserver

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/logthrottle"
	"github.com/lookaside-lb/lookaside/policy"
)

// Server implements grpc.lb.v1.LoadBalancer. Create it with New, register
// it on a grpc.Server with Register (or run it with Serve), and Close it.
// Safe for concurrent use.
type Server struct {
	lbpb.UnimplementedLoadBalancerServer

	// Read-only after construction. cfg is the Config given to New: its
	// Settings are those at start; the ones in force are set's.
	cfg Config
	log *slog.Logger
	// base is cfg.Logger, for the loggers of other packages, which add
	// their own component.
	base *slog.Logger
	obs  Observer
	seed func() uint64
	now  func() time.Time // the clock of the rate limits
	// reportRate and reportBurst bound the ClientStats rate of a stream
	// (see clientStatsConfig).
	reportRate, reportBurst float64

	reg         *registry
	clientStats *clientstats.Registry
	counters    counters
	streamSeq   atomic.Uint64
	// dir, when cfg.Source is a discovery.Directory, tells which services
	// exist: names it does not know start no watch.
	dir      discovery.Directory
	slots    *streamSlots
	rates    *streamRates
	conns    *connSlots
	throttle *logthrottle.Logger // lines a client can trigger, one per kind per second

	// set holds the Settings in force; Reconfigure swaps it. Never nil.
	set atomic.Pointer[live]
	// reconfMu serializes Reconfigure.
	reconfMu sync.Mutex
	// opsLog logs what operators must hear of once per service and kind
	// (unknown services, no instance, fallback).
	opsLog *serviceLog

	mu      sync.Mutex
	closed  bool          // guarded by mu
	closing chan struct{} // closed by Close (under mu): every stream ends
	// closingCtx ends when closing is closed, for what waits on it
	// without a goroutine (context.AfterFunc).
	closingCtx context.Context
	closeCtx   context.CancelFunc
	// own is the balancer's own transport while Serve runs it, for Stats.
	own     atomic.Pointer[ownStreams]
	streams sync.WaitGroup // counts running BalanceLoad handlers; Add under mu
}

// counters are the server's own event counts.
type counters struct {
	streamsStarted  atomic.Int64
	streamsActive   atomic.Int64
	invalidRequests atomic.Int64
	initialTimeouts atomic.Int64
	listsSent       atomic.Int64
	fallbacksSent   atomic.Int64
	badClientStats  atomic.Int64
	streamsExpired  atomic.Int64
	refused         [numLimits]atomic.Int64
	slowReadersCut  atomic.Int64
	floodsCut       atomic.Int64
	unknownServices atomic.Int64
	xdsNACKs        [len(xdsTypes)]atomic.Int64
}

// Stats is a copy of the server's counters.
type Stats struct {
	StreamsStarted  int64 // streams that reached the handler
	StreamsActive   int64 // streams running now
	InvalidRequests int64 // streams ended with InvalidArgument
	InitialTimeouts int64 // streams ended for sending no initial request
	ListsSent       int64 // ServerList messages sent
	FallbacksSent   int64 // FallbackResponse messages sent
	BadClientStats  int64 // ClientStats messages clamped or ignored as implausible (see clientstats.Verdict)
	StreamsExpired  int64 // streams ended at their maximum age
	// Refused counts the streams and connections refused per limit.
	Refused LimitCounts
	// SlowReadersCut counts streams ended because their client did not
	// read within SendTimeout.
	SlowReadersCut int64
	// FloodingStreamsCut counts streams ended because more than
	// MaxIgnoredMessages of their messages were ignored within a minute.
	FloodingStreamsCut int64
	// UnknownServices counts streams for services the discovery Directory
	// said do not exist, answered with a fallback and no watch, and xDS
	// subscriptions to such services, answered as not found.
	UnknownServices int64
	// ConnsOpen is the client connections open now (through Listener).
	ConnsOpen int64
	// ServicesWatched is how many services are watched now; WatchesStarted
	// how many watches were started in all.
	ServicesWatched int64
	WatchesStarted  int64
	// XDSNACKs counts the responses xDS clients rejected, by resource
	// type: listener, route, cluster, endpoint.
	XDSNACKs map[string]int64
	// The balancer's own transport (Config.Transport), while Serve runs
	// it: OwnConns is the connections it serves now (their first stream
	// was BalanceLoad); HandedOff the connections it gave the grpc.Server
	// (health, reflection, xDS, compressed BalanceLoad); ProtocolErrors
	// the connections it closed for breaking HTTP/2.
	OwnConns, HandedOff, ProtocolErrors int64
}

// New validates cfg and returns a Server. It starts no goroutine until a
// stream arrives.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// Names match case-insensitively (as in Consul): per-service settings
	// are keyed by canonical names, once.
	l, err := newLive(cfg.Settings, cfg.MaxNameLength)
	if err != nil {
		return nil, fmt.Errorf("lbserver: invalid config: %w", err)
	}
	log := cfg.Logger.With("component", "lbserver")
	dir, _ := cfg.Source.(discovery.Directory)
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	s := &Server{
		dir:      dir,
		slots:    newStreamSlots(cfg.Settings),
		now:      time.Now,
		conns:    &connSlots{max: cfg.MaxConns, perIP: cfg.MaxConnsPerIP, ips: map[netip.Addr]int{}},
		throttle: logthrottle.New(log, time.Second),
		opsLog:   newServiceLog(log, time.Minute),
		cfg:      cfg,
		log:      log,
		base:     cfg.Logger,
		obs:      obs,
		seed:     rand.Uint64,
		closing:  make(chan struct{}),
	}
	s.closingCtx, s.closeCtx = context.WithCancel(context.Background())
	s.set.Store(l)
	csCfg := clientStatsConfig(cfg, s.live)
	s.reportRate, s.reportBurst = csCfg.MaxReportRate, float64(csCfg.ReportBurst)
	s.clientStats = clientstats.New(csCfg)
	s.rates = newStreamRates(cfg.Settings, func() time.Time { return s.now() })
	s.reg = newRegistry(cfg.Source, cfg.WatchLinger, cfg.MaxServices, s.newPlanner, log)
	s.reg.throttle = s.throttle
	return s, nil
}

// live returns the settings in force. Safe for concurrent use.
func (s *Server) live() *live { return s.set.Load() }

// newPlanner makes the planner of one service. Called under the
// registry's lock; it starts nothing: the planner starts its load
// collector when the service's policy or overload drops need one (see
// planner.syncLoads).
func (s *Server) newPlanner(svc *service, log *slog.Logger) *planner {
	p := &planner{
		svc:      svc,
		settings: s.live,
		log:      log,
		ops:      s.opsLog,
		stats:    s.clientStats,
		now:      time.Now,
		window:   max(2*s.cfg.ClientStatsInterval, 5*time.Second),
		tokenKey: s.cfg.LBTokenKey,
	}
	if s.cfg.LoadReports {
		lc := s.cfg.LoadReport
		// The collector adds its own component.
		lc.Logger = s.base.With("service", quote(svc.name))
		p.loadConfig = &lc
	}
	return p
}

// choosePolicy picks the policy of a service's snapshot with the settings
// in force: see live.choosePolicy.
func (s *Server) choosePolicy(snap discovery.Snapshot) (name string, p policy.Policy, bad string) {
	name, _, p, bad = s.live().choosePolicy(snap)
	return name, p, bad
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	c := &s.counters
	st := Stats{
		StreamsStarted:  c.streamsStarted.Load(),
		StreamsActive:   c.streamsActive.Load(),
		InvalidRequests: c.invalidRequests.Load(),
		InitialTimeouts: c.initialTimeouts.Load(),
		ListsSent:       c.listsSent.Load(),
		FallbacksSent:   c.fallbacksSent.Load(),
		BadClientStats:  c.badClientStats.Load(),
		StreamsExpired:  c.streamsExpired.Load(),
		Refused: LimitCounts{
			Streams:         c.refused[limitStreams].Load(),
			StreamsPerIP:    c.refused[limitStreamsPerIP].Load(),
			StreamsPerConn:  c.refused[limitStreamsPerConn].Load(),
			Conns:           c.refused[limitConns].Load(),
			ConnsPerIP:      c.refused[limitConnsPerIP].Load(),
			StreamRatePerIP: c.refused[limitStreamRatePerIP].Load(),
		},
		SlowReadersCut:     c.slowReadersCut.Load(),
		FloodingStreamsCut: c.floodsCut.Load(),
		UnknownServices:    c.unknownServices.Load(),
		ConnsOpen:          int64(s.conns.open()),
		ServicesWatched:    int64(s.reg.watched()),
		WatchesStarted:     s.reg.started.Load(),
		XDSNACKs:           s.xdsNACKs(),
	}
	if own := s.own.Load(); own != nil {
		ts := own.Stats()
		st.OwnConns, st.HandedOff, st.ProtocolErrors = ts.Conns, ts.HandedOff, ts.ProtocolErrors
	}
	return st
}

// Names returns the NameMapper the server maps client names with now (its
// aliases in canonical form; Reconfigure may change it). The DNS responder
// should map names with it, and call it again after a Reconfigure, so that
// aliases apply alike. Safe for concurrent use.
func (s *Server) Names() NameMapper { return s.live().names }

// ClientStats returns the registry of ClientStats received from clients.
func (s *Server) ClientStats() *clientstats.Registry { return s.clientStats }

// Close ends every stream (clients see the stream end cleanly and
// reconnect), waits for the handlers to return, and stops every watcher.
// Safe to call twice.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
		s.closeCtx()
	}
	s.mu.Unlock()
	for _, svc := range s.reg.all() {
		svc.wakeParked()
	}
	s.streams.Wait()
	s.reg.close()
}

// enter counts a new stream, or reports false once the server is closed.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.streams.Add(1)
	return true
}

// Endpoints returns the current endpoints of a service (its name is made
// canonical first), watching it (and keeping the watch warm for
// WatchLinger) if no stream does yet. For a service not watched before it
// waits for the first answer, up to FirstListTimeout or ctx; ok is false
// if none came. When the source is a discovery.Directory, a service it
// does not list starts no watch: the answer is an empty snapshot with ok
// true (no such service), or ok false while the directory has not been
// read yet (after waiting for it up to FirstListTimeout or ctx). For DNS
// answers and status pages. Safe for concurrent use.
func (s *Server) Endpoints(ctx context.Context, service string) (snap discovery.Snapshot, ok bool) {
	service = discovery.Canonical(service)
	timer := time.NewTimer(s.cfg.FirstListTimeout)
	defer timer.Stop()
	if s.dir != nil {
		base, _ := discovery.SplitName(service)
		for {
			exists, ready, changed := s.dir.Lookup(base)
			if exists {
				break
			}
			if ready {
				return discovery.Snapshot{Service: service}, true
			}
			select {
			case <-changed:
				continue
			case <-timer.C:
			case <-ctx.Done():
			case <-s.closing:
			}
			return discovery.Snapshot{}, false
		}
	}
	svc, err := s.reg.acquire(service)
	if err != nil {
		return discovery.Snapshot{}, false
	}
	defer s.reg.release(svc)
	p := svc.cur.Load()
	if !p.ready {
		select {
		case <-p.changed:
			p = svc.cur.Load()
		case <-timer.C:
		case <-ctx.Done():
		case <-s.closing:
		}
	}
	return p.snap, p.ready
}
