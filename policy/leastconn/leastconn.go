// Package leastconn is the least_connections policy: every endpoint once,
// the least loaded first, load being how many of this balancer's streams
// currently have the endpoint as their first entry (policy.Input.Assigned),
// per unit of weight.
//
// Clients with the pick_first child use the first entry, so each new
// pick_first client goes to the endpoint with the fewest such clients (per
// unit of weight): this evens out clients that connect in bursts, or live
// for very different times, better than round_robin's rotation. Clients
// with the round_robin child spread their calls evenly over the list
// whatever its order (Consul weights then do not count; use a weighted
// policy for that). Endpoints with equal load per weight are ordered by a
// rotation chosen by the stream's Client.Seed, as in round_robin, so that
// ties spread across streams. When the balancer does not count
// (Input.Assigned nil) every load is zero and the policy is round_robin.
//
// Only this balancer's streams are counted: with several balancer replicas
// each evens out its own clients.
//
// Stickiness: a stream keeps its first entry for as long as that endpoint
// stays, even when another has become less loaded: existing clients are
// deliberately not rebalanced, onto new endpoints or otherwise, which would
// move pick_first clients off working connections. A new endpoint gets new
// streams, and streams that lose their first endpoint, until its load
// catches up.
package leastconn

import (
	"cmp"
	"slices"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "least_connections"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string                       { return Name }
func (builder) Build(policy.Options) policy.Policy { return leastConn{} }

type leastConn struct{}

var _ policy.Policy = leastConn{}

// Prepare keeps the endpoints: the order depends on the counts, which
// change with every stream.
func (leastConn) Prepare(in policy.PlanInput) policy.Prepared {
	return prepared{eps: in.Endpoints}
}

// List is Prepare(in.Plan()).List(in.Stream()). Safe for concurrent use.
func (p leastConn) List(in policy.Input) []policy.Entry {
	return p.Prepare(in.Plan()).List(in.Stream())
}

// prepared is least_connections' state for one plan.
type prepared struct {
	eps []discovery.Endpoint
}

// List returns every endpoint once, the stream's previous first entry first
// if it is still there, the others by ascending Assigned/Weight, ties in the
// rotation that starts at Seed mod len(Endpoints). Safe for concurrent use.
func (p prepared) List(in policy.StreamInput) []policy.Entry {
	n := len(p.eps)
	if n == 0 {
		return nil
	}
	start := int(in.Client.Seed % uint64(n))
	out := make([]policy.Entry, n)
	for i := range out {
		out[i].Index = (start + i) % n
	}
	// a/wa < b/wb ⇔ a·wb < b·wa; counts and weights below 2^31 keep the
	// products in an int64. Ties go by position in the rotation.
	eps, assigned := p.eps, in.Assigned
	load := func(i int) int64 {
		if i >= len(assigned) {
			return 0
		}
		return int64(min(max(assigned[i], 0), 1<<31-1))
	}
	rot := func(i int) int { // position in the rotation
		if i < start {
			return i + n
		}
		return i
	}
	if len(assigned) > 0 { // else every load is zero: the rotation stands
		slices.SortFunc(out, func(x, y policy.Entry) int {
			lx := load(x.Index) * int64(policy.ClampWeight(eps[y.Index].Weight))
			ly := load(y.Index) * int64(policy.ClampWeight(eps[x.Index].Weight))
			if c := cmp.Compare(lx, ly); c != 0 {
				return c
			}
			return cmp.Compare(rot(x.Index), rot(y.Index))
		})
	}
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
