package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
)

// StaticBalancers is a fixed list of balancer replicas, for deployments
// without Consul. It is a Balancers that never blocks.
type StaticBalancers []netip.AddrPort

var _ Balancers = StaticBalancers(nil)

// Balancers returns the list; ok is always true.
func (s StaticBalancers) Balancers(context.Context) ([]netip.AddrPort, bool) { return s, true }

// lastGroupWindow: when no replica passes, Replicas answers with those that
// stopped passing within this long of the last one.
const lastGroupWindow = time.Minute

// Replicas follows the balancer replicas registered as one service of a
// discovery source: in Consul, the passing instances of the service that
// `lbserver -register` registers under (-register-service). Create it with
// NewReplicas and run it with Run. Safe for concurrent use.
//
// Once it has known a replica, Replicas never answers with none: when no
// replica passes, it answers with the last ones to stop passing (every
// replica that stopped within a minute of the last one). A grpclb client
// that resolves the name then still gets balancer addresses: it tries
// them, uses its fallback addresses after its fallback timeout (10 s in
// grpc-go), re-resolves every 30 s or so while it cannot reach them, and
// leaves fallback as soon as a balancer answers. Given no balancer address,
// a client goes to fallback at once and stays there until it resolves the
// name again, which nothing prompts while its fallback backends answer.
type Replicas struct {
	// Read-only after construction.
	src     discovery.Source
	service string
	log     *slog.Logger
	now     func() time.Time

	ready   chan struct{} // closed at the first answer
	running atomic.Bool

	mu      sync.Mutex
	passing []netip.AddrPort             // guarded by mu; sorted
	gone    map[netip.AddrPort]time.Time // guarded by mu: when each stopped passing
}

var _ Balancers = (*Replicas)(nil)

// NewReplicas returns Replicas following service in src, logging to log
// (nil: slog.Default()). It starts nothing; call Run.
func NewReplicas(src discovery.Source, service string, log *slog.Logger) *Replicas {
	if log == nil {
		log = slog.Default()
	}
	return &Replicas{src: src, service: service, log: log.With("component", "dnsserver", "balancers", service),
		now: time.Now, ready: make(chan struct{}), gone: map[netip.AddrPort]time.Time{}}
}

// Run watches the replicas until ctx is done, then returns nil; it returns
// an error if the source can never watch the service, or if Run is called
// twice. Blocks.
func (r *Replicas) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("dnsserver: Replicas.Run called twice")
	}
	var once sync.Once
	err := r.src.Watch(ctx, r.service, func(snap discovery.Snapshot) {
		r.publish(snap)
		once.Do(func() { close(r.ready) })
	})
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("dnsserver: watching balancer replicas %q: %w", r.service, err)
	}
	return nil
}

// publish takes a new snapshot of the replicas. Only Run's watch calls it.
func (r *Replicas) publish(snap discovery.Snapshot) {
	addrs := make([]netip.AddrPort, 0, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		addrs = append(addrs, netip.AddrPortFrom(ep.Addr.Addr().Unmap(), ep.Addr.Port()))
	}
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	addrs = slices.Compact(addrs)

	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Equal(r.passing, addrs) {
		return
	}
	now := r.now()
	for _, a := range r.passing {
		if _, still := slices.BinarySearchFunc(addrs, a, netip.AddrPort.Compare); !still {
			r.gone[a] = now
		}
	}
	for _, a := range addrs {
		delete(r.gone, a)
	}
	// Forget the replicas that left well before the last one: they can
	// never be in an answer again unless they pass again.
	var last time.Time
	for _, t := range r.gone {
		if t.After(last) {
			last = t
		}
	}
	maps.DeleteFunc(r.gone, func(_ netip.AddrPort, t time.Time) bool { return t.Before(last.Add(-lastGroupWindow)) })
	r.passing = addrs
	if len(addrs) == 0 && len(r.gone) > 0 {
		r.log.Warn("no passing balancer replica; answering with the last ones known", "replicas", fmt.Sprint(r.lastGroupLocked()))
		return
	}
	r.log.Info("balancer replicas", "replicas", fmt.Sprint(addrs))
}

// lastGroupLocked returns the replicas that stopped passing last, sorted.
func (r *Replicas) lastGroupLocked() []netip.AddrPort {
	return slices.SortedFunc(maps.Keys(r.gone), netip.AddrPort.Compare)
}

// Balancers returns the passing replicas, or if none passes the last ones
// known, waiting for the first answer of the source until ctx is done.
// Safe for concurrent use.
func (r *Replicas) Balancers(ctx context.Context) ([]netip.AddrPort, bool) {
	select {
	case <-r.ready:
	case <-ctx.Done():
		select {
		case <-r.ready:
		default:
			return nil, false
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.passing) == 0 {
		return r.lastGroupLocked(), true
	}
	return r.passing, true
}
