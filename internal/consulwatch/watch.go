package consulwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// Meta is what a fetch reports besides its value.
type Meta struct {
	// Index is Consul's X-Consul-Index of the answer.
	Index uint64
	// FilteredByACLs is set when Consul left out results the token may not
	// read (X-Consul-Results-Filtered-By-ACLs).
	FilteredByACLs bool
}

// MetaOf converts the API's query metadata; nil gives an error, since an
// answer without it cannot drive a blocking query.
func MetaOf(qm *api.QueryMeta) (Meta, error) {
	if qm == nil {
		return Meta{}, errors.New("answer without query metadata")
	}
	return Meta{Index: qm.LastIndex, FilteredByACLs: qm.ResultsFilteredByACLs}, nil
}

// Fetch runs one query: a blocking one waiting up to wait for an index
// above waitIndex, or, when waitIndex is 0, one answered at once. It must
// return promptly once ctx is done (ctx carries the fetch's deadline).
type Fetch[T any] func(ctx context.Context, waitIndex uint64, wait time.Duration) (T, Meta, error)

// Update is one delivered answer.
type Update[T any] struct {
	Value T
	// Index is the answer's index (at least 1).
	Index uint64
	// Fresh is set when the answer starts the watch afresh: the first one,
	// one after the index went backwards, or one after a kick.
	Fresh bool
	// Kicked is set when the answer follows a Kick; it is delivered even
	// if its index did not change.
	Kicked bool
	// Filtered is set when ACLs filtered the answer (Meta.FilteredByACLs).
	Filtered bool
}

// Limits of the Options durations, inclusive.
const (
	MinWaitTime    = time.Second
	MaxWaitTime    = 10 * time.Minute
	MaxMinInterval = time.Minute
	MaxBackoff     = 10 * time.Minute
	MaxTimeout     = 10 * time.Minute
)

// Options configure a Watch.
type Options struct {
	// Name says what is watched, in logs ("catalog services").
	Name string
	// WaitTime is the longest a blocking query waits, MinWaitTime to
	// MaxWaitTime. Zero makes every fetch non-blocking (index 0): a poll,
	// paced by MinInterval.
	WaitTime time.Duration
	// MinInterval is the least time between the starts of two fetches,
	// plus up to 25 % of jitter; (0, MaxMinInterval].
	MinInterval time.Duration
	// BackoffBase and BackoffMax: the delay after the n-th consecutive
	// failure is BackoffBase·2^(n-1), capped at BackoffMax, times a random
	// factor in [0.8, 1.2). 0 < BackoffBase <= BackoffMax <= MaxBackoff.
	BackoffBase, BackoffMax time.Duration
	// Timeout is added to a blocking fetch's wait and Consul's jitter
	// (wait/16) to get its deadline; it is the whole deadline of a
	// non-blocking one. (0, MaxTimeout].
	Timeout time.Duration
	// Monitor is shared by the watches of one client; nil makes a private
	// one without a probe, whose advice names no setting (empty Hints).
	Monitor *Monitor
	// Clock and Rand are the time and jitter seams; nil means clock.Real
	// and clock.RandFloat.
	Clock clock.Clock
	Rand  func() float64
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Urgent, if set, is asked after each failure: while it reports true
	// (for example: nothing was ever read, so nobody can be served), the
	// backoff is capped at ProbeEvery whatever the error, so that a fix
	// of the ACLs or the datacenter is seen within about a second, at the
	// cost of a request a second.
	Urgent func() bool
}

// Validate reports the first out-of-range field.
func (o *Options) Validate() error {
	switch {
	case o.WaitTime != 0 && (o.WaitTime < MinWaitTime || o.WaitTime > MaxWaitTime):
		return fmt.Errorf("consulwatch: WaitTime %v out of range [%v, %v] (or 0 to poll)", o.WaitTime, MinWaitTime, MaxWaitTime)
	case o.MinInterval <= 0 || o.MinInterval > MaxMinInterval:
		return fmt.Errorf("consulwatch: MinInterval %v out of range (0, %v]", o.MinInterval, MaxMinInterval)
	case o.BackoffBase <= 0:
		return fmt.Errorf("consulwatch: BackoffBase %v must be positive", o.BackoffBase)
	case o.BackoffMax < o.BackoffBase || o.BackoffMax > MaxBackoff:
		return fmt.Errorf("consulwatch: BackoffMax %v out of range [BackoffBase=%v, %v]", o.BackoffMax, o.BackoffBase, MaxBackoff)
	case o.Timeout <= 0 || o.Timeout > MaxTimeout:
		return fmt.Errorf("consulwatch: Timeout %v out of range (0, %v]", o.Timeout, MaxTimeout)
	}
	return nil
}

// Watch is one blocking-query loop. Create it with New and run it with
// Run; Kick may be called from any goroutine.
type Watch[T any] struct {
	// Read-only after construction.
	opts  Options
	fetch Fetch[T]
	log   *slog.Logger

	mu          sync.Mutex
	kicked      bool               // guarded by mu: fetch afresh next and deliver even if unchanged
	cancelFetch context.CancelFunc // guarded by mu: cancels the fetch in flight; nil between fetches
}

