package random

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func TestList(t *testing.T) {
	abcd := policytest.Endpoints("a", "b", "c", "d")
	tests := []struct {
		name string
		in   policy.Input
		want []int
	}{
		{"empty", policy.Input{}, []int{}},
		{"one", policy.Input{Endpoints: policytest.Endpoints("a")}, []int{0}},
		{"seed 0", policy.Input{Endpoints: abcd}, []int{1, 0, 3, 2}},
		{"seed 1", policy.Input{Endpoints: abcd, Client: policy.Client{Seed: 1}}, []int{1, 2, 0, 3}},
		{"seed 3", policy.Input{Endpoints: abcd, Client: policy.Client{Seed: 3}}, []int{3, 1, 0, 2}},
		{"weights ignored", policy.Input{Endpoints: policytest.Weighted(5, 1, 1, 1)}, []int{1, 0, 3, 2}},
		// c, last in the seed 0 order, moves to the front.
		{"previous first kept", policy.Input{Endpoints: abcd, Previous: []string{"c", "a"}}, []int{2, 1, 0, 3}},
		{"previous first gone", policy.Input{Endpoints: abcd, Previous: []string{"z", "c"}}, []int{1, 0, 3, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policytest.Indexes(randomPolicy{}.List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPermutation checks that every list holds each endpoint once.
func TestPermutation(t *testing.T) {
	eps := policytest.Ramp(9)
	for s := range uint64(200) {
		got := policytest.Indexes(randomPolicy{}.List(policy.Input{Endpoints: eps, Client: policy.Client{Seed: s}}))
		slices.Sort(got)
		if diff := cmp.Diff([]int{0, 1, 2, 3, 4, 5, 6, 7, 8}, got); diff != "" {
			t.Fatalf("seed %d: sorted entries (-want +got):\n%s", s, diff)
		}
	}
}

func TestSticky(t *testing.T) {
	policytest.CheckSticky(t, randomPolicy{}, policytest.Endpoints("a", "b", "c", "d", "e"), 200)
}

// TestFirstShares checks what pick_first clients see: over 10 000 streams,
// every endpoint is first equally often, within 2 percentage points.
func TestFirstShares(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")
	policytest.CheckFirstShares(t, randomPolicy{}, eps, 10000, 0.02)
}

func TestRegistered(t *testing.T) {
	p, err := policy.Build(Name, policy.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.List(policy.Input{Endpoints: policytest.Endpoints("a", "b")})); got != 2 {
		t.Errorf("built policy returned %d entries, want 2", got)
	}
}

func BenchmarkList(b *testing.B) {
	policytest.Benchmark(b, randomPolicy{})
}
