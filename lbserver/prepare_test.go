package lbserver

import (
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
)

// TestPlannerPreparesPerService: each plan holds its service's policy
// prepared with that service's options, and a stream's list from it is the
// one the policy gives in one step. Two services of one server with other
// list bounds get lists of their own bounds, whatever order they plan in.
func TestPlannerPreparesPerService(t *testing.T) {
	set := DefaultSettings()
	set.Policy = weightedroundrobin.Name
	set.Services = map[string]ServiceSettings{"short": {PolicyOptions: policy.Options{MaxEntries: 4}}}
	l, err := newLive(set, DefaultMaxNameLength)
	if err != nil {
		t.Fatal(err)
	}
	newPlanner := func(name string) *planner {
		svc := &service{name: name, assigned: map[string]int{}, attributed: map[string]float64{}, reconf: make(chan struct{}, 1)}
		svc.cur.Store(&plan{changed: make(chan struct{})})
		a, b := ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")
		a.Weight, b.Weight = 9, 1
		p := &planner{svc: svc, settings: func() *live { return l },
			log: slog.New(slog.DiscardHandler), ops: newServiceLog(slog.New(slog.DiscardHandler), time.Minute),
			stats: clientstats.New(clientstats.Config{}), now: time.Now, window: time.Second}
		p.snap, p.have = snap(name, a, b), true
		return p
	}
	long, short := newPlanner("long"), newPlanner("short")
	for _, p := range []*planner{long, short, long, short} {
		p.choosePolicy()
		p.plan(true, false)
	}
	for _, tc := range []struct {
		p       *planner
		entries int
	}{{long, 10}, {short, 4}} {
		pl := tc.p.svc.cur.Load()
		if pl.prepared == nil {
			t.Fatalf("%s: plan without a prepared policy", tc.p.svc.name)
		}
		for seed := range uint64(20) {
			in := policy.Input{Endpoints: pl.snap.Endpoints, Client: policy.Client{Seed: seed}}
			got := pl.prepared.List(in.Stream())
			if len(got) != tc.entries {
				t.Fatalf("%s, seed %d: %d entries, want %d", tc.p.svc.name, seed, len(got), tc.entries)
			}
			if diff := cmp.Diff(pl.policy.List(in), got); diff != "" {
				t.Fatalf("%s, seed %d: prepared list differs from the one-step list (-one step +prepared):\n%s", tc.p.svc.name, seed, diff)
			}
		}
	}
}
