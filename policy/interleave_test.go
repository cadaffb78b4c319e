package policy_test

import (
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func TestInterleave(t *testing.T) {
	tests := []struct {
		counts []int
		want   []int
	}{
		{[]int{1}, []int{0}},
		{[]int{1, 1, 1}, []int{0, 1, 2}},
		{[]int{1, 2}, []int{1, 0, 1}},
		{[]int{2, 1, 1}, []int{0, 1, 2, 0}},
		{[]int{3, 1, 2}, []int{0, 2, 0, 1, 2, 0}},
		{[]int{5, 1, 1}, []int{0, 0, 1, 0, 2, 0, 0}},
	}
	for _, tc := range tests {
		total := 0
		for _, c := range tc.counts {
			total += c
		}
		got := policytest.Indexes(policy.Interleave(tc.counts, total))
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Interleave(%v) mismatch (-want +got):\n%s", tc.counts, diff)
		}
	}
}

// TestInterleaveWindows checks that the sequence is smooth: any run of
// consecutive entries, around the end too (lists are rotated and clients
// wrap around), holds each endpoint's share of the run to within two
// entries. Grouped entries (a a a a a b c) would be off by up to
// count·(1-count/total).
func TestInterleaveWindows(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 3000 {
		counts := make([]int, 1+r.IntN(8))
		total := 0
		for i := range counts {
			counts[i] = 1 + r.IntN(1+r.IntN(20))
			total += counts[i]
		}
		seq := policy.Interleave(counts, total)
		for start := range total {
			seen := make([]int, len(counts))
			for l := 1; l <= total; l++ {
				seen[seq[(start+l-1)%total].Index]++
				for i, c := range counts {
					if d := float64(seen[i]) - float64(l*c)/float64(total); d >= 2 || d <= -2 {
						t.Fatalf("counts %v: sequence %v: from %d, %d entries hold %d of endpoint %d, share %.2f",
							counts, policytest.Indexes(seq), start, l, seen[i], i, float64(l*c)/float64(total))
					}
				}
			}
		}
	}
}

func TestWeightCounts(t *testing.T) {
	got, total := policy.WeightCounts([]int{4, 7, 0}, 6)
	// As EntryCounts: 0 counts as 1, whose share is under one entry; 4 and
	// 7 share the other 5 as 1.82 and 3.18.
	if diff := cmp.Diff([]int{2, 3, 1}, got); diff != "" || total != 6 {
		t.Errorf("WeightCounts() = %v, %d, want [2 3 1], 6 (-want +got):\n%s", got, total, diff)
	}
}
