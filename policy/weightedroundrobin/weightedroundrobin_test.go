package weightedroundrobin

import (
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func TestList(t *testing.T) {
	w312 := policytest.Weighted(3, 1, 2) // smooth sequence 0 2 0 1 2 0
	tests := []struct {
		name string
		max  int
		in   policy.Input
		want []int
	}{
		{"empty", 512, policy.Input{}, []int{}},
		{"one", 512, policy.Input{Endpoints: policytest.Weighted(5)}, []int{0}},
		{"equal weights", 512, policy.Input{Endpoints: policytest.Weighted(2, 2, 2)}, []int{2, 0, 1}},
		{"seed 0 starts at 5", 512, policy.Input{Endpoints: w312}, []int{0, 0, 2, 0, 1, 2}},
		{"seed 1 starts at 2", 512, policy.Input{Endpoints: w312, Client: policy.Client{Seed: 1}}, []int{0, 1, 2, 0, 0, 2}},
		{"seed 3 starts at 4", 512, policy.Input{Endpoints: w312, Client: policy.Client{Seed: 3}}, []int{2, 0, 1, 2, 0, 0}},
		{"previous first kept", 512, policy.Input{Endpoints: w312, Previous: []string{"e01", "e02"}}, []int{1, 2, 0, 0, 2, 0}},
		{"previous first gone", 512, policy.Input{Endpoints: w312, Previous: []string{"zz", "e01"}}, []int{0, 0, 2, 0, 1, 2}},
		// 3, 1, 2 in at most 4 entries: 2, 1, 1, sequence 0 1 2 0.
		{"bound scales", 4, policy.Input{Endpoints: w312}, []int{0, 0, 1, 2}},
		{"more endpoints than the bound", 3, policy.Input{Endpoints: policytest.Weighted(5, 1, 1, 1)}, []int{3, 0, 1, 2}},
		{"gcd", 512, policy.Input{Endpoints: policytest.Weighted(30, 10, 20)}, []int{0, 0, 2, 0, 1, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policytest.Indexes((&wrr{maxEntries: tc.max}).List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSticky(t *testing.T) {
	policytest.CheckSticky(t, &wrr{maxEntries: 512}, policytest.Weighted(3, 1, 2, 5, 1), 200)
}

// TestCallShares drives round_robin clients through the grpc-go picker
// model: one client making 10 000 calls, and 1 000 clients making 10 each
// from random SubConn offsets. Calls go to endpoints in proportion to their
// weights, within 2 percentage points.
func TestCallShares(t *testing.T) {
	p := &wrr{maxEntries: policy.DefaultMaxEntries}
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
		policytest.CheckFirstShares(t, &wrr{maxEntries: policy.DefaultMaxEntries}, eps, 10000, 0.02)
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
	policytest.Benchmark(b, &wrr{maxEntries: policy.DefaultMaxEntries})
}

// TestSharedSequence has goroutines ask one policy for lists of services
// with different weights at once: the shared sequence must never leak from
// one service into another's list.
func TestSharedSequence(t *testing.T) {
	p := &wrr{maxEntries: policy.DefaultMaxEntries}
	services := [][]discovery.Endpoint{policytest.Weighted(3, 1, 2), policytest.Weighted(1, 1, 4), policytest.Ramp(7)}
	want := make([][][]int, len(services))
	for i, eps := range services {
		for s := range uint64(50) {
			l := (&wrr{maxEntries: policy.DefaultMaxEntries}).List(policy.Input{Endpoints: eps, Client: policy.Client{Seed: s}})
			want[i] = append(want[i], policytest.Indexes(l))
		}
	}
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for round := range 200 {
				i := (g + round) % len(services)
				s := uint64(round % 50)
				got := policytest.Indexes(p.List(policy.Input{Endpoints: services[i], Client: policy.Client{Seed: s}}))
				if diff := cmp.Diff(want[i][s], got); diff != "" {
					t.Errorf("service %d, seed %d: List() mismatch (-want +got):\n%s", i, s, diff)
					return
				}
			}
		})
	}
	wg.Wait()
}
