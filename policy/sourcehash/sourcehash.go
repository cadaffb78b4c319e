// Package sourcehash is the source_hash policy: each client gets the k
// endpoints that score highest for its IP address, so that clients keep
// going to the same backends (for their caches, or for session state).
//
// Scores come from weighted rendezvous hashing (highest random weight):
// for client address a and endpoint e, h = hash(e.ID, a) mapped into (0, 1)
// and score = -weight / ln(h). Rendezvous hashing rather than a hash ring
// because:
//
//   - there is no ring to build, store or keep in sync with the endpoints:
//     a list is a pure function of the endpoints and the address, and every
//     balancer replica computes the same one (the logarithm may differ in
//     its last bit between CPU architectures, which matters only for
//     near-ties);
//   - disruption is minimal: when an endpoint leaves, only the clients that
//     had it move, each to its next best; when one joins, only the clients
//     for which it scores highest move to it (a share equal to its weight
//     share, 1/(N+1) for equal weights), with no virtual nodes needed;
//   - the top-k subset comes for free, and has the same property;
//   - with the -weight/ln(h) score, an endpoint is a client's first choice
//     with probability equal to its share of the total weight, so Consul
//     weights count;
//   - it costs one hash and one logarithm per endpoint per list, O(n), which
//     is nothing next to sending the list for n up to a few hundred.
//
// Endpoints are keyed by Endpoint.ID, never by address, so a backend that
// restarts on a new address keeps its clients. Clients are keyed by
// Client.Addr with IPv4-mapped IPv6 addresses unmapped and zones dropped;
// clients behind one NAT share a subset. A stream whose address is unknown
// is keyed by its Client.Seed instead, so such clients spread at random
// rather than all landing on one subset.
//
// The list holds the k endpoints once each, best first (k is
// Options.HashSubset, clamped to the number of endpoints). Clients with the
// round_robin child spread their calls evenly over the k; clients with the
// pick_first child use the best and fail over along the rest in order.
//
// Stickiness: a stream keeps its subset, in order, for as long as its
// endpoints stay, even when a new endpoint would now score higher: existing
// clients are deliberately not rebalanced onto new endpoints, which would
// move pick_first clients off working connections. So a stream that has
// lived through changes may hold a different subset than a new stream from
// the same address would get. When endpoints of the subset leave, the
// remaining ones keep their order and the best scoring others fill in; if
// the first left, the next becomes first.
package sourcehash

import (
	"math"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
)

// Name is the policy's name in configuration.
const Name = "source_hash"

func init() { policy.Register(builder{}) }

type builder struct{}

func (builder) Name() string { return Name }
func (builder) Build(opts policy.Options) policy.Policy {
	return sourceHash{k: opts.HashSubset}
}

type sourceHash struct {
	k int
}

var _ policy.Policy = sourceHash{}

// Prepare hashes each endpoint's ID once (the part of its score that does
// not depend on the client). It takes O(total length of the IDs) time.
func (p sourceHash) Prepare(in policy.PlanInput) policy.Prepared {
	pr := &prepared{k: p.k, eps: in.Endpoints, prefix: make([]uint64, len(in.Endpoints)), weight: make([]float64, len(in.Endpoints))}
	for i, e := range in.Endpoints {
		pr.prefix[i] = idHash(e.ID)
		pr.weight[i] = float64(policy.ClampWeight(e.Weight))
	}
	return pr
}

// List is Prepare(in.Plan()).List(in.Stream()). Safe for concurrent use.
func (p sourceHash) List(in policy.Input) []policy.Entry {
	return p.Prepare(in.Plan()).List(in.Stream())
}

// prepared is source_hash's state for one plan. Read-only once made.
type prepared struct {
	k      int
	eps    []discovery.Endpoint
	prefix []uint64  // prefix[i] = idHash(eps[i].ID)
	weight []float64 // the clamped weight of eps[i]
}

// List returns the stream's sticky subset, filled up to k with the best
// scoring other endpoints for the client, best first. It takes
// O(len(Endpoints)·k) time at worst. Safe for concurrent use.
func (p *prepared) List(in policy.StreamInput) []policy.Entry {
	n := len(p.eps)
	if n == 0 {
		return nil
	}
	k := min(max(p.k, 1), n)
	out := make([]policy.Entry, 0, k)
	for _, id := range in.Previous {
		if len(out) == k {
			return out
		}
		if i := policy.IndexOf(p.eps, id); i >= 0 && !has(out, i) {
			out = append(out, policy.Entry{Index: i})
		}
	}
	kept := len(out)
	if kept == k {
		return out
	}

	// Keep the best k-kept of the others in out[kept:], sorted by
	// descending score, with their scores in best. The lower index wins a
	// tie, which takes a 2^-53 coincidence.
	ck := clientKey(in.Client)
	var buf [8]float64
	best := buf[:0]
	if m := k - kept; m > len(buf) {
		best = make([]float64, 0, m)
	}
	for i := range p.eps {
		if has(out[:kept], i) {
			continue
		}
		s := scoreFrom(p.prefix[i], p.weight[i], ck)
		full := len(out) == k
		if full && s <= best[len(best)-1] {
			continue
		}
		if !full {
			out = append(out, policy.Entry{})
			best = append(best, 0)
		}
		j := len(best) - 1
		for ; j > 0 && s > best[j-1]; j-- {
			best[j] = best[j-1]
			out[kept+j] = out[kept+j-1]
		}
		best[j] = s
		out[kept+j] = policy.Entry{Index: i}
	}
	return out
}

func has(es []policy.Entry, i int) bool {
	for _, e := range es {
		if e.Index == i {
			return true
		}
	}
	return false
}

// key is a client's hashing key: its address, or its seed when the address
// is unknown.
type key struct {
	b [17]byte
	n int
}

// clientKey returns c's hashing key.
func clientKey(c policy.Client) key {
	var k key
	if a := c.Addr.Unmap().WithZone(""); a.IsValid() {
		if a.Is4() {
			k.b[0] = 4
			v := a.As4()
			k.n = 1 + copy(k.b[1:], v[:])
		} else {
			k.b[0] = 6
			v := a.As16()
			k.n = 1 + copy(k.b[1:], v[:])
		}
		return k
	}
	k.b[0] = 's'
	for i := range 8 {
		k.b[1+i] = byte(c.Seed >> (8 * i))
	}
	k.n = 9
	return k
}

// FNV-1a's parameters.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// score returns endpoint e's rendezvous score for the client with key k:
// -weight/ln(h), h being the hash of e.ID and k mapped into (0, 1). Higher
// is better. The weight is limited to [1, policy.MaxWeight].
func score(e discovery.Endpoint, k key) float64 {
	return scoreFrom(idHash(e.ID), float64(policy.ClampWeight(e.Weight)), k)
}

// idHash is FNV-1a over id and a separator: the client-independent start
// of an endpoint's hash.
func idHash(id string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * fnvPrime
	}
	return (h ^ 0xff) * fnvPrime // no ID byte of valid UTF-8 is 0xff
}

// scoreFrom is score given idHash(e.ID) and e's clamped weight w.
func scoreFrom(prefix uint64, w float64, k key) float64 {
	// FNV-1a over the ID, a separator and the key, then MurmurHash3's
	// finalizer so that every input bit reaches every output bit.
	h := prefix
	for _, b := range k.b[:k.n] {
		h = (h ^ uint64(b)) * fnvPrime
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	u := (float64(h>>11) + 0.5) / (1 << 53) // in (0, 1)
	return -w / math.Log(u)
}
