package consul

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/lookaside-lb/lookaside/discovery"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var cmpAddr = cmpopts.EquateComparable(netip.AddrPort{}, netip.Addr{})

// step is one expected event of a script: a fetch (answered with r), a
// sleep (fired) or a publish. The last step of a script is checked but not
// answered, so a script ends by saying what the watcher does next.
type step struct {
	fetch     bool
	waitIndex uint64
	r         reply
	sleep     time.Duration
	publish   *discovery.Snapshot
}

func fetchStep(waitIndex uint64, r reply) step { return step{fetch: true, waitIndex: waitIndex, r: r} }
func sleepStep(d time.Duration) step           { return step{sleep: d} }
func publishStep(s discovery.Snapshot) step    { return step{publish: &s} }

// answer is a successful reply with the given index.
func answer(index uint64, took time.Duration, entries ...*api.ServiceEntry) reply {
	return reply{index: index, took: took, entries: entries}
}

var errConsul = errors.New("Unexpected response code: 500 (rpc error: No cluster leader)")

func failure(took time.Duration) reply { return reply{err: errConsul, took: took} }

var (
	entryA = entry("n1", "10.0.0.1", "a", "", 8080)
	entryB = entry("n2", "10.0.0.2", "b", "", 8080)
)

func snap(index uint64, eps ...discovery.Endpoint) discovery.Snapshot {
	return discovery.Snapshot{Service: "svc", Endpoints: eps, Index: index}
}

func ep(id, addr string) discovery.Endpoint {
	return discovery.Endpoint{ID: id, Addr: netip.MustParseAddrPort(addr), Weight: 1}
}

var (
	epA = ep("a", "10.0.0.1:8080")
	epB = ep("b", "10.0.0.2:8080")
)

// runScript watches "svc" and checks that the watcher does exactly the
// steps, then cancels and checks that Watch returns context.Canceled and did
// nothing else.
func runScript(t *testing.T, h *harness, s *Source, steps []step) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, "svc", func(snap discovery.Snapshot) { h.events <- event{publish: &snap} })
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want %v", err, context.Canceled)
			}
		case <-time.After(testTimeout):
			t.Fatalf("Watch did not return after cancel")
		}
		select {
		case e := <-h.events:
			t.Errorf("unexpected event after the script: %v", e)
		default:
		}
	}()

	for i, st := range steps {
		e := h.next(t)
		answerIt := i < len(steps)-1
		switch {
		case st.fetch:
			if e.fetch == nil {
				t.Fatalf("step %d: got %v, want fetch(index=%d)", i, e, st.waitIndex)
			}
			if got := e.fetch.q.WaitIndex; got != st.waitIndex {
				t.Fatalf("step %d: fetch with WaitIndex %d, want %d", i, got, st.waitIndex)
			}
			if answerIt {
				e.fetch.reply <- st.r
			}
		case st.publish != nil:
			if e.publish == nil {
				t.Fatalf("step %d: got %v, want publish", i, e)
			}
			if diff := cmp.Diff(*st.publish, *e.publish, cmpAddr); diff != "" {
				t.Fatalf("step %d: published snapshot mismatch (-want +got):\n%s", i, diff)
			}
		default:
			if e.fetch != nil || e.publish != nil || e.sleep != st.sleep {
				t.Fatalf("step %d: got %v, want sleep(%v)", i, e, st.sleep)
			}
			if answerIt {
				e.fire()
			}
		}
	}
}

