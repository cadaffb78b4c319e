package policy_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func entries(indexes ...int) []policy.Entry {
	out := make([]policy.Entry, len(indexes))
	for i, x := range indexes {
		out[i].Index = x
	}
	return out
}

func TestAddDrops(t *testing.T) {
	const D = -1 // a drop in policytest.Indexes
	tests := []struct {
		name    string
		entries []int
		share   float64
		max     int
		want    []int
	}{
		{"no share", []int{0, 1, 2}, 0, 512, []int{0, 1, 2}},
		{"negative share", []int{0, 1, 2}, -0.3, 512, []int{0, 1, 2}},
		{"NaN share", []int{0, 1, 2}, math.NaN(), 512, []int{0, 1, 2}},
		{"half", []int{0, 1}, 0.5, 512, []int{0, D, 1, D}},
		// The drop comes after round(k·1/3) = 1, at k = 2.
		{"quarter", []int{0, 1, 2}, 0.25, 512, []int{0, 1, D, 2}},
		// One drop in 3 would be a quarter: repeated 4 times, 3 in 15 is
		// exact.
		{"repeated for precision", []int{0, 1, 2}, 0.2, 512, []int{0, 1, D, 2, 0, 1, 2, D, 0, 1, 2, 0, D, 1, 2}},
		// 1 drop in 19 (r = 9) is the first within 0.005 of 0.05.
		{"small share", []int{1, 0}, 0.05, 512, []int{1, 0, 1, 0, 1, 0, 1, 0, 1, D, 0, 1, 0, 1, 0, 1, 0, 1, 0}},
		// Even 510 entries hold 0.255 drops: none.
		{"share too small for the bound", []int{0, 1, 2}, 0.0005, 512, []int{0, 1, 2}},
		// Within the bound 10, 2 entries repeat at most 4 times: 0 drops
		// in 2, 1 in 5, 1 in 7 and 1 in 9; 1 in 7 is closest to 0.15.
		{"closest within the bound", []int{0, 1}, 0.15, 10, []int{0, 1, 0, D, 1, 0, 1}},
		{"three quarters", []int{0}, 0.75, 512, []int{0, D, D, D}},
		// 5, 1, 1 thinned to 4 (2, 1, 1): the first and third of
		// endpoint 0's five entries stay.
		{"thinned to the bound", []int{0, 0, 1, 0, 2, 0, 0}, 0.5, 8, []int{0, D, 1, D, 0, D, 2, D}},
		// One entry per endpoint already exceeds the bound: every endpoint
		// stays, with as many drops as entries.
		{"more endpoints than the bound", []int{2, 0, 1, 3}, 0.5, 3, []int{2, D, 0, D, 1, D, 3, D}},
		{"crowded beyond one half drops less", []int{0, 1}, 0.9, 3, []int{0, D, 1, D}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policy.AddDrops(entries(tc.entries...), tc.share, policy.DropTokenOverload, tc.max)
			if diff := cmp.Diff(tc.want, policytest.Indexes(got)); diff != "" {
				t.Errorf("AddDrops(%v, %v) mismatch (-want +got):\n%s", tc.entries, tc.share, diff)
			}
			for _, e := range got {
				if e.Drop && e.DropToken != policy.DropTokenOverload {
					t.Errorf("drop entry %+v, want token %q", e, policy.DropTokenOverload)
				}
			}
		})
	}
}

func TestAddDropsLargeShares(t *testing.T) {
	got := policy.AddDrops(entries(0, 1), 2, policy.DropTokenRateLimit, 512)
	drops := 0
	for _, e := range got {
		if e.Drop {
			drops++
		}
	}
	// Capped at 0.99: 198 drops and 2 entries.
	if len(got) != 200 || drops != 198 {
		t.Errorf("AddDrops(share 2) gave %d entries, %d drops; want 200, 198", len(got), drops)
	}
}

func TestAddDropsKeepsInputWithoutDrops(t *testing.T) {
	in := entries(0, 1, 2)
	if got := policy.AddDrops(in, 0, policy.DropTokenOverload, 512); &got[0] != &in[0] {
		t.Error("AddDrops(share 0) copied the list, want it returned as is")
	}
}

func TestDropTokens(t *testing.T) {
	for _, tok := range []string{policy.DropTokenOverload, policy.DropTokenRateLimit} {
		if len(tok) >= 50 || len(tok) < 3 || tok[:3] == "be-" {
			t.Errorf("drop token %q: want under 50 bytes, not starting with be-", tok)
		}
	}
}

// TestAddDropsInvariants checks random lists, shares up to one half and
// bounds: the share within 1/len (when drops were added or the list was
// within the bound), no drop first or next to another, the
// first entry kept, every endpoint kept, the bound kept when the endpoints
// fit, and, when the list was not thinned, each endpoint's entries a whole
// multiple of its entries before.
func TestAddDropsInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for range 5000 {
		u := 1 + r.IntN(12)
		var in []policy.Entry
		for i := range u {
			for range 1 + r.IntN(1+r.IntN(6)) {
				in = append(in, policy.Entry{Index: i})
			}
		}
		r.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
		share := r.Float64() * 0.5
		maxEntries := 1 + r.IntN(200)
		out := policy.AddDrops(in, share, policy.DropTokenOverload, maxEntries)

		drops := 0
		counts := make([]int, u)
		for i, e := range out {
			if e.Drop {
				drops++
				if i == 0 || out[i-1].Drop {
					t.Fatalf("in %v, share %.3f, max %d: out %v: drop at %d", policytest.Indexes(in), share, maxEntries, policytest.Indexes(out), i)
				}
				continue
			}
			counts[e.Index]++
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("in %v, share %.4f, max %d: out %v: "+format, append([]any{policytest.Indexes(in), share, maxEntries, policytest.Indexes(out)}, args...)...)
		}
		// A list over the bound is thinned before drops are counted, and
		// returned whole when none fits.
		if got := float64(drops) / float64(len(out)); (drops > 0 || len(in) <= maxEntries) && math.Abs(got-share) > 1/float64(len(out)) {
			fail("share %.4f, want within 1/%d of the asked one", got, len(out))
		}
		if out[0] != in[0] {
			fail("first entry %+v, want %+v", out[0], in[0])
		}
		for i, c := range counts {
			if c == 0 {
				fail("endpoint %d lost", i)
			}
		}
		if len(in) <= maxEntries && u <= int(float64(maxEntries)*(1-share)) && len(out) > maxEntries {
			fail("%d entries, over the bound", len(out))
		}
		if float64(len(in)) <= float64(maxEntries)*(1-share) {
			before := make([]int, u)
			for _, e := range in {
				before[e.Index]++
			}
			reps := counts[0] / before[0]
			for i := range counts {
				if counts[i] != reps*before[i] {
					fail("endpoint %d has %d entries, want %d×%d", i, counts[i], reps, before[i])
				}
			}
		}
	}
}

func BenchmarkAddDrops(b *testing.B) {
	for _, n := range []int{10, 100} {
		in := make([]policy.Entry, n)
		for i := range in {
			in[i].Index = i
		}
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				policy.AddDrops(in, 0.3, policy.DropTokenOverload, policy.DefaultMaxEntries)
			}
		})
	}
}
