package sourcehash

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func client(ip string) policy.Client { return policy.Client{Addr: netip.MustParseAddr(ip)} }

func TestList(t *testing.T) {
	abcd := policytest.Endpoints("a", "b", "c", "d")
	moved := policytest.Endpoints("a", "b", "c", "d")
	for i := range moved {
		moved[i].Addr = netip.MustParseAddrPort(fmt.Sprintf("192.0.2.%d:443", 10+i))
	}
	tests := []struct {
		name string
		k    int
		in   policy.Input
		want []int
	}{
		{"empty", 1, policy.Input{Client: client("10.0.0.1")}, []int{}},
		{"one", 1, policy.Input{Endpoints: policytest.Endpoints("a"), Client: client("10.0.0.1")}, []int{0}},
		{"client 1", 1, policy.Input{Endpoints: abcd, Client: client("10.0.0.1")}, []int{2}},
		{"client 2", 1, policy.Input{Endpoints: abcd, Client: client("10.0.0.2")}, []int{3}},
		{"client 3", 1, policy.Input{Endpoints: abcd, Client: client("10.0.0.3")}, []int{1}},
		{"IPv6 client", 1, policy.Input{Endpoints: abcd, Client: client("2001:db8::1")}, []int{1}},
		{"IPv4-mapped is IPv4", 1, policy.Input{Endpoints: abcd, Client: client("::ffff:10.0.0.1")}, []int{2}},
		{"zone ignored", 1, policy.Input{Endpoints: abcd, Client: client("2001:db8::1%eth0")}, []int{1}},
		{"seed ignored with an address", 1, policy.Input{Endpoints: abcd, Client: policy.Client{Addr: netip.MustParseAddr("10.0.0.1"), Seed: 9}}, []int{2}},
		{"keyed by ID, not address", 1, policy.Input{Endpoints: moved, Client: client("10.0.0.1")}, []int{2}},
		{"subset of 2", 2, policy.Input{Endpoints: abcd, Client: client("10.0.0.1")}, []int{2, 0}},
		{"subset of 2, client 2", 2, policy.Input{Endpoints: abcd, Client: client("10.0.0.2")}, []int{3, 2}},
		{"subset over the endpoints", 5, policy.Input{Endpoints: abcd, Client: client("10.0.0.1")}, []int{2, 0, 1, 3}},
		{"no address: seed 0", 2, policy.Input{Endpoints: abcd}, []int{0, 2}},
		{"no address: seed 2", 2, policy.Input{Endpoints: abcd, Client: policy.Client{Seed: 2}}, []int{1, 2}},
		{"weight counts", 1, policy.Input{Endpoints: policytest.Weighted(1, 100, 1, 1), Client: client("10.0.0.1")}, []int{1}},
		{"previous kept over better scores", 2, policy.Input{Endpoints: abcd, Client: client("10.0.0.1"), Previous: []string{"d", "b"}}, []int{3, 1}},
		// c scores highest for client 1, then a.
		{"previous partly gone", 2, policy.Input{Endpoints: abcd, Client: client("10.0.0.1"), Previous: []string{"z", "d"}}, []int{3, 2}},
		{"previous first gone", 1, policy.Input{Endpoints: abcd, Client: client("10.0.0.1"), Previous: []string{"z"}}, []int{2}},
		{"previous longer than k", 1, policy.Input{Endpoints: abcd, Client: client("10.0.0.1"), Previous: []string{"b", "d"}}, []int{1}},
		{"previous duplicates", 2, policy.Input{Endpoints: abcd, Client: client("10.0.0.1"), Previous: []string{"b", "b"}}, []int{1, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policytest.Indexes(sourceHash{k: tc.k}.List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBestFirst checks the subset against a plain sort by score.
func TestBestFirst(t *testing.T) {
	eps := policytest.Ramp(30)
	for i := range 200 {
		c := policy.Client{Addr: netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)})}
		k := 1 + i%12
		idx := make([]int, len(eps))
		for j := range idx {
			idx[j] = j
		}
		slices.SortStableFunc(idx, func(a, b int) int {
			sa, sb := score(eps[a], clientKey(c)), score(eps[b], clientKey(c))
			switch {
			case sa > sb:
				return -1
			case sa < sb:
				return 1
			}
			return 0
		})
		got := policytest.Indexes(sourceHash{k: k}.List(policy.Input{Endpoints: eps, Client: c}))
		if diff := cmp.Diff(idx[:k], got); diff != "" {
			t.Fatalf("client %v, k %d: (-want +got):\n%s", c.Addr, k, diff)
		}
	}
}

func TestSticky(t *testing.T) {
	policytest.CheckSticky(t, sourceHash{k: 1}, policytest.Weighted(3, 1, 2, 5, 1), 200)
	policytest.CheckSticky(t, sourceHash{k: 3}, policytest.Weighted(3, 1, 2, 5, 1), 200)
}

// clients returns n client addresses, consecutive from 10.0.0.0: the
// hardest case for a hash.
func clients(n int) []policy.Client {
	out := make([]policy.Client, n)
	for i := range out {
		out[i] = policy.Client{Addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}
	}
	return out
}

// firstIDs returns the ID of the first entry of each client's list.
func firstIDs(p policy.Policy, eps []discovery.Endpoint, cs []policy.Client, prev []string) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		var pr []string
		if prev != nil {
			pr = []string{prev[i]}
		}
		l := p.List(policy.Input{Endpoints: eps, Client: c, Previous: pr})
		out[i] = eps[l[0].Index].ID
	}
	return out
}

