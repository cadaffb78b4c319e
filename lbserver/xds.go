package lbserver

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy/leastconn"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	"github.com/lookaside-lb/lookaside/policy/random"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
	"github.com/lookaside-lb/lookaside/policy/sourcehash"
	"github.com/lookaside-lb/lookaside/policy/weightedrandom"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
	"github.com/lookaside-lb/lookaside/xds"
)

// XDSFeed returns the feed the xDS face (package xds) serves from: the
// server's own services, mapped from the names xDS clients ask for as
// BalanceLoad streams map their initial request's name, watched through
// the same registry (and its limit on watched services), with the same
// plans. A Reconfigure that maps a subscribed name to another service
// moves its subscription there (xds.Mover), as it moves a BalanceLoad
// stream. The feed starts one goroutine at its first use, which follows
// the settings and the discovery Directory for all its subscriptions and
// ends when the server closes. Safe for concurrent use.
func (s *Server) XDSFeed() xds.Feed { return &xdsFeed{s: s} }

// xdsFeed is Server's xds.Feed.
type xdsFeed struct {
	s     *Server
	start sync.Once // starts follow

	anon atomic.Uint64 // the last stream number of Subscribe

	mu sync.Mutex
	// appeared is closed, and replaced, when the settings or the
	// directory change (see Appeared); guarded by mu.
	appeared chan struct{}
	// watches are the watchers of the feed's streams; guarded by mu
	// (their services' watchers are also guarded by the service's
	// watchMu, taken after mu).
	watches map[watchKey]*xdsSub
}

// begin starts the feed's goroutine (follow), once; not after the server
// closed (nothing is subscribed then).
func (f *xdsFeed) begin() {
	f.start.Do(func() {
		f.appeared = make(chan struct{})
		if !f.s.enter() {
			return
		}
		// Read before the first Subscribe maps a name, and before the
		// first Appeared channel is handed out, so that no change after
		// either is missed.
		set := f.s.live()
		go f.follow(set, f.dirChanged())
	})
}

// dirChanged returns the discovery Directory's change channel, nil
// without a Directory.
func (f *xdsFeed) dirChanged() <-chan struct{} {
	if f.s.dir == nil {
		return nil
	}
	_, _, changed := f.s.dir.Lookup("")
	return changed
}

// follow runs until the server closes, counted among its streams. When
// the settings change it wakes the subscriptions whose name the new
// settings map to another service (their streams then move them, see
// xdsName.Moved); when the settings or the directory change it closes the
// Appeared channel, so that streams subscribe again to names refused
// before. One goroutine for every subscription of the feed.
func (f *xdsFeed) follow(set *live, dir <-chan struct{}) {
	defer f.s.streams.Done()
	for {
		select {
		case <-set.changed:
			set = f.s.live()
			for _, svc := range f.s.reg.all() {
				svc.notifyMoved(set)
			}
		case <-dir:
		case <-f.s.closing:
			return
		}
		dir = f.dirChanged()
		f.mu.Lock()
		close(f.appeared)
		f.appeared = make(chan struct{})
		f.mu.Unlock()
	}
}

// Subscribe is SubscribeStream for a stream of its own: a subscription
// made here counts as one more stream on its service.
func (f *xdsFeed) Subscribe(name string, notify func()) (xds.Subscription, error) {
	return f.SubscribeStream(anonStreamBit|f.anon.Add(1), name, notify)
}

// anonStreamBit sets the streams of Subscribe apart from those the xds
// server numbers.
const anonStreamBit = 1 << 63

