package static

import (
	"context"
	"errors"
	"maps"

	"github.com/lookaside-lb/lookaside/discovery"
)

// MaxWeight is the largest endpoint weight accepted.
const MaxWeight = 10000

// Source is a discovery.Source over a fixed list. It is safe for concurrent
// use.
type Source struct {
	// Read-only after construction.
	snaps map[string]discovery.Snapshot
}

var _ discovery.Source = (*Source)(nil)

// New returns a Source serving services, which maps service names to their
// endpoints. New copies what it is given (later changes to the map, slices
// or meta maps are not seen), sorts each list by ID, keeps the first of
// endpoints sharing an ID, and clamps weights to 1–MaxWeight. Use ParseSpec
// or LoadFile for validated input.
func New(services map[string][]discovery.Endpoint) *Source {
	s := &Source{snaps: make(map[string]discovery.Snapshot, len(services))}
	for name, eps := range services {
		var cp []discovery.Endpoint
		for _, ep := range eps {
			ep.Weight = min(max(ep.Weight, 1), MaxWeight)
			if len(ep.Meta) == 0 {
				ep.Meta = nil
			} else {
				ep.Meta = maps.Clone(ep.Meta)
			}
			cp = append(cp, ep)
		}
		s.snaps[name] = discovery.Snapshot{Service: name, Endpoints: discovery.SortEndpoints(cp)}
	}
	return s
}

// Watch publishes the snapshot of service once (an empty one if the list
// does not name it) and blocks until ctx is done, then returns ctx.Err(). It
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
	snap, ok := s.snaps[service]
	if !ok {
		snap = discovery.Snapshot{Service: service}
	}
	publish(snap)
	<-ctx.Done()
	return ctx.Err()
}
