package discovery

import (
	"context"
	"net/netip"
	"slices"
	"strings"
)

// Endpoint is one usable instance of a service. Values are immutable once
// published in a Snapshot.
type Endpoint struct {
	// ID identifies the instance across address changes (the Consul service
	// ID). It keys load-balance tokens and consistent hashing.
	ID string
	// Instance is the ID the instance knows itself by (its Consul service
	// ID, unique per agent only), from which its lb-token derives, so that
	// the balancer and the backend compute the same token even when two
	// nodes register the same service ID (ID then tells them apart).
	// Empty means ID.
	Instance string
	// Addr is the IP address and port clients dial. grpclb carries raw
	// 4- or 16-byte addresses, so it is always an IP, never a hostname.
	Addr netip.AddrPort
	// Weight is the relative weight of the instance, at least 1.
	Weight int
	// Meta is the instance's metadata (Consul service meta). May be nil.
	Meta map[string]string
}

// Equal reports whether e and o describe the same instance identically.
func (e Endpoint) Equal(o Endpoint) bool {
	if e.ID != o.ID || e.Instance != o.Instance || e.Addr != o.Addr || e.Weight != o.Weight || len(e.Meta) != len(o.Meta) {
		return false
	}
	for k, v := range e.Meta {
		if ov, ok := o.Meta[k]; !ok || ov != v {
			return false
		}
	}
	return true
}

// Snapshot is the set of usable endpoints of one service at one moment.
// It is immutable: sources build a new one for every change and consumers
// share it between goroutines without copying.
type Snapshot struct {
	// Service is the name that was watched.
	Service string
	// Endpoints are sorted by ID and unique by ID. Empty means the source
	// positively reported no usable instance (or no such service).
	Endpoints []Endpoint
	// Meta is service-level metadata shared by all instances, when the
	// source knows it (for Consul: the meta of the first instance). May be nil.
	Meta map[string]string
	// Index is the source's version of this data (Consul's X-Consul-Index);
	// zero for sources without one.
	Index uint64
}

// Equal reports whether s and o hold the same endpoints and metadata. Index
// is not compared: the same data under a new index is no change.
func (s Snapshot) Equal(o Snapshot) bool {
	if s.Service != o.Service || len(s.Meta) != len(o.Meta) {
		return false
	}
	for k, v := range s.Meta {
		if ov, ok := o.Meta[k]; !ok || ov != v {
			return false
		}
	}
	return slices.EqualFunc(s.Endpoints, o.Endpoints, Endpoint.Equal)
}

// SortEndpoints sorts eps by ID in place and drops later duplicates of an ID,
// returning the shortened slice. Sources call it before publishing.
func SortEndpoints(eps []Endpoint) []Endpoint {
	slices.SortStableFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.ID, b.ID) })
	return slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.ID == b.ID })
}

// Source watches services.
type Source interface {
	// Watch watches one service until ctx is done, calling publish with each
	// new snapshot, in order, from a single goroutine. The first call comes as
	// soon as the source has a first answer; later calls only when the data
	// changed. Watch blocks and returns ctx.Err() when ctx is done, or an
	// error if the service can never be watched (for example a bad name).
	// publish must not block for long. Safe for concurrent use for different
	// services.
	Watch(ctx context.Context, service string, publish func(Snapshot)) error
}

// Directory is implemented by sources that know which services exist
// without watching each one: a name nobody registered costs one lookup in
// a table, not a watch. Consumers check it before they Watch a name, so
// that clients naming random services cannot make the source open
// unbounded watches.
type Directory interface {
	// Lookup reports whether the service (a canonical base name, without
	// a tag filter; see Canonical) exists. ready is false until the
	// source has read its directory once; until then exists is false and
	// callers cannot tell, and should wait on changed. changed is closed
	// when the answer may have changed (the next read of the directory).
	// Safe for concurrent use; does not block.
	Lookup(service string) (exists, ready bool, changed <-chan struct{})
}

// TokenID returns the ID an endpoint's lb-token derives from: Instance, or
// ID when Instance is empty.
func (e Endpoint) TokenID() string {
	if e.Instance != "" {
		return e.Instance
	}
	return e.ID
}
