package xds

import (
	"bytes"
	"log/slog"
	"runtime"
	"sync"
	"weak"

	"google.golang.org/protobuf/types/known/anypb"
)

// cache holds the resources a Server made, marshalled, so that the streams
// serving the same content share one copy and a change costs one build,
// not one per stream: Listeners by name, Routes by name and what they
// route to, Clusters and ClusterLoadAssignments by the assignment they
// were made from. It holds them weakly: an entry lasts while a stream
// holds its resources, so clients' names cannot fill it. Safe for
// concurrent use.
type cache struct {
	// Read-only after newCache.
	lrs bool
	log *slog.Logger

	mu        sync.Mutex
	listeners map[string]weak.Pointer[anypb.Any]    // guarded by mu; by name
	routes    map[routeKey]weak.Pointer[anypb.Any]  // guarded by mu
	clusters  map[string]weak.Pointer[clusterBuild] // guarded by mu; by cluster name
}

// routeKey is what a Route is made from.
type routeKey struct {
	name, cluster string
	shape         Shape
}

// clusterBuild is the Cluster and ClusterLoadAssignment of one assignment.
// Immutable.
type clusterBuild struct {
	a            Assignment
	cluster, cla *anypb.Any // nil both when a is not valid (not served)
}

func newCache(lrs bool, log *slog.Logger) *cache {
	return &cache{
		lrs:       lrs,
		log:       log,
		listeners: map[string]weak.Pointer[anypb.Any]{},
		routes:    map[routeKey]weak.Pointer[anypb.Any]{},
		clusters:  map[string]weak.Pointer[clusterBuild]{},
	}
}

// listener returns the Listener named name.
func (c *cache) listener(name string) *anypb.Any {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.listeners[name].Value(); l != nil {
		return l
	}
	l := mustAny(Listener(name, name))
	store(c, c.listeners, name, l)
	return l
}

// route returns the RouteConfiguration named name that routes to cluster
// with shape.
func (c *cache) route(name, cluster string, shape Shape) *anypb.Any {
	k := routeKey{name, cluster, shape}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.routes[k].Value(); r != nil {
		return r
	}
	r := mustAny(Route(name, cluster, shape))
	store(c, c.routes, k, r)
	return r
}

// cluster returns the resources of a, made by the first stream to ask for
// them (under the lock, so that the streams a change wakes together wait
// for one build rather than each making its own). An assignment that is
// not valid is logged once and has none. A Cluster as it was for the
// previous assignment is kept, so that streams see it did not change.
func (c *cache) cluster(a Assignment) *clusterBuild {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.clusters[a.Cluster].Value()
	if old != nil && sameAssignment(old.a, a) {
		return old
	}
	b := &clusterBuild{a: a}
	if err := a.Validate(); err != nil {
		c.log.Error("xDS assignment not served", "name", a.Cluster, "err", err)
	} else {
		if old != nil && old.cluster != nil && old.a.Shape == a.Shape {
			b.cluster = old.cluster
		} else {
			b.cluster = mustAny(Cluster(a, c.lrs))
		}
		b.cla = mustAny(LoadAssignment(a))
	}
	store(c, c.clusters, a.Cluster, b)
	return b
}

// store puts a weak pointer to v in m under k, and has the entry removed
// once v is collected, unless k holds a newer v by then. c.mu must be
// held.
func store[K comparable, V any](c *cache, m map[K]weak.Pointer[V], k K, v *V) {
	m[k] = weak.Make(v)
	runtime.AddCleanup(v, func(k K) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if m[k].Value() == nil {
			delete(m, k)
		}
	}, k)
}

// sameAssignment reports whether x and y are the same assignment. An
// Assignment is immutable, so slices sharing their first element are
// equal without a look at the others: every stream of a service is
// handed the same slices until its next change.
func sameAssignment(x, y Assignment) bool {
	return x.Cluster == y.Cluster && x.Shape == y.Shape &&
		sameSlice(x.Endpoints, y.Endpoints) && sameSlice(x.Drops, y.Drops)
}

func sameSlice[T comparable](x, y []T) bool {
	if len(x) != len(y) {
		return false
	}
	if len(x) == 0 || &x[0] == &y[0] {
		return true
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// sameAny reports whether x and y are the same resource: the same made
// one, or equal bytes (as proto.Equal compares Anys).
func sameAny(x, y *anypb.Any) bool {
	if x == y {
		return true
	}
	return x != nil && y != nil && x.TypeUrl == y.TypeUrl && bytes.Equal(x.Value, y.Value)
}
