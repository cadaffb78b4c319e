// Package weightedrandom is the weighted_random policy: each endpoint
// repeated by its weight, the entries in an order drawn at random per
// stream.
//
// Weights become entry counts with policy.EntryCounts (reduced by their
// common divisor, scaled to fit Options.MaxEntries, at least one entry per
// endpoint). The entries are shuffled by a PCG generator seeded with the
// stream's Client.Seed, so the list is reproducible. Clients with the
// round_robin child call each endpoint in proportion to its entries, that
// is to its weight. Clients with the pick_first child use the first entry,
// which is any of the entries with equal chance: across streams, endpoints
// are first in proportion to their weights. Unlike weighted_round_robin the
// interleave is random, so an endpoint may have entries side by side.
//
// Stickiness: a stream keeps its first entry for as long as that endpoint
// stays (an entry of it is swapped to the front of the new draw); the rest
// is drawn afresh on every change. When the first endpoint leaves, the
// stream moves to the first of the new draw. Existing clients are
// deliberately not rebalanced onto new endpoints, which would move
// pick_first clients off working connections; the weights of pick_first
// clients are met by new streams.
package weightedrandom

import (
	"math/rand/v2"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "weighted_random"

// salt is the PCG's second seed word, so that policies given the same
// Client.Seed draw differently.
const salt = 0x7772616e646f6d // "wrandom"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string { return Name }
func (builder) Build(opts policy.Options) policy.Policy {
	return weightedRandom{maxEntries: opts.MaxEntries}
}

type weightedRandom struct {
	maxEntries int
}

var _ policy.Policy = weightedRandom{}

// Prepare computes the entry counts (policy.EntryCounts) and the entries
// in index order, which every stream shuffles a copy of. It takes
// O(len(Endpoints) + entries) time.
func (p weightedRandom) Prepare(in policy.PlanInput) policy.Prepared {
	if len(in.Endpoints) == 0 {
		return prepared{}
	}
	counts, total := policy.EntryCounts(in.Endpoints, p.maxEntries)
	base := make([]policy.Entry, 0, total)
	for i, c := range counts {
		for range c {
			base = append(base, policy.Entry{Index: i})
		}
	}
	return prepared{eps: in.Endpoints, base: base}
}

// List is Prepare(in.Plan()).List(in.Stream()). Safe for concurrent use.
func (p weightedRandom) List(in policy.Input) []policy.Entry {
	return p.Prepare(in.Plan()).List(in.Stream())
}

// prepared is weighted_random's state for one plan.
type prepared struct {
	eps  []discovery.Endpoint
	base []policy.Entry // each endpoint's entries, in index order; read-only
}

// List returns each endpoint repeated by its weight, shuffled by the
// stream's seed, with an entry of the stream's previous first endpoint
// swapped to the front if it is still there. It takes O(entries) time.
// Safe for concurrent use.
func (p prepared) List(in policy.StreamInput) []policy.Entry {
	if len(p.base) == 0 {
		return nil
	}
	total := len(p.base)
	out := make([]policy.Entry, total)
	copy(out, p.base)
	r := rand.New(rand.NewPCG(in.Client.Seed, salt))
	r.Shuffle(total, func(i, j int) { out[i], out[j] = out[j], out[i] })
	if f := in.PreviousFirst(p.eps); f >= 0 {
		at := 0
		for out[at].Index != f {
			at++
		}
		out[0], out[at] = out[at], out[0]
	}
	return out
}
