// Package leastload is the least_load policy: each endpoint repeated in
// proportion to its load weight (policy.Input.LoadWeights, which the
// balancer computes from the endpoints' ORCA load reports with a
// loadweight.Weigher), the entries smoothly interleaved, and the endpoint
// with the lowest predicted load for one more client first.
//
// Entries: load weights are rounded to multiples of one hundredth of the
// smallest (finer differences are noise next to the Weigher's hysteresis),
// and then treated as weighted_round_robin treats Consul weights:
// policy.WeightCounts reduces them by their common divisor and scales them to
// at most Options.MaxEntries entries, at least one per endpoint, and
// policy.Interleave spreads each endpoint's entries evenly. Load weights
// 1.5, 0.5, 1 give 3, 1 and 2 entries: a c a b c a. Clients with the
// round_robin child call each endpoint in proportion to its load weight.
// Without usable load weights (Input.LoadWeights nil, of another length
// than Endpoints, or holding a value that is not positive and finite) the
// Consul weights (Endpoint.Weight) stand in for them.
//
// Latency outliers: the Weigher gives an endpoint much slower than its
// peers a probe share of about 0.5 % instead of its load weight (see
// package loadweight). It is then the smallest weight, worth 100 units;
// after the bound it keeps at least one entry, so the share its clients
// send it is the probe share or one entry of the list, whichever is more
// (with five endpoints, 3 of 511 entries; with 200, 1 of 399).
//
// First entry: clients with the pick_first child use only the first entry.
// It is the endpoint with the lowest predicted load once one more client
// joins it, (Assigned[i] + 1) / weight[i], where Assigned counts this
// balancer's streams whose first entry the endpoint is and weight is its
// load weight: least connections per unit of measured capacity. Ties go to
// the first in the rotation that starts at Client.Seed mod len(Endpoints),
// so that they spread across streams. When the balancer does not count
// (Input.Assigned nil), the first entry is drawn from the stream's seed as
// in weighted_round_robin, so that across streams an endpoint is first in
// proportion to its entries. The list is the interleaved sequence rotated
// to start at the chosen endpoint's first entry at or after a position
// drawn from the seed (so that round_robin clients do not all start in
// step).
//
// Stickiness: a stream keeps its first entry (Input.Previous) for as long
// as that endpoint stays, even when another has become less loaded:
// existing pick_first clients are not moved off working connections. Only
// this balancer's streams are counted: with several replicas each evens
// out its own clients.
package leastload

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "least_load"

// salt is the PCG's second seed word, so that policies given the same
// Client.Seed draw differently.
const salt = 0x6c6c6f64 // "llod"

// resolution is how many units the smallest load weight is worth when load
// weights are rounded to integers.
const resolution = 100

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string { return Name }
func (builder) Build(opts policy.Options) policy.Policy {
	return &leastLoad{maxEntries: opts.MaxEntries}
}

type leastLoad struct {
	maxEntries int
}

var _ policy.Policy = (*leastLoad)(nil)

// Prepare builds the interleaved sequence of the endpoints by load weight
// (or by Consul weight without usable load weights), which every stream of
// the plan rotates, and each endpoint's weight for the first-entry choice.
// It takes O(len(Endpoints) · entries) time.
func (p *leastLoad) Prepare(in policy.PlanInput) policy.Prepared {
	n := len(in.Endpoints)
	if n == 0 {
		return &prepared{}
	}
	lw := in.LoadWeights
	if !usable(lw, n) {
		lw = nil
	}
	pr := &prepared{eps: in.Endpoints, weight: make([]float64, n)}
	weights := make([]int, n)
	if lw != nil {
		lowest := slices.Min(lw)
		for i, w := range lw {
			weights[i] = int(math.Round(min(w/lowest*resolution, policy.MaxWeight)))
		}
		copy(pr.weight, lw)
	} else {
		for i, e := range in.Endpoints {
			weights[i] = e.Weight
			pr.weight[i] = float64(policy.ClampWeight(e.Weight))
		}
	}
	counts, total := policy.WeightCounts(weights, p.maxEntries)
	pr.seq = policy.Interleave(counts, total)
	return pr
}

// List is Prepare(in.Plan()).List(in.Stream()), which builds the sequence
// for this one list. Safe for concurrent use.
func (p *leastLoad) List(in policy.Input) []policy.Entry {
	return p.Prepare(in.Plan()).List(in.Stream())
}

// prepared is least_load's state for one plan. Read-only once made.
type prepared struct {
	eps    []discovery.Endpoint
	weight []float64      // weight[i]: the load weight of eps[i], or its clamped Consul weight
	seq    []policy.Entry // the interleaved sequence
}

// List returns the interleaved sequence rotated to start with the stream's
// previous first endpoint if it is still there, else with the endpoint of
// lowest predicted load. It takes O(len(Endpoints) + entries) time. Safe
// for concurrent use.
func (p *prepared) List(in policy.StreamInput) []policy.Entry {
	total := len(p.seq)
	if total == 0 {
		return nil
	}
	r := rand.New(rand.NewPCG(in.Client.Seed, salt))
	start := r.IntN(total)
	f := in.PreviousFirst(p.eps)
	if f < 0 && in.Assigned != nil {
		f = p.leastLoaded(in)
	}
	if f >= 0 {
		for p.seq[start].Index != f {
			start = (start + 1) % total
		}
	}
	out := make([]policy.Entry, total)
	copy(out, p.seq[start:])
	copy(out[total-start:], p.seq[:start])
	return out
}

// leastLoaded returns the endpoint with the lowest (Assigned[i] + 1) /
// weight[i], the first in the rotation from Seed mod n on a tie.
func (p *prepared) leastLoaded(in policy.StreamInput) int {
	n := len(p.eps)
	load := func(i int) float64 {
		if i >= len(in.Assigned) {
			return 1
		}
		return float64(max(in.Assigned[i], 0)) + 1
	}
	start := int(in.Client.Seed % uint64(n))
	best := start
	for j := 1; j < n; j++ {
		i := (start + j) % n
		// a/wa < b/wb ⇔ a·wb < b·wa, the weights being positive.
		if load(i)*p.weight[best] < load(best)*p.weight[i] {
			best = i
		}
	}
	return best
}

// usable reports whether lw holds one positive finite weight per endpoint.
func usable(lw []float64, n int) bool {
	if len(lw) != n {
		return false
	}
	for _, w := range lw {
		if !(w > 0) || math.IsInf(w, 1) {
			return false
		}
	}
	return true
}
