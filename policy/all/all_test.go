package all_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/policy"
	_ "github.com/lookaside-lb/lookaside/policy/all"
	"github.com/lookaside-lb/lookaside/policy/policytest"
	"github.com/lookaside-lb/lookaside/policy/sourcehash"
)

func TestNames(t *testing.T) {
	want := []string{"least_connections", "least_load", "random", "round_robin", "source_hash", "weighted_random", "weighted_round_robin"}
	if diff := cmp.Diff(want, policy.Names()); diff != "" {
		t.Errorf("Names() mismatch (-want +got):\n%s", diff)
	}
}

// TestEveryPolicy builds every policy with the default options and checks
// the contract of List: nil for no endpoints, else a non-empty list of valid
// indexes in which every endpoint appears (source_hash: k of them), the same
// for the same input.
func TestEveryPolicy(t *testing.T) {
	eps := policytest.Ramp(7)
	for _, name := range policy.Names() {
		t.Run(name, func(t *testing.T) {
			p, err := policy.Build(name, policy.DefaultOptions())
			if err != nil {
				t.Fatal(err)
			}
			if l := p.List(policy.Input{}); l != nil {
				t.Errorf("List(no endpoints) = %v, want nil", l)
			}
			for s := range uint64(20) {
				in := policy.Input{Endpoints: eps, Client: policy.Client{Seed: s}}
				l := p.List(in)
				seen := map[int]bool{}
				for _, e := range l {
					if e.Drop || e.Index < 0 || e.Index >= len(eps) {
						t.Fatalf("seed %d: bad entry %+v in %v", s, e, l)
					}
					seen[e.Index] = true
				}
				want := len(eps)
				if name == sourcehash.Name {
					want = policy.DefaultHashSubset
				}
				if len(seen) != want {
					t.Errorf("seed %d: list %v holds %d endpoints, want %d", s, policytest.Indexes(l), len(seen), want)
				}
				if diff := cmp.Diff(policytest.Indexes(l), policytest.Indexes(p.List(in))); diff != "" {
					t.Errorf("seed %d: second List() differs (-first +second):\n%s", s, diff)
				}
			}
		})
	}
}

// TestPrepared: for every policy, lists from a Prepared value shared by
// concurrent streams of alternating services equal the one-step List for
// the same input (previous lists, counts and load weights included), and a
// caller writing over its list does not change the next stream's.
func TestPrepared(t *testing.T) {
	services := []policy.Input{
		{Endpoints: policytest.Weighted(3, 1, 2), LoadWeights: []float64{1, 2.5, 0.5}},
		{Endpoints: policytest.Ramp(7)},
		{Endpoints: policytest.Weighted(1, 1, 4, 1)},
	}
	streams := func(in policy.Input, s uint64) policy.Input {
		in.Client = policy.Client{Seed: s}
		if s%3 == 1 {
			in.Previous = []string{in.Endpoints[int(s)%len(in.Endpoints)].ID, in.Endpoints[0].ID}
		}
		if s%2 == 0 {
			in.Assigned = make([]int, len(in.Endpoints))
			for i := range in.Assigned {
				in.Assigned[i] = int(s+uint64(i)) % 4
			}
		}
		return in
	}
	for _, name := range policy.Names() {
		t.Run(name, func(t *testing.T) {
			opts := policy.DefaultOptions()
			opts.HashSubset = 2
			p, err := policy.Build(name, opts)
			if err != nil {
				t.Fatal(err)
			}
			if l := p.Prepare(policy.PlanInput{}).List(policy.StreamInput{}); l != nil {
				t.Errorf("Prepare(no endpoints).List = %v, want nil", l)
			}
			prepared := make([]policy.Prepared, len(services))
			want := make([][][]int, len(services))
			for i, svc := range services {
				prepared[i] = p.Prepare(svc.Plan())
				for s := range uint64(30) {
					want[i] = append(want[i], policytest.Indexes(p.List(streams(svc, s))))
				}
			}
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for round := range 90 {
						i, s := (g+round)%len(services), uint64(round%30)
						l := prepared[i].List(streams(services[i], s).Stream())
						if diff := cmp.Diff(want[i][s], policytest.Indexes(l)); diff != "" {
							t.Errorf("service %d, seed %d: prepared list differs from List (-List +prepared):\n%s", i, s, diff)
							return
						}
						for j := range l {
							l[j].Index = -1
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

func TestBuildErrors(t *testing.T) {
	if _, err := policy.Build("no_such_policy", policy.DefaultOptions()); err == nil || !strings.Contains(err.Error(), "unknown policy") {
		t.Errorf("Build(no_such_policy) = %v, want an unknown policy error", err)
	}
	if _, err := policy.Build("round_robin", policy.Options{}); err == nil || !strings.Contains(err.Error(), "max entries") {
		t.Errorf("Build(round_robin, zero Options) = %v, want an invalid options error", err)
	}
}
