package consul

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/resolver"

	"github.com/lookaside-lb/lookaside/internal/consulwatch"
)

// watcher keeps one list of one Consul service: a consulwatch.Watch (index
// rules, pace, backoff, kick, probe) on the health endpoint, whose answers
// it turns into addresses and sends to the run loop.
type watcher struct {
	// Read-only after construction.
	r           *consulResolver
	kind        listKind
	service     string
	tags        []string
	passingOnly bool
	near        string
	limit       int
	serverName  string // of each address (balancers: for TLS to them)
	log         *slog.Logger
	watch       *consulwatch.Watch[[]*api.ServiceEntry]
}

// newWatcher returns the watcher of one list. The target's wait is raised
// to consulwatch.MinWaitTime, and the first retry delay lowered to the
// target's max-backoff, where they fall outside the loop's limits.
func (r *consulResolver) newWatcher(kind listKind) (*watcher, error) {
	w := &watcher{r: r, kind: kind}
	if kind == instanceList {
		w.service, w.tags, w.passingOnly = r.target.Service, r.target.Tags, r.target.Healthy
		w.near, w.limit = r.target.Near, r.target.Limit
	} else {
		w.service, w.passingOnly, w.serverName = r.target.LBService, true, r.target.LBService
	}
	w.log = r.log.With("list", kind.String(), "service", w.service)
	t := r.target
	var err error
	w.watch, err = consulwatch.New(consulwatch.Options{
		Name:        kind.String() + " of " + w.service,
		WaitTime:    max(t.Wait, consulwatch.MinWaitTime),
		MinInterval: r.tune.minInterval,
		BackoffBase: min(r.tune.backoffBase, t.MaxBackoff),
		BackoffMax:  t.MaxBackoff,
		Timeout:     t.Timeout,
		Monitor:     r.monitor,
		Logger:      w.log,
	}, w.fetch)
	if err != nil {
		return nil, fmt.Errorf("consul: %s watch: %w", kind, err)
	}
	return w, nil
}

// kick makes the loop fetch afresh (index 0) at once, cancelling a
// blocking query in flight, and send the answer even if it did not change.
// Safe for concurrent use; does not block.
func (w *watcher) kick() { w.watch.Kick() }

// run fetches, and sends each changed list (or each list after a kick) and
// each failure to the run loop, until ctx is done.
func (w *watcher) run(ctx context.Context) {
	var (
		last []resolver.Address // last sent
		sent bool               // whether last is set
	)
	deliver := func(u consulwatch.Update[[]*api.ServiceEntry]) {
		addrs := w.addresses(u.Value)
		if sent && !u.Kicked && slices.Equal(addrs, last) {
			return
		}
		last, sent = addrs, true
		w.log.Debug("new list", "index", u.Index, "addresses", len(addrs))
		w.send(ctx, result{kind: w.kind, addrs: addrs})
	}
	failed := func(err error) { w.send(ctx, result{kind: w.kind, err: err}) }
	_ = w.watch.Run(ctx, deliver, failed) // returns only once ctx is done
}

// fetch runs one query, blocking for up to wait unless index is 0. A query
// at index 0 still names the target's wait, which Consul then ignores.
func (w *watcher) fetch(ctx context.Context, index uint64, wait time.Duration) ([]*api.ServiceEntry, consulwatch.Meta, error) {
	t := w.r.target
	if index == 0 {
		wait = t.Wait
	}
	q := &api.QueryOptions{
		Datacenter:        t.Datacenter,
		AllowStale:        t.AllowStale,
		RequireConsistent: t.RequireConsistent,
		Near:              w.near,
		WaitIndex:         index,
		WaitTime:          wait,
	}
	entries, qm, err := w.r.health.ServiceMultipleTags(w.service, w.tags, w.passingOnly, q.WithContext(ctx))
	var meta consulwatch.Meta
	if err == nil {
		meta, err = consulwatch.MetaOf(qm)
	}
	if err != nil {
		return nil, consulwatch.Meta{}, fmt.Errorf("consul: health query for %q: %w", w.service, err)
	}
	return entries, meta, nil
}

// send hands res to the run loop; false if ctx ended first.
func (w *watcher) send(ctx context.Context, res result) bool {
	select {
	case w.r.results <- res:
		return true
	case <-ctx.Done():
		return false
	}
}

// addresses turns a Consul answer into the list to send. An instance's
// address is its service address, or its node's when it has none.
// Instances without an address or with a port outside 1-65535 are skipped.
// Instances keep Consul's order (nearest first with near) until limit is
// applied; then the instances are sorted by address, the balancers in this
// resolver's own order, and duplicates dropped.
func (w *watcher) addresses(entries []*api.ServiceEntry) []resolver.Address {
	addrs := make([]resolver.Address, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		host := e.Service.Address
		if host == "" && e.Node != nil {
			host = e.Node.Address
		}
		if host == "" || e.Service.Port < 1 || e.Service.Port > 65535 {
			w.log.Debug("instance skipped: no usable address", "id", e.Service.ID, "address", host, "port", e.Service.Port)
			continue
		}
		addrs = append(addrs, resolver.Address{Addr: net.JoinHostPort(host, strconv.Itoa(e.Service.Port)), ServerName: w.serverName})
	}
	if w.limit > 0 && len(addrs) > w.limit {
		addrs = addrs[:w.limit]
	}
	if w.kind == instanceList {
		slices.SortFunc(addrs, func(a, b resolver.Address) int { return cmp.Compare(a.Addr, b.Addr) })
	} else {
		// Rendezvous order with a seed of this resolver: stable while the
		// replicas stay, different from channel to channel.
		type scored struct {
			score uint64
			addr  resolver.Address
		}
		ss := make([]scored, len(addrs))
		var seed [8]byte
		binary.LittleEndian.PutUint64(seed[:], w.r.lbSeed)
		for i, a := range addrs {
			h := fnv.New64a()
			h.Write(seed[:])
			h.Write([]byte(a.Addr))
			ss[i] = scored{h.Sum64(), a}
		}
		slices.SortFunc(ss, func(a, b scored) int {
			return cmp.Or(cmp.Compare(a.score, b.score), cmp.Compare(a.addr.Addr, b.addr.Addr))
		})
		for i := range ss {
			addrs[i] = ss[i].addr
		}
	}
	return slices.CompactFunc(addrs, func(a, b resolver.Address) bool { return a.Addr == b.Addr })
}
