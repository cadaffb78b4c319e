package consul

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/resolver"
)

// watcher is one blocking-query loop on one Consul service. Its run method
// is the only goroutine using the fields that are not guarded by mu.
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

	mu          sync.Mutex
	kicked      bool               // guarded by mu: fetch afresh next, and send the answer even if unchanged
	cancelFetch context.CancelFunc // guarded by mu: cancels the fetch in flight; nil between fetches
}

func (r *consulResolver) newWatcher(kind listKind) *watcher {
	w := &watcher{r: r, kind: kind}
	if kind == instanceList {
		w.service, w.tags, w.passingOnly = r.target.Service, r.target.Tags, r.target.Healthy
		w.near, w.limit = r.target.Near, r.target.Limit
	} else {
		w.service, w.passingOnly, w.serverName = r.target.LBService, true, r.target.LBService
	}
	w.log = r.log.With("list", kind.String(), "service", w.service)
	return w
}

// kick makes the loop fetch afresh (index 0) at once, cancelling a
// blocking query in flight, and send the answer even if it did not change.
// Safe for concurrent use; does not block.
func (w *watcher) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.kicked = true
	if w.cancelFetch != nil {
		w.cancelFetch()
	}
}

// run fetches, and sends each changed list or each failure to the run
// loop, until ctx is done. Every iteration starts at least minInterval
// after the previous one, and after the backoff owed for a failure.
func (w *watcher) run(ctx context.Context) {
	var (
		waitIndex uint64             // of the next query; 0 fetches without blocking
		last      []resolver.Address // last sent
		sent      bool               // whether last is set
		failures  int                // consecutive failed fetches
		lastStart time.Time          // of the previous fetch
		delay     time.Duration      // backoff owed before the next fetch
	)
	for first := true; ; first = false {
		if !first && !sleep(ctx, max(delay, time.Until(lastStart.Add(w.interval())))) {
			return
		}
		w.mu.Lock()
		forced := w.kicked
		w.kicked = false
		if forced {
			waitIndex = 0
		}
		fctx, cancel := context.WithTimeout(ctx, w.deadline(waitIndex))
		w.cancelFetch = cancel
		w.mu.Unlock()

		lastStart, delay = time.Now(), 0
		entries, meta, err := w.fetch(fctx, waitIndex)
		w.mu.Lock()
		w.cancelFetch = nil
		interrupted := w.kicked && errors.Is(fctx.Err(), context.Canceled)
		w.mu.Unlock()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if interrupted {
			continue // kicked: the next iteration fetches afresh
		}
		if err != nil {
			if forced {
				// The next answer still owes the run loop a list.
				w.mu.Lock()
				w.kicked = true
				w.mu.Unlock()
			}
			delay = backoff(w.r.tune.backoffBase, w.r.target.MaxBackoff, failures)
			failures++
			w.log.Warn("Consul query failed; retrying", "error", err, "failures", failures, "retry_in", delay)
			if !w.send(ctx, result{kind: w.kind, err: err}) {
				return
			}
			continue
		}
		failures = 0

		index := meta.LastIndex
		if index == 0 {
			// Waiting on 0 would not block: the loop would spin.
			index = 1
		}
		switch {
		case index == waitIndex:
			continue // the wait ended without a change
		case index < waitIndex:
			// A snapshot restore, a stale server, a recreated service: take
			// the answer as fresh data and wait on its index from now on.
			w.log.Info("Consul index went backwards; resetting the watch", "index", index, "previous_index", waitIndex)
		}
		waitIndex = index

		addrs := w.addresses(entries)
		if sent && !forced && slices.Equal(addrs, last) {
			continue
		}
		last, sent = addrs, true
		w.log.Debug("new list", "index", index, "addresses", len(addrs))
		if !w.send(ctx, result{kind: w.kind, addrs: addrs}) {
			return
		}
	}
}

// fetch runs one query, blocking unless index is 0.
func (w *watcher) fetch(ctx context.Context, index uint64) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	t := w.r.target
	q := &api.QueryOptions{
		Datacenter:        t.Datacenter,
		AllowStale:        t.AllowStale,
		RequireConsistent: t.RequireConsistent,
		Near:              w.near,
		WaitIndex:         index,
		WaitTime:          t.Wait,
	}
	entries, meta, err := w.r.health.ServiceMultipleTags(w.service, w.tags, w.passingOnly, q.WithContext(ctx))
	if err == nil && meta == nil {
		err = errors.New("answer without query metadata")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("consul: health query for %q: %w", w.service, err)
	}
	return entries, meta, nil
}

// deadline bounds one fetch: the blocking wait and Consul's jitter of up to
// wait/16 for a blocking query, plus the target's timeout.
func (w *watcher) deadline(index uint64) time.Duration {
	d := w.r.target.Timeout
	if index != 0 {
		d += w.r.target.Wait + w.r.target.Wait/16
	}
	return d
}

// interval returns the least time between the starts of two fetches.
func (w *watcher) interval() time.Duration {
	d := w.r.tune.minInterval
	return d + time.Duration(rand.Float64()*float64(d)/4)
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

// sleep waits for d, or until ctx is done; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
