package policy

import "github.com/lookaside-lb/lookaside/discovery"

// Interleave returns nginx's smooth weighted round robin sequence for
// counts, whose sum is total: total entries in which index i occurs
// counts[i] times, spread evenly. At each step every index's current weight
// grows by its count, the index with the largest current weight (the lowest
// on a tie) is next, and its current weight drops by total. So counts 5, 1,
// 1 give 0 0 1 0 2 0 0, not 0 0 0 0 0 1 2, and ties go to the lowest index:
// the sequence starts with the largest count.
//
// It takes O(len(counts) · total) time. Pure and safe for concurrent use.
func Interleave(counts []int, total int) []Entry {
	out := make([]Entry, total)
	current := make([]int, len(counts))
	for step := range out {
		best := 0
		for i, c := range counts {
			current[i] += c
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		out[step].Index = best
	}
	return out
}

// WeightCounts is EntryCounts for bare weights: weights[i] is the weight of
// the i-th item (values outside [1, MaxWeight] are clamped). It allocates a
// scratch slice of len(weights) endpoints besides what EntryCounts does.
func WeightCounts(weights []int, maxEntries int) (counts []int, total int) {
	eps := make([]discovery.Endpoint, len(weights))
	for i, w := range weights {
		eps[i].Weight = w
	}
	return EntryCounts(eps, maxEntries)
}
