// Package clientstats aggregates the ClientStats that grpclb clients send
// on their balancer streams: per service, and per live client stream.
//
// grpclb clients report deltas since their last report: calls started,
// finished, failed to send, known received by a backend, and calls dropped by
// the balancer's drop entries, per drop token. grpc-go sends one report per
// client_stats_report_interval (and skips a report whose counts are all zero
// when the previous one was zero too); its counts are per ClientConn, so the
// first report on a new stream may hold calls from before it.
//
// Reports are not trusted as sent. Each stream has a budget of calls it can
// plausibly have started (Config.MaxCallRate per second, Config.Burst of it
// saved up), and a report claiming more is clamped to the budget; a stream
// sending reports faster than Config.MaxReportRate has the excess ignored;
// reports with negative counts are ignored. What the streams of one client
// address (an IPv4 address, an IPv6 /64) contribute together to the
// offered rate of a rate-limited service (Counters.Offered) is capped at
// Config.ShareRate(service) calls per second, Config.ShareBurst of it saved
// up, so that no one client, however many streams it opens, can drive a
// service's rate limit.
//
// Memory is bounded: per-client state lives as long as the stream (Forget),
// per-address state as long as one of its streams, per-service totals
// until ForgetService, and drop counts are kept only for
// the tokens this balancer issues (KnownDropTokens) plus one OtherDropToken
// bucket, never per client-supplied string.
package clientstats

import (
	"maps"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/policy"
)

// OtherDropToken is the key under which Counters.Dropped counts calls
// dropped with a token this balancer never issues.
const OtherDropToken = "other"

// KnownDropTokens are the drop tokens this balancer issues; Counters.Dropped
// keeps these and OtherDropToken only.
var KnownDropTokens = []string{policy.DropTokenOverload, policy.DropTokenRateLimit}

func dropKey(token string) string {
	switch token {
	case policy.DropTokenOverload:
		return policy.DropTokenOverload
	case policy.DropTokenRateLimit:
		return policy.DropTokenRateLimit
	}
	return OtherDropToken
}

// Counters are cumulative call counts, as accepted (after clamping).
type Counters struct {
	Reports       int64 // ClientStats messages accepted (clamped ones included)
	Started       int64
	Finished      int64
	FailedToSend  int64
	KnownReceived int64
	// Offered counts the started calls that count toward a rate limit:
	// Started with each stream's contribution capped at
	// Config.ShareRate. Equal to Started for a service without a cap.
	Offered int64
	// Dropped counts calls dropped by drop entries, per drop token: only
	// KnownDropTokens, and OtherDropToken for every other token.
	Dropped map[string]int64
}

func (c Counters) clone() Counters {
	c.Dropped = maps.Clone(c.Dropped)
	return c
}

// addSat adds b ≥ 0 to a without overflowing.
func addSat(a, b int64) int64 {
	if b > math.MaxInt64-a {
		return math.MaxInt64
	}
	return a + b
}

// add takes one accepted (clamped) report into c.
func (c *Counters) add(r *report) {
	c.Reports = addSat(c.Reports, 1)
	c.Started = addSat(c.Started, r.started)
	c.Finished = addSat(c.Finished, r.finished)
	c.FailedToSend = addSat(c.FailedToSend, r.failedToSend)
	c.KnownReceived = addSat(c.KnownReceived, r.knownReceived)
	c.Offered = addSat(c.Offered, r.offered)
	for i, n := range r.dropped {
		if n == 0 {
			continue
		}
		if c.Dropped == nil {
			c.Dropped = make(map[string]int64, len(dropKeys))
		}
		c.Dropped[dropKeys[i]] = addSat(c.Dropped[dropKeys[i]], n)
	}
}

// dropKeys are the keys of Counters.Dropped, in report.dropped order.
var dropKeys = append(slices.Clone(KnownDropTokens), OtherDropToken)

// report is one ClientStats message after clamping.
type report struct {
	started, finished, failedToSend, knownReceived, offered int64
	dropped                                                 [3]int64 // by dropKeys
}

// ClientKey identifies one client stream.
type ClientKey struct {
	Service string
	// Stream is unique per balancer stream for the process's lifetime.
	Stream uint64
	// Peer is the client's address as the balancer sees it.
	Peer string
}