// SubscribeStream implements xds.StreamFeed: it maps name as a stream's
// initial request name is mapped and acquires its service. A name the
// discovery Directory does not list costs one lookup and starts no watch:
// the error wraps xds.ErrUnknown. A name that does not map, or a refusal
// of the registry (too many services, shutting down) is another error.
// notify is called after every plan the service publishes, and when new
// settings map name to another service, until Close returns. The
// subscriptions of one stream to one service share a watcher (an xDS
// client asks for every resource by the name it dials, but may dial two
// names of one service), so that a service's watchers are the streams
// that follow it.
// Does not block.
func (f *xdsFeed) SubscribeStream(stream uint64, name string, notify func()) (xds.Subscription, error) {
	f.begin()
	s := f.s
	set := s.live()
	svcName, err := set.names.Map(name)
	if err != nil {
		return nil, fmt.Errorf("lbserver: xds name %s: %w: %v", quote(name), xds.ErrUnknown, err)
	}
	if s.dir != nil {
		base, _ := discovery.SplitName(svcName)
		if exists, ready, _ := s.dir.Lookup(base); !exists && ready {
			s.counters.unknownServices.Add(1)
			return nil, fmt.Errorf("lbserver: xds name %s: service %s: %w", quote(name), quote(svcName), xds.ErrUnknown)
		}
	}
	svc, err := s.reg.acquire(svcName)
	if err != nil {
		if errors.Is(err, errTooManySvcs) {
			s.throttle.Warn("refusing xDS subscription: too many services watched", "service", quote(svcName), "max", s.cfg.MaxServices)
		}
		return nil, err
	}
	n := &xdsName{name: name}
	n.set.Store(set)
	key := watchKey{stream, svc}
	f.mu.Lock()
	w := f.watches[key]
	if w == nil {
		w = &xdsSub{feed: f, key: key, notify: notify, names: map[*xdsName]struct{}{}}
		if f.watches == nil {
			f.watches = map[watchKey]*xdsSub{}
		}
		f.watches[key] = w
	}
	n.w = w
	svc.watchMu.Lock()
	if svc.watchers == nil {
		svc.watchers = map[*xdsSub]struct{}{}
	}
	svc.watchers[w] = struct{}{}
	w.names[n] = struct{}{}
	svc.watchMu.Unlock()
	f.mu.Unlock()
	return n, nil
}

// watchKey is one stream's hold on one service.
type watchKey struct {
	stream uint64
	svc    *service
}

// xdsSub is one xDS stream's subscription to one service: the watcher
// that the service notifies of its plans, shared by the stream's names
// that map to it.
type xdsSub struct {
	feed   *xdsFeed
	key    watchKey
	notify func()
	// names are the stream's subscriptions through this watcher; guarded
	// by key.svc.watchMu.
	names map[*xdsName]struct{}
}

// xdsName is a subscription to one name of one stream (an
// xds.Subscription).
type xdsName struct {
	w    *xdsSub
	name string // as the client asked for it
	once sync.Once
	// set is the settings name was last found to map to the service with.
	set atomic.Pointer[live]
}

// Moved implements xds.Mover: whether the settings in force map the
// subscription's name to another service (or to none) than its own.
// Costs a load and a comparison while the settings are those it was
// mapped with. Safe for concurrent use.
func (x *xdsName) Moved() bool {
	set := x.w.feed.s.live()
	if x.set.Load() == set {
		return false
	}
	if svc, err := set.names.Map(x.name); err != nil || svc != x.w.key.svc.name {
		return true
	}
	x.set.Store(set)
	return false
}

// Assignment returns the assignment of the service's current plan, and
// false before its first answer. Safe for concurrent use.
func (x *xdsName) Assignment() (xds.Assignment, bool) {
	svc := x.w.key.svc
	p := svc.cur.Load()
	if !p.ready {
		return xds.Assignment{}, false
	}
	return p.xdsAssignment(svc.name), true
}

// Close gives the service back, and stops the notifications with the
// stream's last name on it. Safe to call twice.
func (x *xdsName) Close() {
	x.once.Do(func() {
		w := x.w
		f, svc := w.feed, w.key.svc
		f.mu.Lock()
		svc.watchMu.Lock()
		delete(w.names, x)
		last := len(w.names) == 0
		if last {
			delete(svc.watchers, w)
		}
		svc.watchMu.Unlock()
		if last {
			delete(f.watches, w.key)
		}
		f.mu.Unlock()
		f.s.reg.release(svc)
	})
}

// xdsStreams returns how many xDS streams follow the service. Safe for
// concurrent use.
func (s *service) xdsStreams() int {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	return len(s.watchers)
}

