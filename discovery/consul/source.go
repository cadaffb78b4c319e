package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/clock"
)

// fetchGrace is added to a blocking query's wait (and Consul's jitter of up
// to wait/16) to get the deadline after which the request is abandoned.
const fetchGrace = 10 * time.Second

// Source is the discovery.Source backed by Consul. Create it with New. It is
// safe for concurrent use; each Watch call runs its own loop.
type Source struct {
	// Read-only after construction.
	cfg    Config
	logger *slog.Logger
	clock  clock.Clock
	rand   func() float64 // in [0, 1), for jitter
}

var _ discovery.Source = (*Source)(nil)

// New validates cfg and returns a Source. It does not contact Consul.
func New(cfg Config) (*Source, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Tags = slices.Clone(cfg.Tags)
	return &Source{
		cfg:    cfg,
		logger: cfg.Logger.With("component", "discovery.consul"),
		clock:  clock.Real{},
		rand:   clock.RandFloat,
	}, nil
}

// Watch watches one service until ctx is done, calling publish from the
// calling goroutine with the first answer and then with every change (see
// the package documentation for the rules). It blocks, and returns ctx.Err()
// once ctx is done, or at once an error when service is not a valid name
// (see ValidateServiceName). Each call runs its own blocking-query loop;
// callers share one Watch among the users of a service.
//
// A name may carry a tag filter ("user-srv@srv,v2", see
// discovery.SplitName): only instances with those tags, and with
// Config.Tags, are published; snapshots carry the name as given.
func (s *Source) Watch(ctx context.Context, service string, publish func(discovery.Snapshot)) error {
	base, tags := discovery.SplitName(service)
	if err := ValidateServiceName(base); err != nil {
		return err
	}
	if publish == nil {
		return errors.New("consul: Watch: nil publish func")
	}
	w := &watcher{
		Source:  s,
		service: service,
		base:    base,
		tags:    append(slices.Clone(s.cfg.Tags), tags...),
		publish: publish,
		log:     s.logger.With("service", service),
	}
	return w.run(ctx)
}

// watcher is the state of one Watch call. It is used by one goroutine only.
type watcher struct {
	*Source
	service string   // as asked, for snapshots and logs
	base    string   // the Consul service
	tags    []string // Config.Tags and the name's tag filter
	publish func(discovery.Snapshot)
	log     *slog.Logger
}

func (w *watcher) run(ctx context.Context) error {
	var (
		waitIndex uint64             // WaitIndex of the next query; 0 until the first answer
		last      discovery.Snapshot // last published
		published bool               // whether last is set
		failures  int                // consecutive failed fetches
		lastStart time.Time          // start of the previous fetch
		backoff   time.Duration      // owed before the next fetch after a failure
	)
	// The loop ends only with ctx; every iteration starts at least
	// MinInterval after the previous one.
	for first := true; ; first = false {
		if !first {
			wait := max(backoff, lastStart.Add(w.interval()).Sub(w.clock.Now()))
			if err := w.sleep(ctx, wait); err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		lastStart = w.clock.Now()
		backoff = 0

		entries, meta, err := w.fetch(ctx, waitIndex)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			backoff = w.backoff(failures)
			failures++
			w.log.Warn("query failed; keeping the last snapshot",
				"error", err, "failures", failures, "retry_in", backoff)
			continue
		}
		failures = 0

		index := meta.LastIndex
		if index == 0 {
			// Consul should never answer 0, but some versions did; waiting
			// on 0 would not block and the loop would spin. Waiting on 1 is
			// always safe.
			w.log.Debug("answer with index 0; using 1")
			index = 1
		}
		switch {
		case index == waitIndex:
			// The wait timed out: nothing changed.
			continue
		case index < waitIndex:
			// Indexes can go backwards (a snapshot restore, a stale server,
			// a recreated service). Resetting the watch to 0 would fetch
			// the current state without blocking, which is what this answer
			// already is: take it as fresh data and wait on its index.
			w.log.Info("index went backwards; resetting the watch",
				"index", index, "previous_index", waitIndex)
		}
		waitIndex = index

		snap, err := w.snapshot(ctx, entries, index)
		if err != nil {
			return err
		}
		if published && snap.Equal(last) {
			w.log.Debug("new index, same endpoints", "index", index)
			continue
		}
		last, published = snap, true
		w.log.Debug("publishing", "index", index, "endpoints", len(snap.Endpoints))
		w.publish(snap)
	}
}

// fetch runs one (blocking, unless index is 0) health query.
func (w *watcher) fetch(ctx context.Context, index uint64) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.WaitTime+w.cfg.WaitTime/16+fetchGrace)
	defer cancel()
	q := &api.QueryOptions{
		Datacenter: w.cfg.Datacenter,
		AllowStale: w.cfg.AllowStale,
		Near:       w.cfg.Near,
		WaitIndex:  index,
		WaitTime:   w.cfg.WaitTime,
	}
	entries, meta, err := w.cfg.Client.ServiceMultipleTags(w.base, w.tags, !w.cfg.IncludeWarning, q.WithContext(ctx))
	if err == nil && meta == nil {
		err = errors.New("answer without query metadata")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("consul: health query for %q: %w", w.base, err)
	}
	return entries, meta, nil
}

// interval returns the least time between the starts of two fetches:
// MinInterval plus up to 25 % of jitter.
func (w *watcher) interval() time.Duration {
	d := w.cfg.MinInterval
	return d + time.Duration(w.rand()*float64(d)/4)
}

// backoff returns the delay after the given number of earlier consecutive
// failures: BackoffBase doubled that many times, capped at BackoffMax, then
// multiplied by a random factor in [0.8, 1.2).
func (w *watcher) backoff(failures int) time.Duration {
	return clock.Backoff(w.cfg.BackoffBase, w.cfg.BackoffMax, failures, w.rand())
}

// sleep waits for d, or until ctx is done.
func (w *watcher) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	c, stop := w.clock.NewTimer(d)
	defer stop()
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
