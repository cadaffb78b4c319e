package lbserver

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
)

// TestPlannerRateLimit: calls offered above a service's rate limit turn
// into a drop share, capped, which goes away when the rate falls.
func TestPlannerRateLimit(t *testing.T) {
	stats := clientstats.New(clientstats.Config{})
	p, clock := plannerFixture(stats, 10, 0.5, 5*time.Second)
	key := clientstats.ClientKey{Service: "svc", Stream: 1}
	step := func(d time.Duration, started int64) *plan {
		*clock = clock.Add(d)
		stats.Add(key, &lbpb.ClientStats{NumCallsStarted: started}, *clock)
		p.sampleRate()
		p.plan(false, false)
		return p.svc.cur.Load()
	}
	if got := step(0, 0).dropShare; got != 0 {
		t.Fatalf("drop share %v with one sample, want 0", got)
	}
	if got := step(time.Second, 8).dropShare; got != 0 {
		t.Fatalf("drop share %v at 8 calls/s under a limit of 10, want 0", got)
	}
	pl := step(time.Second, 92) // 100 calls in 2 s: 50/s
	if pl.dropShare != 0.5 || pl.dropToken != policy.DropTokenRateLimit {
		t.Fatalf("at 50 calls/s: share %v token %q, want the cap 0.5 with %q", pl.dropShare, pl.dropToken, policy.DropTokenRateLimit)
	}
	pl = step(time.Second, 0) // 100 calls in 3 s: 33/s → 1 − 10/33.3 = 0.7, capped
	if pl.dropShare != 0.5 {
		t.Fatalf("at 33 calls/s: share %v, want 0.5", pl.dropShare)
	}
	for range 6 { // the burst leaves the 5 s window
		pl = step(time.Second, 5)
	}
	if pl.dropShare != 0 {
		t.Fatalf("at 5 calls/s: share %v, want 0", pl.dropShare)
	}
}

// newTestPlanner returns a planner of service "svc" (two endpoints, round
// robin) with rate limit limit, whose stats are bounded as cfg says, and
// its clock.
func newTestPlanner(cfg Config, limit float64) (*planner, *clientstats.Registry, *time.Time) {
	cfg.Services = map[string]ServiceSettings{"svc": {RateLimit: limit}}
	l, err := newLive(cfg.Settings, cfg.MaxNameLength)
	if err != nil {
		panic(err)
	}
	stats := clientstats.New(clientStatsConfig(cfg, func() *live { return l }))
	p, now := plannerFixture(stats, limit, cfg.MaxRateLimitDropShare, max(2*cfg.ClientStatsInterval, 5*time.Second))
	return p, stats, now
}

// plannerFixture returns a planner of service "svc" (two endpoints, round
// robin) reading stats, with the given rate limit, cap on its drop share
// and measuring window, after its first plan; and its clock.
func plannerFixture(stats *clientstats.Registry, limit, maxDrop float64, window time.Duration) (*planner, *time.Time) {
	now := time.Unix(1000, 0)
	svc := &service{name: "svc", assigned: map[string]int{}, attributed: map[string]float64{}, reconf: make(chan struct{}, 1)}
	svc.cur.Store(&plan{changed: make(chan struct{})})
	set := DefaultSettings()
	set.Policy = roundrobin.Name
	set.Services = map[string]ServiceSettings{"svc": {RateLimit: limit, MaxRateLimitDropShare: maxDrop}}
	l, err := newLive(set, DefaultMaxNameLength)
	if err != nil {
		panic(err)
	}
	p := &planner{
		svc:       svc,
		settings:  func() *live { return l },
		log:       slog.New(slog.DiscardHandler),
		ops:       newServiceLog(slog.New(slog.DiscardHandler), time.Minute),
		stats:     stats,
		now:       func() time.Time { return now },
		rateLimit: limit,
		maxDrop:   maxDrop,
		window:    window,
	}
	p.snap, p.have = snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")), true
	p.choosePolicy()
	p.plan(true, false)
	return p, &now
}