// Config bounds what one stream's reports count for. The zero value bounds
// nothing (every count is taken as sent, but for negative ones).
type Config struct {
	// MaxCallRate is the most calls per second one stream is believed to
	// start. A stream may report at most MaxCallRate × the time since its
	// previous report, plus what it saved up to Burst; counts above that
	// are clamped to it. 0: no bound.
	MaxCallRate float64
	// Burst is how long a stream may save up its MaxCallRate allowance for
	// a late report; a new stream starts with a full Burst, for the calls
	// a client made before the stream (grpc-go counts per ClientConn).
	Burst time.Duration
	// MaxReportRate is how many reports per second one stream may send on
	// average, ReportBurst at once; reports beyond it are ignored. 0: no
	// bound.
	MaxReportRate float64
	ReportBurst   int
	// ShareRate returns the most calls per second the streams of service
	// from one client address (ClientKey.Peer's IPv4 address or IPv6 /64;
	// the whole Peer string when it does not parse) count for together in
	// Counters.Offered (0: no cap). Called once per stream, on its first
	// report. Nil: no cap.
	ShareRate func(service string) float64
	// ShareBurst is how long an address may save up its ShareRate. An
	// address with no live stream starts again with nothing saved, so
	// reconnecting does not raise what a client counts for: over any period
	// T the streams of one address count for at most
	// ShareRate × (T + ShareBurst).
	ShareBurst time.Duration
}

// Verdict is what Add did with a report.
type Verdict int

const (
	// Accepted: counted as sent.
	Accepted Verdict = iota
	// Clamped: counted, with the counts above the stream's allowance (see
	// Config.MaxCallRate) cut to it.
	Clamped
	// TooFrequent: ignored, the stream sent reports faster than
	// Config.MaxReportRate.
	TooFrequent
	// Invalid: ignored, a count was negative.
	Invalid
)

func (v Verdict) String() string {
	switch v {
	case Accepted:
		return "accepted"
	case Clamped:
		return "clamped"
	case TooFrequent:
		return "too frequent"
	case Invalid:
		return "invalid"
	}
	return "unknown"
}

// Result describes what Add did with one report.
type Result struct {
	Verdict Verdict
	// OtherTokens is how many entries named a drop token this balancer
	// does not issue (counted under OtherDropToken).
	OtherTokens int
	// ShareCapped: the stream offered more calls than Config.ShareRate
	// lets it count for in Counters.Offered; the excess was not counted
	// there.
	ShareCapped bool
	// Started is the calls started the report was counted for (after
	// clamping); 0 for an ignored report.
	Started int64
}

// bucket is a token bucket: tokens refill at a rate up to a capacity.
type bucket struct {
	tokens float64
	at     time.Time
}

// refill brings b to now and returns its tokens.
func (b *bucket) refill(now time.Time, rate, capacity float64) float64 {
	if d := now.Sub(b.at).Seconds(); d > 0 {
		b.tokens = min(b.tokens+d*rate, capacity)
		b.at = now
	}
	return b.tokens
}

// client is one live stream's state.
type client struct {
	Counters
	calls   bucket      // plausible calls
	reports bucket      // reports
	share   *shareState // of its address; nil without a cap
}

// shareKey is a client address of one service.
type shareKey struct {
	service, addr string
}

// shareState is what the streams of one address count for in the offered
// rate of their service.
type shareState struct {
	key    shareKey
	bucket bucket // calls counted toward the offered rate
	rate   float64
	live   int // streams
}

