// Package random is the random policy: every endpoint once, in an order
// drawn at random per stream.
//
// The order comes from a PCG generator seeded with the stream's
// Client.Seed, so it is reproducible. Clients with the round_robin child
// spread their calls evenly whatever the order. Clients with the pick_first
// child use the first entry, which is uniform over the endpoints across
// streams, as with round_robin; unlike round_robin the rest of the list is
// random too, so when a backend stops answering, its pick_first clients
// fail over to different backends rather than all to the next one in ID
// order.
//
// Stickiness: a stream keeps its first entry for as long as that endpoint
// stays; the rest of the list is drawn afresh on every change. When the
// first endpoint leaves, the stream moves to the first of a new draw. New
// endpoints get only new streams and streams that lose their first
// endpoint: existing clients are deliberately not rebalanced onto them,
// which would move pick_first clients off working connections.
package random

import (
	"math/rand/v2"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "random"

// salt is the PCG's second seed word, so that policies given the same
// Client.Seed draw differently.
const salt = 0x72616e646f6d // "random"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string                       { return Name }
func (builder) Build(policy.Options) policy.Policy { return randomPolicy{} }

type randomPolicy struct{}

var _ policy.Policy = randomPolicy{}

// Prepare keeps the endpoints: there is nothing to share between streams.
func (randomPolicy) Prepare(in policy.PlanInput) policy.Prepared {
	return prepared{eps: in.Endpoints}
}

// List is Prepare(in.Plan()).List(in.Stream()). Safe for concurrent use.
func (p randomPolicy) List(in policy.Input) []policy.Entry {
	return p.Prepare(in.Plan()).List(in.Stream())
}

// prepared is random's state for one plan.
type prepared struct {
	eps []discovery.Endpoint
}

// List returns every endpoint once in an order shuffled by the stream's
// seed, with the stream's previous first entry moved to the front if it is
// still there. Safe for concurrent use.
func (p prepared) List(in policy.StreamInput) []policy.Entry {
	n := len(p.eps)
	if n == 0 {
		return nil
	}
	out := make([]policy.Entry, n)
	for i := range out {
		out[i].Index = i
	}
	r := rand.New(rand.NewPCG(in.Client.Seed, salt))
	r.Shuffle(n, func(i, j int) { out[i], out[j] = out[j], out[i] })
	if f := in.PreviousFirst(p.eps); f >= 0 {
		at := 0
		for out[at].Index != f {
			at++
		}
		copy(out[1:at+1], out[:at])
		out[0] = policy.Entry{Index: f}
	}
	return out
}
