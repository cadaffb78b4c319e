package weightedrandom

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func TestList(t *testing.T) {
	w312 := policytest.Weighted(3, 1, 2)
	tests := []struct {
		name string
		max  int
		in   policy.Input
		want []int
	}{
		{"empty", 512, policy.Input{}, []int{}},
		{"one", 512, policy.Input{Endpoints: policytest.Weighted(5)}, []int{0}},
		{"seed 0", 512, policy.Input{Endpoints: w312}, []int{0, 0, 0, 2, 1, 2}},
		{"seed 1", 512, policy.Input{Endpoints: w312, Client: policy.Client{Seed: 1}}, []int{0, 1, 2, 0, 2, 0}},
		{"seed 3", 512, policy.Input{Endpoints: w312, Client: policy.Client{Seed: 3}}, []int{2, 2, 0, 1, 0, 0}},
		// The entry of e01 at 4 is swapped with the first.
		{"previous first kept", 512, policy.Input{Endpoints: w312, Previous: []string{"e01", "e00"}}, []int{1, 0, 0, 2, 0, 2}},
		{"previous first gone", 512, policy.Input{Endpoints: w312, Previous: []string{"zz"}}, []int{0, 0, 0, 2, 1, 2}},
		{"bound scales", 4, policy.Input{Endpoints: w312}, []int{2, 0, 1, 0}},
		{"more endpoints than the bound", 3, policy.Input{Endpoints: policytest.Weighted(5, 1, 1, 1)}, []int{3, 1, 2, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policytest.Indexes(weightedRandom{maxEntries: tc.max}.List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEntries checks that every list holds each endpoint as many times as
// policy.EntryCounts says, whatever the seed.
func TestEntries(t *testing.T) {
	eps := policytest.Ramp(12)
	want, _ := policy.EntryCounts(eps, 20)
	for s := range uint64(100) {
		got := make([]int, len(eps))
		for _, e := range (weightedRandom{maxEntries: 20}).List(policy.Input{Endpoints: eps, Client: policy.Client{Seed: s}}) {
			got[e.Index]++
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("seed %d: entries per endpoint (-want +got):\n%s", s, diff)
		}
	}
}

func TestSticky(t *testing.T) {
	policytest.CheckSticky(t, weightedRandom{maxEntries: 512}, policytest.Weighted(3, 1, 2, 5, 1), 200)
}

// TestCallShares drives round_robin clients through the grpc-go picker
// model: one client making 10 000 calls, and 1 000 clients making 10 each
// from random SubConn offsets. Calls go to endpoints in proportion to their
// weights, within 2 percentage points.
func TestCallShares(t *testing.T) {
	p := weightedRandom{maxEntries: policy.DefaultMaxEntries}
	for _, tc := range []struct {
		name           string
		eps            []discovery.Endpoint
		streams, picks int
	}{
		{"one client", policytest.Weighted(1, 2, 3, 4, 5), 1, 10000},
		{"many clients", policytest.Weighted(1, 2, 3, 4, 5), 1000, 10},
		{"many clients, 20 endpoints", policytest.Ramp(20), 1000, 10},
	} {
		calls := policytest.Calls(p, tc.eps, tc.streams, tc.picks, 1)
		worst, at := policytest.MaxShareError(calls, policytest.WeightShares(tc.eps))
		t.Logf("%s: calls %v: worst share error %.4f (endpoint %d)", tc.name, calls, worst, at)
		if worst > 0.02 {
			t.Errorf("%s: calls %v: share of endpoint %d off by %.4f, want ≤ 0.02", tc.name, calls, at, worst)
		}
	}
}

// TestFirstShares checks what pick_first clients see: over 10 000 streams,
// endpoints are first in proportion to their weights, within 2 percentage
// points.
func TestFirstShares(t *testing.T) {
	for _, eps := range [][]discovery.Endpoint{policytest.Weighted(1, 2, 3, 4, 5), policytest.Ramp(20)} {
		policytest.CheckFirstShares(t, weightedRandom{maxEntries: policy.DefaultMaxEntries}, eps, 10000, 0.02)
	}
}

func TestRegistered(t *testing.T) {
	o := policy.DefaultOptions()
	o.MaxEntries = 4
	p, err := policy.Build(Name, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.List(policy.Input{Endpoints: policytest.Weighted(3, 1, 2)})); got != 4 {
		t.Errorf("built policy returned %d entries, want 4 (MaxEntries)", got)
	}
}

func BenchmarkList(b *testing.B) {
	policytest.Benchmark(b, weightedRandom{maxEntries: policy.DefaultMaxEntries})
}
