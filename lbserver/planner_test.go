package lbserver

import (
	"log/slog"
	"testing"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
)

// TestPlannerRateLimit: calls offered above a service's rate limit turn
// into a drop share, capped, which goes away when the rate falls.
func TestPlannerRateLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	stats := clientstats.New()
	svc := &service{name: "svc", assigned: map[string]int{}}
	svc.cur.Store(&plan{changed: make(chan struct{})})
	rr, _ := policy.Build(roundrobin.Name, policy.DefaultOptions())
	p := &planner{
		svc:       svc,
		choose:    func(discovery.Snapshot) (string, policy.Policy, string) { return roundrobin.Name, rr, "" },
		log:       slog.New(slog.DiscardHandler),
		stats:     stats,
		now:       func() time.Time { return now },
		rateLimit: 10,
		maxDrop:   0.5,
		window:    5 * time.Second,
	}
	p.snap, p.have = snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")), true
	p.choosePolicy()
	p.plan(true)
	key := clientstats.ClientKey{Service: "svc", Stream: 1}
	step := func(d time.Duration, started int64) *plan {
		now = now.Add(d)
		stats.Add(key, &lbpb.ClientStats{NumCallsStarted: started})
		p.sampleRate()
		p.plan(false)
		return svc.cur.Load()
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
