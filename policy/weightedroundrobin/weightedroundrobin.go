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
	"slices"
	"sync/atomic"

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
	// Read-only after construction.
	maxEntries int

	// last is the sequence built for the last counts seen. Streams of a
	// service all ask for the same counts after a change, so they share
	// one build; services that alternate just build again. Sequences are
	// never modified once stored.
	last atomic.Pointer[sequence]
}

type sequence struct {
	counts []int
	seq    []policy.Entry
}

var _ policy.Policy = (*wrr)(nil)

// List returns the smooth weighted round robin sequence of the endpoints,
// rotated to start at the stream's previous first endpoint if it is still
// there, else at a position drawn from the stream's seed. Building a
// sequence takes O(len(Endpoints) · entries) time; the last one is reused
// when the entry counts are the same, as they are for the streams of a
// service, leaving O(entries). Safe for concurrent use.
func (p *wrr) List(in policy.Input) []policy.Entry {
	if len(in.Endpoints) == 0 {
		return nil
	}
	counts, total := policy.EntryCounts(in.Endpoints, p.maxEntries)
	s := p.last.Load()
	if s == nil || !slices.Equal(s.counts, counts) {
		s = &sequence{counts: counts, seq: policy.Interleave(counts, total)}
		p.last.Store(s)
	}
	r := rand.New(rand.NewPCG(in.Client.Seed, salt))
	start := r.IntN(total)
	if f := in.PreviousFirst(); f >= 0 {
		for s.seq[start].Index != f {
			start = (start + 1) % total
		}
	}
	out := make([]policy.Entry, total)
	copy(out, s.seq[start:])
	copy(out[total-start:], s.seq[:start])
	return out
}
