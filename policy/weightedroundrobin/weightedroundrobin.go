// Package weightedroundrobin is the weighted_round_robin policy: each
// endpoint repeated by its weight, the entries smoothly interleaved, and the
// sequence rotated to a per-stream start.
//
// Weights become entry counts with policy.EntryCounts (reduced by their
// common divisor, scaled to fit Options.MaxEntries, at least one entry per
// endpoint). The entries are ordered by nginx's smooth weighted round robin
// (policy.Interleave):
// at each step every endpoint's current weight grows by its count, the
// endpoint with the largest current weight (the lowest index on a tie) is
// next, and its current weight drops by the total. The result spreads each
// endpoint's entries evenly through the list instead of grouping them:
// counts 5, 1, 1 give a a b a c a a, not a a a a a b c, and counts 1, 1, 1
// give a b c. On random weights (see policy.Interleave's tests), any stretch of consecutive
// entries, wrapping around the end included, holds each endpoint's share of
// the stretch to within two entries.
// Two entries of one endpoint still meet now and then, necessarily when its
// count is over half the total, and often where the list wraps around.
//
// Clients with the round_robin child call each endpoint in proportion to
// its entries, that is to its weight, and evenly over time. Clients with the
// pick_first child use the first entry; each stream's sequence starts at a
// position drawn uniformly from its Client.Seed (with a PCG generator), so
// across streams an endpoint is first in proportion to its entries.
//
// Stickiness: a stream keeps its first entry for as long as that endpoint
// stays: the sequence then starts at that endpoint's first entry at or
// after the stream's drawn position. When the first endpoint leaves, the
// stream starts at its drawn position. Existing clients are deliberately
// not rebalanced onto new endpoints, which would move pick_first clients
// off working connections; the weights of pick_first clients are met by new
// streams.
package weightedroundrobin

import (
	"math/rand/v2"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "weighted_round_robin"

// salt is the PCG's second seed word, so that policies given the same
// Client.Seed draw differently.
const salt = 0x77727272 // "wrrr"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string { return Name }
func (builder) Build(opts policy.Options) policy.Policy {
	return &wrr{maxEntries: opts.MaxEntries}
}

type wrr struct {
	maxEntries int
}

var _ policy.Policy = (*wrr)(nil)

// Prepare builds the smooth weighted round robin sequence of the endpoints,
// which every stream of the plan rotates. It takes O(len(Endpoints) ·
// entries) time.
func (p *wrr) Prepare(in policy.PlanInput) policy.Prepared {
	if len(in.Endpoints) == 0 {
		return prepared{}
	}
	counts, total := policy.EntryCounts(in.Endpoints, p.maxEntries)
	return prepared{eps: in.Endpoints, seq: policy.Interleave(counts, total)}
}

// List is Prepare(in.Plan()).List(in.Stream()), which builds the sequence
// for this one list. Safe for concurrent use.
func (p *wrr) List(in policy.Input) []policy.Entry {
	return p.Prepare(in.Plan()).List(in.Stream())
}

// prepared is weighted_round_robin's state for one plan.
type prepared struct {
	eps []discovery.Endpoint
	seq []policy.Entry // the interleaved sequence; read-only
}

// List returns the sequence rotated to start at the stream's previous
// first endpoint if it is still there (its first entry at or after the
// drawn position), else at a position drawn from the stream's seed. It
// takes O(entries) time. Safe for concurrent use.
func (p prepared) List(in policy.StreamInput) []policy.Entry {
	total := len(p.seq)
	if total == 0 {
		return nil
	}
	r := rand.New(rand.NewPCG(in.Client.Seed, salt))
	start := r.IntN(total)
	if f := in.PreviousFirst(p.eps); f >= 0 {
		for p.seq[start].Index != f {
			start = (start + 1) % total
		}
	}
	out := make([]policy.Entry, total)
	copy(out, p.seq[start:])
	copy(out[total-start:], p.seq[:start])
	return out
}