// addrOf returns the address a peer's share is kept under: its IPv4
// address, its IPv6 /64, or the whole string when it does not parse.
func addrOf(peer string) string {
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return peer
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// serviceState is one service's totals and how many live streams report to
// it.
type serviceState struct {
	Counters
	live int
}

// Registry holds the counters. The zero value is not usable; call New.
// Safe for concurrent use; no method blocks on I/O.
type Registry struct {
	cfg Config // guarded by mu (SetMaxCallRate changes it)

	mu       sync.Mutex
	services map[string]*serviceState // guarded by mu
	clients  map[ClientKey]*client    // guarded by mu
	shares   map[shareKey]*shareState // guarded by mu; only addresses with live streams
}

// New returns an empty Registry bounded by cfg.
func New(cfg Config) *Registry {
	return &Registry{cfg: cfg, services: map[string]*serviceState{}, clients: map[ClientKey]*client{}, shares: map[shareKey]*shareState{}}
}

// Add takes one ClientStats message from client k, received at now, and
// says what it did with it: see Verdict. Ignored reports change nothing
// (but the stream's report budget).
func (r *Registry) Add(k ClientKey, s *lbpb.ClientStats, now time.Time) Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := &r.cfg
	cc := r.clients[k]
	if cc == nil {
		cc = &client{}
		cc.calls = bucket{tokens: cfg.MaxCallRate * cfg.Burst.Seconds(), at: now}
		cc.reports = bucket{tokens: float64(cfg.ReportBurst), at: now}
		if cfg.ShareRate != nil {
			if rate := cfg.ShareRate(k.Service); rate > 0 {
				sk := shareKey{service: k.Service, addr: addrOf(k.Peer)}
				sh := r.shares[sk]
				if sh == nil {
					sh = &shareState{key: sk, bucket: bucket{at: now}, rate: rate}
					r.shares[sk] = sh
				}
				sh.live++
				cc.share = sh
			}
		}
		r.clients[k] = cc
		sc := r.services[k.Service]
		if sc == nil {
			sc = &serviceState{}
			r.services[k.Service] = sc
		}
		sc.live++
	}
	if cfg.MaxReportRate > 0 {
		if cc.reports.refill(now, cfg.MaxReportRate, float64(max(cfg.ReportBurst, 1))) < 1 {
			return Result{Verdict: TooFrequent}
		}
		cc.reports.tokens--
	}
	if !Validate(s) {
		return Result{Verdict: Invalid}
	}
	res := Result{Verdict: Accepted}
	allow := int64(math.MaxInt64)
	if cfg.MaxCallRate > 0 {
		allow = int64(cc.calls.refill(now, cfg.MaxCallRate, cfg.MaxCallRate*cfg.Burst.Seconds()))
	}
	clamp := func(n int64) int64 {
		if n > allow {
			res.Verdict = Clamped
			return allow
		}
		return n
	}
	var rep report
	rep.started = clamp(s.GetNumCallsStarted())
	rep.finished = clamp(s.GetNumCallsFinished())
	rep.failedToSend = clamp(s.GetNumCallsFinishedWithClientFailedToSend())
	rep.knownReceived = clamp(s.GetNumCallsFinishedKnownReceived())
	var dropped int64
	for _, d := range s.GetCallsFinishedWithDrop() {
		i := slices.Index(dropKeys, dropKey(d.GetLoadBalanceToken()))
		if i == len(dropKeys)-1 {
			res.OtherTokens++
		}
		n := min(d.GetNumCalls(), allow-dropped)
		if n < d.GetNumCalls() {
			res.Verdict = Clamped
		}
		dropped += n
		rep.dropped[i] += n
	}
	if cfg.MaxCallRate > 0 {
		cc.calls.tokens -= float64(max(rep.started, rep.finished, dropped))
	}
	rep.offered = rep.started
	if sh := cc.share; sh != nil {
		avail := int64(sh.bucket.refill(now, sh.rate, sh.rate*cfg.ShareBurst.Seconds()))
		rep.offered = min(rep.started, avail)
		res.ShareCapped = rep.offered < rep.started
		sh.bucket.tokens -= float64(rep.offered)
	}
	cc.add(&rep)
	r.services[k.Service].add(&rep)
	res.Started = rep.started
	return res
}

// SetMaxCallRate changes Config.MaxCallRate for the reports that follow
// (0: no bound). Streams keep the allowance they saved up, within the new
// Burst.
func (r *Registry) SetMaxCallRate(rate float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfg.MaxCallRate = rate
}

// Forget drops the per-client state of k; the service totals stay until
// ForgetService.
func (r *Registry) Forget(k ClientKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cc, ok := r.clients[k]
	if !ok {
		return
	}
	delete(r.clients, k)
	if sh := cc.share; sh != nil {
		if sh.live--; sh.live == 0 {
			delete(r.shares, sh.key)
		}
	}
	if sc := r.services[k.Service]; sc != nil {
		sc.live--
	}
}

// ForgetService drops the totals of service unless a live stream still
// reports to it, and reports whether it did. Call it when the service is
// no longer watched.
func (r *Registry) ForgetService(service string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	sc := r.services[service]
	if sc == nil || sc.live > 0 {
		return sc == nil
	}
	delete(r.services, service)
	return true
}

// Service returns a copy of the totals for one service.
func (r *Registry) Service(name string) Counters {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.services[name]; c != nil {
		return c.clone()
	}
	return Counters{}
}

// Services returns the names of services that have reported, sorted.
func (r *Registry) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.services))
}

// Client returns a copy of one live client's totals and whether it is known.
func (r *Registry) Client(k ClientKey) (Counters, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clients[k]; c != nil {
		return c.clone(), true
	}
	return Counters{}, false
}

// Len returns how many services, live clients and client addresses (of
// rate-limited services) the registry holds.
func (r *Registry) Len() (services, clients, addrs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.services), len(r.clients), len(r.shares)
}

// Validate reports whether s has no negative count.
func Validate(s *lbpb.ClientStats) bool {
	if s.GetNumCallsStarted() < 0 || s.GetNumCallsFinished() < 0 ||
		s.GetNumCallsFinishedWithClientFailedToSend() < 0 || s.GetNumCallsFinishedKnownReceived() < 0 {
		return false
	}
	for _, d := range s.GetCallsFinishedWithDrop() {
		if d.GetNumCalls() < 0 {
			return false
		}
	}
	return true
}
