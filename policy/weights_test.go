package policy_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func TestEntryCounts(t *testing.T) {
	tests := []struct {
		name      string
		weights   []int
		max       int
		want      []int
		wantTotal int
	}{
		{"none", nil, 512, []int{}, 0},
		{"equal", []int{1, 1, 1}, 512, []int{1, 1, 1}, 3},
		{"gcd", []int{10, 20, 30}, 512, []int{1, 2, 3}, 6},
		{"gcd 2", []int{4, 6}, 512, []int{2, 3}, 5},
		{"equal large weights", []int{100, 100}, 512, []int{1, 1}, 2},
		{"non-positive count as 1", []int{0, -5, 2}, 512, []int{1, 1, 2}, 4},
		{"huge weights clamped", []int{math.MaxInt, math.MaxInt32}, 512, []int{1, 1}, 2},
		{"exactly at the bound", []int{1, 2, 3}, 6, []int{1, 2, 3}, 6},
		// 1 and 2 have shares under one entry (0.5, then 18/19): one entry
		// each; 3 and 14 share the remaining 8 as 1.41 and 6.59.
		{"scaled with minimum one", []int{1, 2, 3, 14}, 10, []int{1, 1, 1, 7}, 10},
		// 255.5 each: the one entry left over is not given to just one.
		{"equal weights stay equal", []int{1000, 1000, 1}, 512, []int{255, 255, 1}, 511},
		// 3, 3, 2 scaled to 5: 1.875, 1.875, 1.25.
		{"largest remainders", []int{300, 300, 200}, 5, []int{2, 2, 1}, 5},
		// 4, 7 scaled to 6: 2.18, 3.82 → 2, 4 → reduced by 2.
		{"scaled then gcd", []int{4, 7}, 6, []int{1, 2}, 3},
		{"as many endpoints as the bound", []int{1, 2, 3}, 3, []int{1, 1, 1}, 3},
		{"more endpoints than the bound", []int{5, 1, 1, 1}, 3, []int{1, 1, 1, 1}, 4},
		{"bound below 1 counts as 1", []int{2, 3}, 0, []int{1, 1}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, total := policy.EntryCounts(policytest.Weighted(tc.weights...), tc.max)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("EntryCounts() counts mismatch (-want +got):\n%s", diff)
			}
			if total != tc.wantTotal {
				t.Errorf("EntryCounts() total = %d, want %d", total, tc.wantTotal)
			}
		})
	}
}

// TestEntryCountsInvariants checks random weights and bounds: at least one
// entry each, the bound kept unless there are more endpoints, equal weights
// equal counts, and counts within one entry of their share of the entries
// not taken by the minimum.
func TestEntryCountsInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		n := 1 + r.IntN(40)
		maxEntries := 1 + r.IntN(100)
		weights := make([]int, n)
		for i := range weights {
			weights[i] = 1 + r.IntN(1+r.IntN(1000))
		}
		counts, total := policy.EntryCounts(policytest.Weighted(weights...), maxEntries)
		sum, ones, wRest := 0, 0, 0
		for i, c := range counts {
			if c < 1 {
				t.Fatalf("weights %v, max %d: counts %v: endpoint %d has no entry", weights, maxEntries, counts, i)
			}
			sum += c
			if c == 1 {
				ones++
			} else {
				wRest += weights[i]
			}
		}
		if sum != total {
			t.Fatalf("weights %v, max %d: counts %v sum to %d, total %d", weights, maxEntries, counts, sum, total)
		}
		if n < maxEntries && total > maxEntries || n >= maxEntries && total != n {
			t.Fatalf("weights %v, max %d: total %d", weights, maxEntries, total)
		}
		for i := range weights {
			for j := range weights {
				if weights[i] == weights[j] && counts[i] != counts[j] {
					t.Fatalf("weights %v, max %d: counts %v: equal weights %d and %d differ", weights, maxEntries, counts, i, j)
				}
				if weights[i] < weights[j] && counts[i] > counts[j] {
					t.Fatalf("weights %v, max %d: counts %v: lighter %d has more than %d", weights, maxEntries, counts, i, j)
				}
			}
		}
		// Endpoints above one entry are within one entry of their share of
		// the entries left by those with one.
		if n < maxEntries && wRest > 0 {
			for i, c := range counts {
				if c == 1 {
					continue
				}
				share := float64(weights[i]) / float64(wRest) * float64(total-ones)
				if math.Abs(float64(c)-share) > 1 {
					t.Fatalf("weights %v, max %d: counts %v: endpoint %d has %d entries, share %.2f", weights, maxEntries, counts, i, c, share)
				}
			}
		}
	}
}
