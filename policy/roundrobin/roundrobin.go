// Package roundrobin is the round_robin policy: every endpoint once, in a
// rotation that differs per stream.
//
// Clients with the round_robin child policy spread their calls evenly over
// the list whatever its order. Clients with the pick_first child use the
// first entry, so the rotation (chosen by the stream's seed) spreads those
// clients evenly over the endpoints. A stream keeps its first entry across
// endpoint changes for as long as that endpoint stays, so pick_first clients
// are not moved by changes elsewhere.
package roundrobin

import (
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "round_robin"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string                       { return Name }
func (builder) Build(policy.Options) policy.Policy { return rr{} }

type rr struct{}

var _ policy.Policy = rr{}

// Prepare keeps the endpoints: there is nothing to share between streams.
func (rr) Prepare(in policy.PlanInput) policy.Prepared { return prepared{eps: in.Endpoints} }

// List is Prepare(in.Plan()).List(in.Stream()). Safe for concurrent use.
func (p rr) List(in policy.Input) []policy.Entry { return p.Prepare(in.Plan()).List(in.Stream()) }

// prepared is round_robin's state for one plan.
type prepared struct {
	eps []discovery.Endpoint
}

// List returns every endpoint once, starting at the stream's previous first
// entry if it is still there, else at Seed mod len(Endpoints), and going on in
// ID order from there. Safe for concurrent use.
func (p prepared) List(in policy.StreamInput) []policy.Entry {
	n := len(p.eps)
	if n == 0 {
		return nil
	}
	start := in.PreviousFirst(p.eps)
	if start < 0 {
		start = int(in.Client.Seed % uint64(n))
	}
	out := make([]policy.Entry, n)
	for i := range out {
		out[i] = policy.Entry{Index: (start + i) % n}
	}
	return out
}
