package xds

import (
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

func cacheEndpoints(n int) []Endpoint {
	out := make([]Endpoint, n)
	for i := range out {
		out[i] = Endpoint{ID: "e", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), Weight: 1}
	}
	return out
}

func TestCacheSharesWhatDidNotChange(t *testing.T) {
	var logs syncbuf.Buffer
	c := newCache(true, slog.New(slog.NewTextHandler(&logs, nil)))
	a := Assignment{Cluster: "svc", Endpoints: cacheEndpoints(3)}
	b1 := c.cluster(a)
	// Equal content in slices of its own is the same assignment.
	copied := a
	copied.Endpoints = slices.Clone(a.Endpoints)
	if b2 := c.cluster(copied); b2 != b1 {
		t.Fatal("an equal assignment was made again")
	}
	// An endpoint leaving: a new ClusterLoadAssignment, the same Cluster.
	less := a
	less.Endpoints = a.Endpoints[1:]
	b3 := c.cluster(less)
	if sameAny(b3.cla, b1.cla) {
		t.Error("the endpoints did not change")
	}
	if b3.cluster != b1.cluster {
		t.Error("the Cluster was made again for a change of endpoints")
	}
	// A shape change: a new Cluster.
	ring := less
	ring.Shape = ShapeRingHash
	if b4 := c.cluster(ring); sameAny(b4.cluster, b3.cluster) {
		t.Error("the Cluster did not change with the shape")
	}
	if c.listener("svc") != c.listener("svc") || c.route("svc", "svc", ShapeRoundRobin) != c.route("svc", "svc", ShapeRoundRobin) {
		t.Error("a Listener or Route was made again")
	}
	if sameAny(c.route("svc", "svc", ShapeRoundRobin), c.route("svc", "svc", ShapeRingHash)) {
		t.Error("the Route did not change with the shape")
	}
	// Not valid: nothing to serve, logged once however many streams ask.
	bad := Assignment{Cluster: "bad", Endpoints: []Endpoint{{ID: "x", Weight: 1}}}
	for range 10 {
		if b := c.cluster(bad); b.cla != nil || b.cluster != nil {
			t.Fatal("resources made for an assignment that is not valid")
		}
	}
	if n := strings.Count(logs.String(), "not served"); n != 1 {
		t.Errorf("%d log lines for one assignment that is not valid, want 1:\n%s", n, logs.String())
	}
}

// Entries go once no stream holds them: names clients make up do not
// stay.
func TestCacheForgetsWhatNoStreamHolds(t *testing.T) {
	c := newCache(false, slog.New(slog.DiscardHandler))
	for i := range 100 {
		name := "n" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		c.listener(name)
		c.route(name, "svc", ShapeRoundRobin)
	}
	c.cluster(Assignment{Cluster: "svc", Endpoints: cacheEndpoints(2)})
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		c.mu.Lock()
		n := len(c.listeners) + len(c.routes) + len(c.clusters)
		c.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left after no one held them", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