// TestPlannerForgedStats: forgers sending 2^40 calls in every report, and
// flooding reports, raise the measured rate of a rate-limited service by
// at most 0.75 × limit per client address, however many streams it opens
// (defaults: share 0.5, interval 10 s, window 20 s). One forging address
// leaves the drop share of honest clients offering 20 % of the limit at 0;
// three can raise it to no more than 1 − limit / (20 + 3 × 75) = 0.59.
func TestPlannerForgedStats(t *testing.T) {
	const limit = 100.0
	tests := []struct {
		forgers      int     // addresses
		streams      int     // per forging address
		maxOffered   float64 // calls/s: 20 honest + forgers × 75
		maxDropShare float64
	}{
		{0, 0, 20, 0},
		{1, 1, 95, 0},
		{1, 50, 95, 0},
		{3, 1, 245, 1 - limit/245},
		{3, 20, 245, 1 - limit/245},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d addresses × %d streams", tc.forgers, tc.streams), func(t *testing.T) {
			cfg := DefaultConfig()
			p, stats, now := newTestPlanner(cfg, limit)
			var honest []clientstats.ClientKey
			for i := range 10 { // 10 honest clients at 2 calls/s each
				honest = append(honest, clientstats.ClientKey{Service: "svc", Stream: uint64(i + 1), Peer: fmt.Sprintf("10.0.0.%d:5000", i+1)})
			}
			var forgers []clientstats.ClientKey
			for i := range tc.forgers {
				for j := range tc.streams {
					forgers = append(forgers, clientstats.ClientKey{Service: "svc", Stream: uint64(100 + 100*i + j), Peer: fmt.Sprintf("10.6.6.%d:%d", i+1, 1000+j)})
				}
			}
			var maxOffered, maxShare float64
			start := *now
			for ms := 0; ms <= 120_000; ms += 100 {
				*now = start.Add(time.Duration(ms) * time.Millisecond)
				for i, k := range honest {
					// Each reports every 10 s, at its own offset.
					if ms%10_000 == i*1000 && ms > 0 {
						stats.Add(k, &lbpb.ClientStats{NumCallsStarted: 20, NumCallsFinished: 20, NumCallsFinishedKnownReceived: 20}, *now)
					}
				}
				for _, k := range forgers {
					stats.Add(k, &lbpb.ClientStats{NumCallsStarted: 1 << 40, NumCallsFinished: 1 << 40,
						CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{LoadBalanceToken: fmt.Sprint("x", ms), NumCalls: 1 << 40}}}, *now)
				}
				if ms%1000 == 0 {
					p.sampleRate()
					p.plan(false, false)
					maxOffered = max(maxOffered, p.offeredRate())
					maxShare = max(maxShare, p.svc.cur.Load().dropShare)
				}
			}
			t.Logf("measured rate at most %.1f calls/s, drop share at most %.3f", maxOffered, maxShare)
			if maxOffered > tc.maxOffered+1e-9 {
				t.Errorf("measured rate reached %.1f calls/s, want at most %.1f", maxOffered, tc.maxOffered)
			}
			if maxShare > tc.maxDropShare+1e-9 {
				t.Errorf("drop share reached %.3f, want at most %.3f", maxShare, tc.maxDropShare)
			}
			// Reporting steadily, a forger counts for share × limit = 50
			// calls/s; saving up one interval first gets it to 75.
			if steady := 20 + 50*float64(tc.forgers); maxOffered < steady-1 {
				t.Errorf("measured rate reached only %.1f calls/s, want about %.1f: are the forgers counted at all?", maxOffered, steady)
			}
			if got := stats.Service("svc").Dropped; len(got) > 3 {
				t.Errorf("%d drop tokens kept", len(got))
			}
		})
	}
}

// TestPlannerRateLimitDropShare: the rate-limit drop share is capped by
// MaxRateLimitDropShare, whatever LoadWeight.MaxDropShare (overload only)
// says, even 0.
func TestPlannerRateLimitDropShare(t *testing.T) {
	cfg := DefaultConfig()
	cfg.LoadWeight.MaxDropShare = 0
	cfg.MaxClientRateShare = 100
	cfg.MaxRateLimitDropShare = 0.8
	p, stats, now := newTestPlanner(cfg, 10)
	k := clientstats.ClientKey{Service: "svc", Stream: 1}
	stats.Add(k, &lbpb.ClientStats{}, *now)
	for range 30 { // 1000 calls/s offered against a limit of 10
		*now = now.Add(time.Second)
		stats.Add(k, &lbpb.ClientStats{NumCallsStarted: 1000}, *now)
		p.sampleRate()
		p.plan(false, false)
	}
	if pl := p.svc.cur.Load(); pl.dropShare != 0.8 || pl.dropToken != policy.DropTokenRateLimit {
		t.Errorf("share %v token %q, want 0.8 %q", pl.dropShare, pl.dropToken, policy.DropTokenRateLimit)
	}
}

// TestPlannerForgetsService: when the planner stops, the service's client
// stats totals go, unless a stream still reports to it.
func TestPlannerForgetsService(t *testing.T) {
	for _, live := range []bool{false, true} {
		p, stats, now := newTestPlanner(DefaultConfig(), 10)
		k := clientstats.ClientKey{Service: "svc", Stream: 1}
		stats.Add(k, &lbpb.ClientStats{NumCallsStarted: 1}, *now)
		if !live {
			stats.Forget(k)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		p.run(ctx, make(chan arrival))
		if got, want := stats.Services(), map[bool][]string{false: nil, true: {"svc"}}[live]; !slices.Equal(got, want) {
			t.Errorf("live stream %v: services %q after the planner stopped, want %q", live, got, want)
		}
	}
}
