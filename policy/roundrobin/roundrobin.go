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

import "github.com/lookaside-lb/lookaside/policy"

// Name is the policy's name in configuration.
const Name = "round_robin"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string                       { return Name }
func (builder) Build(policy.Options) policy.Policy { return rr{} }

type rr struct{}

var _ policy.Policy = rr{}

// List returns every endpoint once, starting at the stream's previous first
// entry if it is still there, else at Seed mod len(Endpoints), and going on in
// ID order from there.
func (rr) List(in policy.Input) []policy.Entry {
	n := len(in.Endpoints)
	if n == 0 {
		return nil
	}
	start := -1
	if len(in.Previous) > 0 {
		start = policy.IndexOf(in.Endpoints, in.Previous[0])
	}
	if start < 0 {
		start = int(in.Client.Seed % uint64(n))
	}
	out := make([]policy.Entry, n)
	for i := range out {
		out[i] = policy.Entry{Index: (start + i) % n}
	}
	return out
}
