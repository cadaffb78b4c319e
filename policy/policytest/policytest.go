// Package policytest helps test policies: endpoint fixtures, and a model of
// how grpc-go's grpclb client uses the server lists a policy builds.
//
// The model follows google.golang.org/grpc/balancer/grpclb (v1.85.0):
//
//   - With the default round_robin child, processServerList keeps the
//     non-drop entries in list order, duplicates included, and
//     regeneratePicker makes one ready SubConn per entry (duplicates share
//     a SubConn but appear once per entry). lbPicker then picks in two
//     layers: it walks the whole list from index 0 to decide drops, and
//     for a non-drop pick walks the ready SubConns from a random offset. So
//     an endpoint gets calls in proportion to its entries: duplicates are
//     extra picks.
//   - With the pick_first child, one SubConn gets every non-drop address in
//     list order and connects to the first that answers.
package policytest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Endpoints returns endpoints with the given IDs (which must be sorted), weight
// 1 and distinct loopback addresses.
func Endpoints(ids ...string) []discovery.Endpoint {
	out := make([]discovery.Endpoint, len(ids))
	for i, id := range ids {
		out[i] = discovery.Endpoint{ID: id, Addr: addr(i), Weight: 1}
	}
	return out
}

// Weighted returns one endpoint per weight, with IDs "e00", "e01", … (sorted
// up to 1000 endpoints) and distinct loopback addresses.
func Weighted(weights ...int) []discovery.Endpoint {
	out := make([]discovery.Endpoint, len(weights))
	for i, w := range weights {
		out[i] = discovery.Endpoint{ID: fmt.Sprintf("e%02d", i), Addr: addr(i), Weight: w}
	}
	return out
}

func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), 9000)
}

// Indexes returns the endpoint index of each entry, -1 for drops.
func Indexes(es []policy.Entry) []int {
	out := make([]int, len(es))
	for i, e := range es {
		if e.Drop {
			out[i] = -1
			continue
		}
		out[i] = e.Index
	}
	return out
}

// IDs returns the endpoint IDs of the non-drop entries of es, in order, as
// the balancer passes them back in Input.Previous.
func IDs(eps []discovery.Endpoint, es []policy.Entry) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		if !e.Drop {
			out = append(out, eps[e.Index].ID)
		}
	}
	return out
}

// RoundRobinClient models a grpc-go grpclb client with the round_robin
// child, every backend READY: its lbPicker.
type RoundRobinClient struct {
	list      []policy.Entry
	listNext  int   // starts at 0, as in newLBPicker
	ready     []int // endpoint index per non-drop entry, in list order
	readyNext int   // starts at a random offset, as in newLBPicker
	Picks     []int // calls per endpoint index
	DropCalls int   // calls failed by a drop entry
}

// NewRoundRobinClient returns a client that got list, for a service of n
// endpoints. offset plays the random start over the ready SubConns; it is
// taken modulo their number.
func NewRoundRobinClient(list []policy.Entry, n, offset int) *RoundRobinClient {
	c := &RoundRobinClient{list: list, Picks: make([]int, n)}
	for _, e := range list {
		if !e.Drop {
			c.ready = append(c.ready, e.Index)
		}
	}
	if len(c.ready) > 0 {
		c.readyNext = ((offset % len(c.ready)) + len(c.ready)) % len(c.ready)
	}
	return c
}

// Pick makes one call and counts where it went. It returns the endpoint
// index, or -1 for a dropped call.
func (c *RoundRobinClient) Pick() int {
	e := c.list[c.listNext]
	c.listNext = (c.listNext + 1) % len(c.list)
	if e.Drop {
		c.DropCalls++
		return -1
	}
	i := c.ready[c.readyNext]
	c.readyNext = (c.readyNext + 1) % len(c.ready)
	c.Picks[i]++
	return i
}

// PickFirst returns the endpoint a grpc-go grpclb client with the pick_first
// child connects to: the first non-drop entry whose endpoint is reachable
// (reachable nil means all are), or -1.
func PickFirst(list []policy.Entry, reachable func(index int) bool) int {
	for _, e := range list {
		if !e.Drop && (reachable == nil || reachable(e.Index)) {
			return e.Index
		}
	}
	return -1
}

// WeightShares returns each endpoint's share of the total weight.
func WeightShares(eps []discovery.Endpoint) []float64 {
	sum := 0
	for _, e := range eps {
		sum += e.Weight
	}
	out := make([]float64, len(eps))
	for i, e := range eps {
		out[i] = float64(e.Weight) / float64(sum)
	}
	return out
}

// MaxShareError returns the largest absolute difference between the share
// of counts[i] in the sum of counts and want[i] (a fraction, so 0.02 is two
// percentage points), and the index where it occurs.
func MaxShareError(counts []int, want []float64) (worst float64, at int) {
	sum := 0
	for _, c := range counts {
		sum += c
	}
	for i, c := range counts {
		if d := math.Abs(float64(c)/float64(sum) - want[i]); d > worst {
			worst, at = d, i
		}
	}
	return worst, at
}

