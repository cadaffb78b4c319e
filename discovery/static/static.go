package static

import (
	"context"
	"errors"
	"maps"
	"strings"

	"github.com/lookaside-lb/lookaside/discovery"
)

// MaxWeight is the largest endpoint weight accepted.
const MaxWeight = 10000

// Source is a discovery.Source and discovery.Directory over a fixed list.
// Service names are matched in lower case, as Consul matches them. It is
// safe for concurrent use.
type Source struct {
	// Read-only after construction.
	snaps   map[string]discovery.Snapshot // by lowercase name
	changed chan struct{}                 // never closed: the list never changes
}

var (
	_ discovery.Source    = (*Source)(nil)
	_ discovery.Directory = (*Source)(nil)
)

// New returns a Source serving services, which maps service names to their
// endpoints. New copies what it is given (later changes to the map, slices
// or meta maps are not seen), sorts each list by ID, keeps the first of
// endpoints sharing an ID, and clamps weights to 1–MaxWeight. Names that
// differ only in case are one service (their endpoints are merged). Use
// ParseSpec or LoadFile for validated input.
func New(services map[string][]discovery.Endpoint) *Source {
	s := &Source{snaps: make(map[string]discovery.Snapshot, len(services)), changed: make(chan struct{})}
	for name, eps := range services {
		key := strings.ToLower(name)
		cp := s.snaps[key].Endpoints
		for _, ep := range eps {
			ep.Weight = min(max(ep.Weight, 1), MaxWeight)
			if len(ep.Meta) == 0 {
				ep.Meta = nil
			} else {
				ep.Meta = maps.Clone(ep.Meta)
			}
			cp = append(cp, ep)
		}
		s.snaps[key] = discovery.Snapshot{Service: key, Endpoints: discovery.SortEndpoints(cp)}
	}
	return s
}

// Lookup implements discovery.Directory: whether the list names service
// (in any case). The list is known from the start, so ready is always
// true, and changed is never closed. Safe for concurrent use; does not
// block.
func (s *Source) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	_, ok := s.snaps[strings.ToLower(service)]
	return ok, true, s.changed
}

// Watch publishes the snapshot of service once (an empty one if the list
// does not name it in any case; the snapshot carries the name as given) and blocks until ctx is done, then returns ctx.Err(). It
// returns an error at once for an empty service name or a nil publish.
func (s *Source) Watch(ctx context.Context, service string, publish func(discovery.Snapshot)) error {
	if service == "" {
		return errors.New("static: empty service name")
	}
	if publish == nil {
		return errors.New("static: Watch: nil publish func")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	snap, ok := s.snaps[strings.ToLower(service)]
	if !ok {
		snap = discovery.Snapshot{}
	}
	snap.Service = service
	publish(snap)
	<-ctx.Done()
	return ctx.Err()
}