// notifyMoved calls the notify of every watcher with a name that set maps
// to another service (which does not block): its stream moves it.
func (s *service) notifyMoved(set *live) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for w := range s.watchers {
		for n := range w.names {
			if svc, err := set.names.Map(n.name); err != nil || svc != s.name {
				w.notify()
				break
			}
		}
	}
}

// notifyWatchers calls every watcher's notify (which does not block):
// once per stream.
func (s *service) notifyWatchers() {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for w := range s.watchers {
		w.notify()
	}
}

// xdsCache is a plan's xDS assignment, made once.
type xdsCache struct {
	once sync.Once
	a    xds.Assignment
}

// xdsAssignment returns the plan's assignment for service name (its
// canonical name), made on first use. Safe for concurrent use.
func (p *plan) xdsAssignment(name string) xds.Assignment {
	p.xds.once.Do(func() { p.xds.a = assignmentOf(name, p) })
	return p.xds.a
}

// xdsShape is what each policy becomes for an xDS client (see
// docs/xds.md); a policy not listed gets ShapeRoundRobin.
var xdsShape = map[string]xds.Shape{
	roundrobin.Name:         xds.ShapeRoundRobin,
	random.Name:             xds.ShapeRoundRobin,
	weightedroundrobin.Name: xds.ShapeWeighted,
	weightedrandom.Name:     xds.ShapeWeighted,
	leastload.Name:          xds.ShapeWeighted,
	sourcehash.Name:         xds.ShapeRingHash,
	leastconn.Name:          xds.ShapeLeastRequest,
}

// assignmentOf converts a ready plan into an xDS assignment: the shape of
// its policy, its endpoints (the first of those sharing an address; at
// most xds.MaxEndpoints) with their Consul weights, or under least_load
// the plan's load weights when it has them, and its drop share.
func assignmentOf(name string, p *plan) xds.Assignment {
	a := xds.Assignment{Cluster: name, Shape: xdsShape[p.policyName]}
	eps := p.snap.Endpoints
	var weights []uint32
	if p.policyName == leastload.Name && len(p.loadWeights) == len(eps) {
		weights = scaleWeights(p.loadWeights)
	}
	seen := make(map[netip.AddrPort]bool, len(eps))
	for i, ep := range eps {
		if len(a.Endpoints) == xds.MaxEndpoints {
			break
		}
		addr := netip.AddrPortFrom(ep.Addr.Addr().Unmap(), ep.Addr.Port())
		if seen[addr] || !addr.Addr().IsValid() || addr.Port() == 0 {
			continue
		}
		seen[addr] = true
		w := uint32(min(max(ep.Weight, 1), xds.MaxWeight))
		if weights != nil {
			w = weights[i]
		}
		a.Endpoints = append(a.Endpoints, xds.Endpoint{ID: ep.ID, Addr: addr, Weight: w})
	}
	if p.dropShare > 0 && p.dropToken != "" {
		a.Drops = []xds.Drop{{Category: p.dropToken, Share: min(p.dropShare, 1)}}
	}
	return a
}

// scaleWeights scales positive weights to integers in [1, xds.MaxWeight]
// keeping their ratios (the largest becomes xds.MaxWeight; one too small
// to keep its ratio becomes 1). Weights that are not positive numbers
// count as the smallest positive one; nil when none is.
func scaleWeights(ws []float64) []uint32 {
	lo, hi := math.Inf(1), 0.0
	for _, w := range ws {
		if w > 0 && !math.IsInf(w, 1) {
			lo, hi = min(lo, w), max(hi, w)
		}
	}
	if hi == 0 {
		return nil
	}
	out := make([]uint32, len(ws))
	for i, w := range ws {
		if !(w > 0) || math.IsInf(w, 1) {
			w = lo
		}
		out[i] = uint32(min(max(math.Round(w/hi*xds.MaxWeight), 1), xds.MaxWeight))
	}
	return out
}

// Appeared implements xds.Appearer: a channel closed when the discovery
// Directory or the settings change next (a refused name may then map to
// a service that exists). Does not block.
func (f *xdsFeed) Appeared() <-chan struct{} {
	f.begin()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.appeared
}