func TestWatchLoop(t *testing.T) {
	// With the jitter input at 0.5 the backoff factor is exactly 1 and the
	// minimum interval is 100ms + 12.5ms.
	const interval = 112500 * time.Microsecond
	tests := []struct {
		name   string
		config func(*Config)
		steps  []step
	}{
		{
			name: "first answer publishes, same index publishes nothing",
			steps: []step{
				fetchStep(0, answer(10, 0, entryA)),
				publishStep(snap(10, epA)),
				sleepStep(interval),
				fetchStep(10, answer(10, time.Minute, entryA, entryB)),
				fetchStep(10, answer(10, time.Minute)),
				fetchStep(10, reply{}),
			},
		},
		{
			name: "empty first answer publishes an empty snapshot",
			steps: []step{
				fetchStep(0, answer(3, 0)),
				publishStep(snap(3)),
				sleepStep(interval),
				fetchStep(3, answer(4, time.Second, entryA)),
				publishStep(snap(4, epA)),
				fetchStep(4, answer(5, time.Second)),
				publishStep(snap(5)),
				fetchStep(5, reply{}),
			},
		},
		{
			name: "new index with the same data publishes nothing",
			steps: []step{
				fetchStep(0, answer(5, 0, entryA, entryB)),
				publishStep(snap(5, epA, epB)),
				sleepStep(interval),
				fetchStep(5, answer(6, time.Second, entryB, entryA)),
				fetchStep(6, answer(7, time.Second, entryB)),
				publishStep(snap(7, epB)),
				fetchStep(7, reply{}),
			},
		},
		{
			name: "index 0 is taken as 1",
			steps: []step{
				fetchStep(0, answer(0, 0, entryA)),
				publishStep(snap(1, epA)),
				sleepStep(interval),
				fetchStep(1, answer(0, time.Second, entryA)),
				// Still "index 1": the same index, so nothing changed.
				fetchStep(1, answer(0, time.Second, entryB)),
				fetchStep(1, answer(2, time.Second, entryB)),
				publishStep(snap(2, epB)),
				fetchStep(2, reply{}),
			},
		},
		{
			name: "lower index resets the watch and is taken as fresh data",
			steps: []step{
				fetchStep(0, answer(100, 0, entryA)),
				publishStep(snap(100, epA)),
				sleepStep(interval),
				fetchStep(100, answer(50, time.Second, entryB)),
				publishStep(snap(50, epB)),
				fetchStep(50, answer(40, time.Second, entryB)),
				fetchStep(40, answer(41, time.Second, entryA, entryB)),
				publishStep(snap(41, epA, epB)),
				fetchStep(41, reply{}),
			},
		},
		{
			name: "fetches start at least the minimum interval apart",
			steps: []step{
				fetchStep(0, answer(1, 0, entryA)),
				publishStep(snap(1, epA)),
				sleepStep(interval),
				fetchStep(1, answer(2, 50*time.Millisecond, entryB)),
				publishStep(snap(2, epB)),
				sleepStep(interval - 50*time.Millisecond),
				fetchStep(2, answer(3, interval, entryA)),
				publishStep(snap(3, epA)),
				// Exactly the interval has passed: no sleep.
				fetchStep(3, answer(4, interval-time.Nanosecond)),
				publishStep(snap(4)),
				sleepStep(time.Nanosecond),
				fetchStep(4, reply{}),
			},
		},
		{
			name:   "backoff doubles up to the max and resets after success",
			config: func(c *Config) { c.BackoffMax = 2 * time.Second },
			steps: []step{
				fetchStep(0, failure(0)),
				sleepStep(250 * time.Millisecond),
				fetchStep(0, failure(0)),
				sleepStep(500 * time.Millisecond),
				fetchStep(0, failure(0)),
				sleepStep(time.Second),
				fetchStep(0, failure(0)),
				sleepStep(2 * time.Second),
				fetchStep(0, failure(0)),
				sleepStep(2 * time.Second),
				fetchStep(0, answer(7, 0, entryA)),
				publishStep(snap(7, epA)),
				sleepStep(interval),
				fetchStep(7, failure(0)),
				sleepStep(250 * time.Millisecond),
				fetchStep(7, failure(0)),
				sleepStep(500 * time.Millisecond),
				// A successful answer without a change resets the backoff too.
				fetchStep(7, answer(7, time.Minute)),
				fetchStep(7, failure(0)),
				sleepStep(250 * time.Millisecond),
				fetchStep(7, reply{}),
			},
		},
		{
			name:   "backoff shorter than the minimum interval waits the interval",
			config: func(c *Config) { c.BackoffBase = 10 * time.Millisecond },
			steps: []step{
				fetchStep(0, failure(0)),
				sleepStep(interval),
				fetchStep(0, failure(20*time.Millisecond)),
				sleepStep(interval - 20*time.Millisecond),
				fetchStep(0, failure(time.Second)),
				sleepStep(40 * time.Millisecond),
				fetchStep(0, reply{}),
			},
		},
		{
			name: "errors publish nothing and keep the last good snapshot",
			steps: []step{
				fetchStep(0, answer(4, 0, entryA, entryB)),
				publishStep(snap(4, epA, epB)),
				sleepStep(interval),
				fetchStep(4, failure(time.Second)),
				sleepStep(250 * time.Millisecond),
				fetchStep(4, reply{noMeta: true}),
				sleepStep(500 * time.Millisecond),
				// Back: the same data under a new index is no change.
				fetchStep(4, answer(9, time.Second, entryA, entryB)),
				fetchStep(9, answer(10, time.Second, entryA)),
				publishStep(snap(10, epA)),
				fetchStep(10, reply{}),
			},
		},
		{
			name: "errors before the first answer publish nothing",
			steps: []step{
				fetchStep(0, failure(0)),
				sleepStep(250 * time.Millisecond),
				fetchStep(0, failure(0)),
				sleepStep(500 * time.Millisecond),
				fetchStep(0, answer(2, 0)),
				publishStep(snap(2)),
				sleepStep(interval),
				fetchStep(2, reply{}),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness()
			cfg := testConfig(h)
			if tt.config != nil {
				tt.config(&cfg)
			}
			runScript(t, h, newTestSource(t, h, cfg, 0.5), tt.steps)
		})
	}
}