// New validates opts and returns a Watch that runs fetch.
func New[T any](opts Options, fetch Fetch[T]) (*Watch[T], error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if fetch == nil {
		return nil, errors.New("consulwatch: nil fetch")
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.Rand == nil {
		opts.Rand = clock.RandFloat
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Monitor == nil {
		opts.Monitor = NewMonitor(nil, opts.Clock, opts.Logger, Hints{})
	}
	return &Watch[T]{opts: opts, fetch: fetch, log: opts.Logger.With("query", opts.Name)}, nil
}

// Kick makes the loop fetch afresh (index 0) at once, cancelling a
// blocking query in flight, and deliver the answer even if it did not
// change. Safe for concurrent use; does not block.
func (w *Watch[T]) Kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.kicked = true
	if w.cancelFetch != nil {
		w.cancelFetch()
	}
}

// Run fetches until ctx is done, calling deliver with every answer whose
// index changed (or that follows a Kick), and onError (if not nil) with
// every failed fetch, both from the calling goroutine. Every fetch starts
// at least MinInterval (plus jitter) after the previous one, except the
// blocking fetch that follows a successful one at index 0, and after the
// backoff owed for a failure; while that backoff is longer than
// ProbeAfter and the error is transient, the Monitor's probe may end it
// early. Run blocks and returns ctx.Err().
func (w *Watch[T]) Run(ctx context.Context, deliver func(Update[T]), onError func(error)) error {
	var (
		waitIndex uint64        // of the next query; 0 fetches without blocking
		delivered bool          // whether anything was delivered
		failures  int           // consecutive failed fetches
		lastStart time.Time     // of the previous fetch
		delay     time.Duration // backoff owed before the next fetch
		probe     bool          // whether the owed backoff may be cut short by a probe
		fresh     = true        // the next answer starts afresh
		looked    bool          // the previous fetch was a successful one at index 0
	)
	clk, mon := w.opts.Clock, w.opts.Monitor
	for first := true; ; first = false {
		if !first {
			pace := lastStart.Add(w.interval()).Sub(clk.Now())
			if looked {
				// The fetch at index 0 and the blocking one after it are
				// one look at Consul: a change made between them would
				// otherwise wait a whole pace.
				pace = 0
			}
			var err error
			if delay > pace {
				err = mon.Sleep(ctx, delay, probe)
			} else {
				err = sleep(ctx, clk, pace)
			}
			if err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		w.mu.Lock()
		forced := w.kicked
		w.kicked = false
		if forced {
			waitIndex = 0
		}
		wait := w.opts.WaitTime
		if waitIndex == 0 {
			wait = 0
		}
		fctx, cancel := context.WithTimeout(ctx, wait+wait/16+w.opts.Timeout)
		w.cancelFetch = cancel
		w.mu.Unlock()

		lastStart, delay, probe, looked = clk.Now(), 0, false, false
		v, meta, err := w.fetch(fctx, waitIndex, wait)
		w.mu.Lock()
		w.cancelFetch = nil
		interrupted := w.kicked && errors.Is(fctx.Err(), context.Canceled)
		w.mu.Unlock()
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		if interrupted {
			continue // kicked during the fetch: the next one starts afresh
		}
		if err != nil {
			if forced {
				w.mu.Lock()
				w.kicked = true // the next answer is still owed
				w.mu.Unlock()
			}
			kind := mon.Failed(w.opts.Name, err)
			delay = clock.Backoff(w.opts.BackoffBase, w.opts.BackoffMax, failures, w.opts.Rand())
			if w.opts.Urgent != nil && w.opts.Urgent() {
				delay = min(delay, ProbeEvery)
			}
			probe = kind == Transient
			failures++
			w.log.Debug("Consul query failed; retrying", "error", err, "kind", kind.String(), "failures", failures, "retry_in", delay.Round(time.Millisecond))
			if onError != nil {
				onError(err)
			}
			continue
		}
		failures = 0
		mon.Succeeded(w.opts.Name, meta.FilteredByACLs)
		looked = wait == 0 && w.opts.WaitTime > 0

		index := meta.Index
		if index == 0 {
			// Waiting on 0 would not block: the loop would spin.
			index = 1
		}
		switch {
		case index == waitIndex && !forced && delivered:
			continue // the wait ended without a change
		case index < waitIndex:
			// A snapshot restore, a stale server, a recreated service: take
			// the answer as fresh data and wait on its index from now on.
			w.log.Info("Consul index went backwards; resetting the watch", "index", index, "previous_index", waitIndex)
			fresh = true
		}
		if w.opts.WaitTime > 0 {
			waitIndex = index
		}
		u := Update[T]{Value: v, Index: index, Fresh: fresh || forced, Kicked: forced, Filtered: meta.FilteredByACLs}
		fresh, delivered = false, true
		deliver(u)
	}
}

// interval returns the least time between the starts of two fetches.
func (w *Watch[T]) interval() time.Duration {
	d := w.opts.MinInterval
	return d + time.Duration(w.opts.Rand()*float64(d)/4)
}