// Ramp returns n endpoints as Weighted does, with weights 1, 2, 3, 4, 5, 1, …
func Ramp(n int) []discovery.Endpoint {
	w := make([]int, n)
	for i := range w {
		w[i] = 1 + i%5
	}
	return Weighted(w...)
}

// Calls simulates streams round_robin clients, with seeds 0, 1, …, each
// getting its list from p for eps and making picks calls; it returns the
// calls per endpoint. The clients' random SubConn offsets come from a PCG
// seeded with offsetSeed.
func Calls(p policy.Policy, eps []discovery.Endpoint, streams, picks int, offsetSeed uint64) []int {
	r := rand.New(rand.NewPCG(offsetSeed, 0))
	calls := make([]int, len(eps))
	for s := range streams {
		l := p.List(policy.Input{Endpoints: eps, Client: policy.Client{Seed: uint64(s)}})
		c := NewRoundRobinClient(l, len(eps), r.IntN(len(l)))
		for range picks {
			c.Pick()
		}
		for i, n := range c.Picks {
			calls[i] += n
		}
	}
	return calls
}

// Firsts simulates streams pick_first clients, with seeds 0, 1, …, each
// getting its list from p for eps; it returns how many connect to each
// endpoint.
func Firsts(p policy.Policy, eps []discovery.Endpoint, streams int) []int {
	firsts := make([]int, len(eps))
	for s := range streams {
		l := p.List(policy.Input{Endpoints: eps, Client: policy.Client{Seed: uint64(s)}})
		firsts[PickFirst(l, nil)]++
	}
	return firsts
}

// CheckFirstShares fails t unless, over streams pick_first clients (see
// Firsts), every endpoint of eps is first in proportion to its weight,
// within tol (a share, 0.02 for 2 percentage points).
func CheckFirstShares(t testing.TB, p policy.Policy, eps []discovery.Endpoint, streams int, tol float64) {
	t.Helper()
	firsts := Firsts(p, eps, streams)
	worst, at := MaxShareError(firsts, WeightShares(eps))
	t.Logf("%d endpoints: firsts %v: worst share error %.4f (endpoint %d)", len(eps), firsts, worst, at)
	if worst > tol {
		t.Errorf("firsts %v: share of endpoint %d off by %.4f, want ≤ %v", firsts, at, worst, tol)
	}
}

// Benchmark benchmarks p.List for Ramp(10) and Ramp(100), first lists of
// streams with varying seeds and client addresses.
func Benchmark(b *testing.B, p policy.Policy) {
	for _, n := range []int{10, 100} {
		eps := Ramp(n)
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			seed := uint64(0)
			for b.Loop() {
				seed++
				p.List(policy.Input{Endpoints: eps, Client: policy.Client{
					Addr: netip.AddrFrom4([4]byte{10, byte(seed >> 16), byte(seed >> 8), byte(seed)}),
					Seed: seed,
				}})
			}
		})
	}
}

// CheckSticky checks, for streams with seeds 0 to streams-1 and endpoints
// eps (at least three), that a stream keeps its first endpoint when another
// endpoint joins (with an ID that sorts between the others, so that indexes
// shift), when another leaves, and when another changes weight; and that
// when its first endpoint leaves, it moves to one that is there.
func CheckSticky(t testing.TB, p policy.Policy, eps []discovery.Endpoint, streams int) {
	t.Helper()
	for s := range uint64(streams) {
		c := policy.Client{Seed: s, Addr: netip.AddrFrom4([4]byte{10, 1, byte(s >> 8), byte(s)})}
		l := p.List(policy.Input{Endpoints: eps, Client: c})
		prev := IDs(eps, l)
		first := prev[0]
		fi := policy.IndexOf(eps, first)
		other := (fi + 1) % len(eps)

		joined := slices.Clone(eps)
		joined = slices.Insert(joined, 1, discovery.Endpoint{ID: eps[0].ID + "+", Addr: addr(999), Weight: 7})
		left := slices.Delete(slices.Clone(eps), other, other+1)
		reweighted := slices.Clone(eps)
		reweighted[other].Weight += 3
		for _, tc := range []struct {
			name string
			eps  []discovery.Endpoint
		}{{"joined", joined}, {"left", left}, {"reweighted", reweighted}} {
			nl := p.List(policy.Input{Endpoints: tc.eps, Client: c, Previous: prev})
			if got := IDs(tc.eps, nl)[0]; got != first {
				t.Errorf("seed %d: another endpoint %s: first entry %s, want %s kept", s, tc.name, got, first)
			}
		}

		gone := slices.Delete(slices.Clone(eps), fi, fi+1)
		nl := p.List(policy.Input{Endpoints: gone, Client: c, Previous: prev})
		if len(nl) == 0 {
			t.Fatalf("seed %d: first endpoint left: empty list", s)
		}
		if got := IDs(gone, nl)[0]; got == first {
			t.Errorf("seed %d: first endpoint %s left but is still first", s, first)
		}
	}
}