func TestWatchQuery(t *testing.T) {
	tests := []struct {
		name   string
		watch  string // the name watched; default "svc"
		config func(*Config)
		want   query
	}{
		{
			name: "defaults",
			want: query{Service: "svc", Passing: true, WaitTime: time.Minute},
		},
		{
			name:   "tag filter in the name, with configured tags",
			watch:  "svc@canary,v2",
			config: func(c *Config) { c.Tags = []string{"grpc"} },
			want:   query{Service: "svc", Tags: []string{"grpc", "canary", "v2"}, Passing: true, WaitTime: time.Minute},
		},
		{
			name: "all options",
			config: func(c *Config) {
				c.Tags = []string{"grpc", "v2"}
				c.Datacenter = "dc2"
				c.AllowStale = true
				c.Near = "_agent"
				c.WaitTime = 5 * time.Minute
				c.IncludeWarning = true
			},
			want: query{
				Service: "svc", Tags: []string{"grpc", "v2"}, Passing: false,
				WaitTime: 5 * time.Minute, AllowStale: true, Datacenter: "dc2", Near: "_agent",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness()
			cfg := testConfig(h)
			if tt.config != nil {
				tt.config(&cfg)
			}
			s := newTestSource(t, h, cfg, 0.5)
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			done := make(chan error, 1)
			name := tt.watch
			if name == "" {
				name = "svc"
			}
			go func() { done <- s.Watch(ctx, name, func(discovery.Snapshot) {}) }()
			e := h.next(t)
			if e.fetch == nil {
				t.Fatalf("got %v, want a fetch", e)
			}
			if diff := cmp.Diff(tt.want, e.fetch.q); diff != "" {
				t.Errorf("query mismatch (-want +got):\n%s", diff)
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want %v", err, context.Canceled)
			}
		})
	}
}

func TestJitter(t *testing.T) {
	h := newHarness()
	cfg := testConfig(h)
	cfg.BackoffMax = 4 * time.Second
	tests := []struct {
		r        float64
		interval time.Duration
		backoffs []time.Duration // after 0, 1, 2, ... failures
	}{
		{r: 0, interval: 100 * time.Millisecond, backoffs: []time.Duration{
			200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond,
			3200 * time.Millisecond, 3200 * time.Millisecond,
		}},
		{r: 0.5, interval: 112500 * time.Microsecond, backoffs: []time.Duration{
			250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second,
			4 * time.Second, 4 * time.Second,
		}},
		{r: 0.75, interval: 118750 * time.Microsecond, backoffs: []time.Duration{
			275 * time.Millisecond, 550 * time.Millisecond, 1100 * time.Millisecond, 2200 * time.Millisecond,
			4400 * time.Millisecond, 4400 * time.Millisecond,
		}},
	}
	for _, tt := range tests {
		w := &watcher{Source: newTestSource(t, h, cfg, tt.r)}
		if got := w.interval(); got != tt.interval {
			t.Errorf("r=%v: interval() = %v, want %v", tt.r, got, tt.interval)
		}
		var got []time.Duration
		for n := range tt.backoffs {
			got = append(got, w.backoff(n))
		}
		if diff := cmp.Diff(tt.backoffs, got); diff != "" {
			t.Errorf("r=%v: backoffs mismatch (-want +got):\n%s", tt.r, diff)
		}
	}
	// Many failures neither overflow nor pass the cap.
	w := &watcher{Source: newTestSource(t, h, cfg, 0.999999)}
	if got := w.backoff(1 << 20); got < 4*time.Second || got >= 4800*time.Millisecond {
		t.Errorf("backoff(1<<20) = %v, want in [4s, 4.8s)", got)
	}
}