// TestRemap checks minimal disruption over 10 000 client addresses and 10
// endpoints. For new streams (no Previous): when an endpoint leaves, only
// its clients move; when one joins, only clients that move to it move, about
// 1/(N+1) of them. Both stay under 1.3/N. For existing streams (Previous
// set), a join moves nobody.
func TestRemap(t *testing.T) {
	const n = 10
	p := sourceHash{k: 1}
	cs := clients(10000)
	eps := policytest.Endpoints("e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9")
	before := firstIDs(p, eps, cs, nil)

	removed := slices.Delete(slices.Clone(eps), 3, 4)
	after := firstIDs(p, removed, cs, nil)
	moved := 0
	for i := range cs {
		if before[i] != after[i] {
			moved++
			if before[i] != "e3" {
				t.Fatalf("e3 left: client %v moved from %s to %s", cs[i].Addr, before[i], after[i])
			}
		} else if before[i] == "e3" {
			t.Fatalf("e3 left: client %v still on it", cs[i].Addr)
		}
	}
	frac := float64(moved) / float64(len(cs))
	t.Logf("one of %d endpoints left: %.4f of clients moved (ideal %.4f)", n, frac, 1.0/n)
	if frac > 1.3/n {
		t.Errorf("one of %d endpoints left: %.4f of clients moved, want ≤ %.4f", n, frac, 1.3/n)
	}

	joined := append(slices.Clone(eps), discovery.Endpoint{ID: "e10", Weight: 1})
	slices.SortFunc(joined, func(a, b discovery.Endpoint) int { return strings.Compare(a.ID, b.ID) })
	after = firstIDs(p, joined, cs, nil)
	moved = 0
	for i := range cs {
		if before[i] != after[i] {
			moved++
			if after[i] != "e10" {
				t.Fatalf("e10 joined: client %v moved from %s to %s", cs[i].Addr, before[i], after[i])
			}
		}
	}
	frac = float64(moved) / float64(len(cs))
	t.Logf("one endpoint joined %d: %.4f of clients moved (ideal %.4f)", n, frac, 1.0/(n+1))
	if frac > 1.3/n {
		t.Errorf("one endpoint joined %d: %.4f of clients moved, want ≤ %.4f", n, frac, 1.3/n)
	}

	sticky := firstIDs(p, joined, cs, before)
	if diff := cmp.Diff(before, sticky); diff != "" {
		t.Errorf("e10 joined: existing streams moved (-before +after):\n%s", diff)
	}
}

// TestFirstShares checks that over 10 000 client addresses endpoints are
// first in proportion to their weights, within 2 percentage points.
func TestFirstShares(t *testing.T) {
	p := sourceHash{k: 1}
	cs := clients(10000)
	for _, eps := range [][]discovery.Endpoint{policytest.Ramp(10), policytest.Weighted(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)} {
		firsts := make([]int, len(eps))
		for _, c := range cs {
			firsts[p.List(policy.Input{Endpoints: eps, Client: c})[0].Index]++
		}
		worst, at := policytest.MaxShareError(firsts, policytest.WeightShares(eps))
		t.Logf("firsts %v: worst share error %.4f (endpoint %d)", firsts, worst, at)
		if worst > 0.02 {
			t.Errorf("firsts %v: share of endpoint %d off by %.4f, want ≤ 0.02", firsts, at, worst)
		}
	}
}

func TestRegistered(t *testing.T) {
	o := policy.DefaultOptions()
	o.HashSubset = 3
	p, err := policy.Build(Name, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.List(policy.Input{Endpoints: policytest.Endpoints("a", "b", "c", "d"), Client: client("10.0.0.1")})); got != 3 {
		t.Errorf("built policy returned %d entries, want 3 (HashSubset)", got)
	}
}

func BenchmarkList(b *testing.B) {
	policytest.Benchmark(b, sourceHash{k: 1})
	b.Run("k=3", func(b *testing.B) { policytest.Benchmark(b, sourceHash{k: 3}) })
}
