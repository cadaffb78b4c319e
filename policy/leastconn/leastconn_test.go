package leastconn

import (
	"fmt"
	"math/rand/v2"
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
		{"one", policy.Input{Endpoints: policytest.Endpoints("a"), Assigned: []int{4}}, []int{0}},
		{"not counted: seed 0", policy.Input{Endpoints: abcd}, []int{0, 1, 2, 3}},
		{"not counted: seed 5 rotates by 1", policy.Input{Endpoints: abcd, Client: policy.Client{Seed: 5}}, []int{1, 2, 3, 0}},
		{"fewest first", policy.Input{Endpoints: abcd, Assigned: []int{3, 1, 2, 0}}, []int{3, 1, 2, 0}},
		{"ties in the seed 0 rotation", policy.Input{Endpoints: abcd, Assigned: []int{1, 0, 0, 1}}, []int{1, 2, 0, 3}},
		{"ties in the seed 2 rotation", policy.Input{Endpoints: abcd, Assigned: []int{1, 0, 0, 1}, Client: policy.Client{Seed: 2}}, []int{2, 1, 3, 0}},
		{"short Assigned counts zero", policy.Input{Endpoints: abcd, Assigned: []int{5}}, []int{1, 2, 3, 0}},
		{"negative counts as zero", policy.Input{Endpoints: abcd, Assigned: []int{-3, 1, 1, 1}}, []int{0, 1, 2, 3}},
		// Loads per weight 1, 1, 1: a tie.
		{"per weight: tie", policy.Input{Endpoints: policytest.Weighted(2, 1, 1), Assigned: []int{2, 1, 1}}, []int{0, 1, 2}},
		// Loads per weight 1.5, 1, 2.
		{"per weight", policy.Input{Endpoints: policytest.Weighted(2, 1, 1), Assigned: []int{3, 1, 2}}, []int{1, 0, 2}},
		{"previous first kept though busiest", policy.Input{Endpoints: abcd, Assigned: []int{3, 1, 2, 0}, Previous: []string{"a", "b"}}, []int{0, 3, 1, 2}},
		{"previous first gone", policy.Input{Endpoints: abcd, Assigned: []int{3, 1, 2, 0}, Previous: []string{"z", "a"}}, []int{3, 1, 2, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policytest.Indexes(leastConn{}.List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSticky(t *testing.T) {
	policytest.CheckSticky(t, leastConn{}, policytest.Endpoints("a", "b", "c", "d", "e"), 200)
}

// TestLeastAssigned plays a balancer that counts first entries: clients come
// and go at random, an endpoint joins halfway, and each new pick_first
// client must go to an endpoint with the fewest clients per unit of weight.
// At the end, the clients are spread by weight to within one.
func TestLeastAssigned(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []int
	}{
		{"equal weights", []int{1, 1, 1, 1, 1}},
		{"weights", []int{1, 2, 3, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := policytest.Weighted(tc.weights...)
			eps := slices.Clone(all[:len(all)-1]) // the last joins later
			assigned := make(map[string]int)
			var streams []string // first endpoint ID per live stream
			r := rand.New(rand.NewPCG(5, 6))
			for step := range 4000 {
				if step == 2000 {
					eps = all
				}
				if len(streams) > 0 && r.IntN(3) == 0 {
					i := r.IntN(len(streams))
					assigned[streams[i]]--
					streams = slices.Delete(streams, i, i+1)
					continue
				}
				in := policy.Input{Endpoints: eps, Client: policy.Client{Seed: r.Uint64()}, Assigned: make([]int, len(eps))}
				for i, e := range eps {
					in.Assigned[i] = assigned[e.ID]
				}
				first := policytest.PickFirst(leastConn{}.List(in), nil)
				for i, e := range eps {
					// a/wa > b/wb would mean a less loaded endpoint was passed over.
					if in.Assigned[first]*e.Weight > in.Assigned[i]*eps[first].Weight {
						t.Fatalf("step %d: assigned %v: new client sent to %s, but %s has fewer per weight", step, in.Assigned, eps[first].ID, e.ID)
					}
				}
				assigned[eps[first].ID]++
				streams = append(streams, eps[first].ID)
			}
			// Arrivals always go to the least loaded, so loads per weight
			// end close together, the late joiner included; random
			// departures keep them from being exactly even.
			lo, hi := 1e9, 0.0
			for _, e := range all {
				l := float64(assigned[e.ID]) / float64(e.Weight)
				lo, hi = min(lo, l), max(hi, l)
			}
			t.Logf("%d streams, assigned %v", len(streams), assigned)
			if hi-lo > 3 {
				t.Errorf("assigned %v: loads per weight from %.1f to %.1f", assigned, lo, hi)
			}
		})
	}
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
	for _, n := range []int{10, 100} {
		eps := policytest.Ramp(n)
		assigned := make([]int, n)
		for i := range assigned {
			assigned[i] = (i * 7919) % 50
		}
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			seed := uint64(0)
			for b.Loop() {
				seed++
				leastConn{}.List(policy.Input{Endpoints: eps, Client: policy.Client{Seed: seed}, Assigned: assigned})
			}
		})
	}
}
