package policy

import (
	"cmp"
	"math"
	"slices"

	"github.com/lookaside-lb/lookaside/discovery"
)

// MaxWeight is the largest weight EntryCounts and the weighted policies take
// into account; larger weights count as MaxWeight, and weights under 1 as 1.
const MaxWeight = math.MaxInt32

// ClampWeight returns w limited to [1, MaxWeight].
func ClampWeight(w int) int {
	return min(max(w, 1), MaxWeight)
}

// EntryCounts turns the weights of eps into how many entries each endpoint
// gets in a list of at most maxEntries entries: counts[i] is the count of
// eps[i], total their sum. Every endpoint gets at least one entry.
//
//   - Weights are divided by their greatest common divisor, so weights
//     10, 20, 30 give 1, 2, 3 entries.
//   - If the sum still exceeds maxEntries, counts are scaled down in
//     proportion, with a minimum of one entry: endpoints whose share would
//     be under one get exactly one, and the others share what is left in
//     proportion to their weights, rounded by largest remainder (Hamilton's
//     method) except that endpoints with equal remainders, as equal weights
//     have, are rounded alike: the rounding stops at a group of equal
//     remainders that does not fit. So each count is within one entry of
//     its proportional share, equal weights get equal counts, a heavier
//     endpoint never gets fewer entries than a lighter one, and total is at
//     most maxEntries. The result is reduced by its greatest common divisor
//     again.
//   - If there are at least maxEntries endpoints, each gets one entry and
//     total is len(eps): the bound yields to never dropping an endpoint.
//
// maxEntries is clamped to [1, MaxMaxEntries]. EntryCounts is pure, safe for
// concurrent use, and allocates counts (and, when it scales, one scratch
// slice).
func EntryCounts(eps []discovery.Endpoint, maxEntries int) (counts []int, total int) {
	n := len(eps)
	counts = make([]int, n)
	if n == 0 {
		return counts, 0
	}
	maxEntries = min(max(maxEntries, 1), MaxMaxEntries)
	if n >= maxEntries {
		for i := range counts {
			counts[i] = 1
		}
		return counts, n
	}
	g := 0
	for i, e := range eps {
		counts[i] = ClampWeight(e.Weight)
		g = gcd(g, counts[i])
	}
	sum := uint64(0) // at most n·MaxWeight: no overflow
	for i := range counts {
		counts[i] /= g
		sum += uint64(counts[i])
	}
	if sum <= uint64(maxEntries) {
		return counts, int(sum)
	}

	// Pin to one entry every endpoint whose proportional share of the
	// budget is under one. Pinning takes one entry from the budget for a
	// weight worth less than one, so the shares of the others shrink and
	// may pin more: repeat until nothing changes. Pinned counts are marked
	// negative meanwhile.
	budget, weight := uint64(maxEntries), sum
	for changed := true; changed; {
		changed = false
		for i, c := range counts {
			if c > 0 && uint64(c)*budget < weight {
				counts[i] = -1
				budget--
				weight -= uint64(c)
				changed = true
			}
		}
	}
	// Fewer than maxEntries endpoints were pinned (n < maxEntries), so
	// budget ≥ 1, and every unpinned share c·budget/weight is at least one.
	// c·budget < 2^31·2^15 does not overflow. Each gets its share rounded
	// down; what rounding left of the budget goes to the largest
	// remainders, a whole group of equal remainders at a time, so that
	// equal weights always get equal counts, until a group does not fit.
	type remainder struct {
		i int
		r uint64 // numerator over weight
	}
	var rest []remainder
	left := budget
	for i, c := range counts {
		if c < 0 {
			counts[i] = 1
			continue
		}
		p := uint64(c) * budget
		counts[i] = int(p / weight)
		left -= p / weight
		if r := p % weight; r != 0 {
			rest = append(rest, remainder{i, r})
		}
	}
	if left > 0 {
		slices.SortStableFunc(rest, func(a, b remainder) int { return cmp.Compare(b.r, a.r) })
		for len(rest) > 0 {
			end := 1
			for end < len(rest) && rest[end].r == rest[0].r {
				end++
			}
			if uint64(end) > left {
				break // skipping to smaller remainders could favour a lighter endpoint
			}
			for _, x := range rest[:end] {
				counts[x.i]++
			}
			left -= uint64(end)
			rest = rest[end:]
		}
	}
	g = 0
	for _, c := range counts {
		g = gcd(g, c)
	}
	for i := range counts {
		counts[i] /= g
		total += counts[i]
	}
	return counts, total
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
