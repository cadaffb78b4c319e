package all_test

import (
	"strings"
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

func TestBuildErrors(t *testing.T) {
	if _, err := policy.Build("no_such_policy", policy.DefaultOptions()); err == nil || !strings.Contains(err.Error(), "unknown policy") {
		t.Errorf("Build(no_such_policy) = %v, want an unknown policy error", err)
	}
	if _, err := policy.Build("round_robin", policy.Options{}); err == nil || !strings.Contains(err.Error(), "max entries") {
		t.Errorf("Build(round_robin, zero Options) = %v, want an invalid options error", err)
	}
}