// recorder is a slog handler that keeps the records.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record // guarded by mu
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) atLeast(level slog.Level) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var msgs []string
	for _, rec := range r.records {
		if rec.Level >= level {
			msgs = append(msgs, rec.Message)
		}
	}
	return msgs
}

func TestWatchCancel(t *testing.T) {
	tests := []struct {
		name string
		// The watcher is cancelled while it waits on the last step.
		steps []step
		// Warnings expected from the steps themselves.
		wantWarnings int
	}{
		{name: "during the first fetch", steps: []step{fetchStep(0, reply{})}},
		{name: "during a blocking fetch", steps: []step{
			fetchStep(0, answer(1, 0, entryA)),
			publishStep(snap(1, epA)),
			sleepStep(112500 * time.Microsecond),
			fetchStep(1, reply{}),
		}},
		{name: "during the minimum interval", steps: []step{
			fetchStep(0, answer(1, 0, entryA)),
			publishStep(snap(1, epA)),
			sleepStep(112500 * time.Microsecond),
		}},
		{name: "during a backoff", wantWarnings: 1, steps: []step{
			fetchStep(0, failure(0)),
			sleepStep(250 * time.Millisecond),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness()
			rec := &recorder{}
			cfg := testConfig(h)
			cfg.Logger = slog.New(rec)
			runScript(t, h, newTestSource(t, h, cfg, 0.5), tt.steps)
			if warnings := rec.atLeast(slog.LevelWarn); len(warnings) != tt.wantWarnings {
				t.Errorf("logged warnings %q, want %d (cancellation logs none)", warnings, tt.wantWarnings)
			}
		})
	}
}

func TestWatchCancelRealTimers(t *testing.T) {
	// With the real clock, a watcher waiting out a long backoff returns as
	// soon as its context is done.
	h := newHarness()
	cfg := testConfig(h)
	cfg.BackoffBase = time.Minute
	cfg.BackoffMax = time.Minute
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, "svc", func(discovery.Snapshot) {}) }()
	e := h.next(t)
	e.fetch.reply <- failure(0)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want %v", err, context.Canceled)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Watch took %v to return after cancel", d)
		}
	case <-time.After(testTimeout):
		t.Fatal("Watch did not return after cancel")
	}
}

func TestWatchBadService(t *testing.T) {
	h := newHarness()
	s := newTestSource(t, h, testConfig(h), 0.5)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	for _, name := range []string{"", "a/b", "a b", "a?b", "a#b", "a\x00b"} {
		if err := s.Watch(ctx, name, func(discovery.Snapshot) {}); err == nil {
			t.Errorf("Watch(%q) = nil, want an error", name)
		}
	}
	if err := s.Watch(ctx, "svc", nil); err == nil {
		t.Error("Watch with a nil publish func = nil, want an error")
	}
	if len(h.events) != 0 {
		t.Errorf("invalid watches did %v", <-h.events)
	}
}

func TestWatchLogs(t *testing.T) {
	h := newHarness()
	var buf syncBuffer
	cfg := testConfig(h)
	cfg.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	runScript(t, h, newTestSource(t, h, cfg, 0.5), []step{
		fetchStep(0, answer(100, 0, entryA)),
		publishStep(snap(100, epA)),
		sleepStep(112500 * time.Microsecond),
		fetchStep(100, answer(50, time.Second, entryA)),
		fetchStep(50, failure(time.Second)),
		sleepStep(250 * time.Millisecond),
	})
	out := buf.String()
	for _, want := range []string{
		`"msg":"index went backwards; resetting the watch","component":"discovery.consul","service":"svc","index":50,"previous_index":100`,
		`"msg":"query failed; keeping the last snapshot","component":"discovery.consul","service":"svc","error":"consul: health query for \"svc\": ` + errConsul.Error(),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log does not contain %s; log:\n%s", want, out)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
