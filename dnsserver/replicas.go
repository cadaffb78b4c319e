package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/lookaside-lb/lookaside/discovery"
)

// StaticBalancers is a fixed list of balancer replicas, for deployments
// without Consul. It is a Balancers that never blocks.
type StaticBalancers []netip.AddrPort

var _ Balancers = StaticBalancers(nil)

// Balancers returns the list; ok is always true.
func (s StaticBalancers) Balancers(context.Context) ([]netip.AddrPort, bool) { return s, true }

// Replicas follows the balancer replicas registered as one service of a
// discovery source: in Consul, the passing instances of the service that
// `lbserver -register` registers under (-register-service). Create it with
// NewReplicas and run it with Run. Safe for concurrent use.
//
// When the source reports no passing replica after it reported some,
// Replicas keeps answering with the last replicas it knew: clients that
// then resolve the name still get balancer addresses, so they try them,
// use their fallback addresses after their fallback timeout (10 s in
// grpc-go), and leave fallback by themselves when a balancer comes back at
// one of those addresses. Without balancer addresses a grpclb client goes
// to fallback at once, and stays there until it resolves the name again,
// which nothing prompts while its fallback backends answer.
type Replicas struct {
	// Read-only after construction.
	src     discovery.Source
	service string
	log     *slog.Logger

	cur     atomic.Pointer[[]netip.AddrPort] // nil until the first answer
	ready   chan struct{}                    // closed at the first answer
	running atomic.Bool
}

var _ Balancers = (*Replicas)(nil)

// NewReplicas returns Replicas following service in src. It starts
// nothing; call Run.
func NewReplicas(src discovery.Source, service string, log *slog.Logger) *Replicas {
	if log == nil {
		log = slog.Default()
	}
	return &Replicas{src: src, service: service, log: log.With("component", "dnsserver", "balancers", service), ready: make(chan struct{})}
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
	old := r.cur.Load()
	if len(addrs) == 0 && old != nil && len(*old) > 0 {
		r.log.Warn("no passing balancer replica; answering with the last ones known", "replicas", fmt.Sprint(*old))
		return
	}
	if old != nil && slices.Equal(*old, addrs) {
		return
	}
	r.cur.Store(&addrs)
	r.log.Info("balancer replicas", "replicas", fmt.Sprint(addrs))
}

// Balancers returns the current replicas, waiting for the first answer of
// the source until ctx is done. Safe for concurrent use.
func (r *Replicas) Balancers(ctx context.Context) ([]netip.AddrPort, bool) {
	select {
	case <-r.ready:
	default:
		select {
		case <-r.ready:
		case <-ctx.Done():
			return nil, false
		}
	}
	return *r.cur.Load(), true
}
