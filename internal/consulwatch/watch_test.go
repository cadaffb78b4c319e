package consulwatch

import (
	"github.com/lookaside-lb/lookaside/internal/syncbuf"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 10 * time.Second

// fakeClock fires timers only when the test says so; every timer is an
// event.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time // guarded by mu
	events chan ev
}

type ev struct {
	sleep   time.Duration
	fire    func()
	fetch   uint64 // wait index, when reply is set
	wait    time.Duration
	reply   chan fetchReply
	probe   chan error
	deliver *Update[string]
	err     error
}

func (e ev) String() string {
	switch {
	case e.reply != nil:
		return fmt.Sprintf("fetch(%d)", e.fetch)
	case e.probe != nil:
		return "probe"
	case e.deliver != nil:
		return fmt.Sprintf("deliver(%+v)", *e.deliver)
	case e.err != nil:
		return "error(" + e.err.Error() + ")"
	}
	return fmt.Sprintf("sleep(%v)", e.sleep)
}

type fetchReply struct {
	v    string
	meta Meta
	err  error
	took time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	ch := make(chan time.Time, 1)
	c.events <- ev{sleep: d, fire: func() { ch <- c.advance(d) }}
	return ch, func() bool { return false }
}

func (c *fakeClock) next(t *testing.T) ev {
	t.Helper()
	select {
	case e := <-c.events:
		return e
	case <-time.After(testTimeout):
		t.Fatal("no event")
		return ev{}
	}
}

type rig struct {
	clk    *fakeClock
	logs   *syncbuf.Buffer
	w      *Watch[string]
	cancel context.CancelFunc
	done   chan error
}

func newRig(t *testing.T, withProbe bool) *rig {
	t.Helper()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), events: make(chan ev, 16)}
	logs := &syncbuf.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var probe func(context.Context) error
	if withProbe {
		probe = func(ctx context.Context) error {
			ch := make(chan error)
			clk.events <- ev{probe: ch}
			select {
			case err := <-ch:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	mon := NewMonitor(probe, clk, log, Hints{Token: "-test-token-flag"})
	fetch := func(ctx context.Context, idx uint64, wait time.Duration) (string, Meta, error) {
		ch := make(chan fetchReply)
		clk.events <- ev{fetch: idx, wait: wait, reply: ch}
		select {
		case r := <-ch:
			clk.advance(r.took)
			return r.v, r.meta, r.err
		case <-ctx.Done():
			return "", Meta{}, ctx.Err()
		}
	}
	w, err := New(Options{
		Name: "test", WaitTime: time.Minute, MinInterval: 100 * time.Millisecond,
		BackoffBase: 250 * time.Millisecond, BackoffMax: 30 * time.Second, Timeout: 10 * time.Second,
		Monitor: mon, Clock: clk, Rand: func() float64 { return 0.5 }, Logger: log,
	}, fetch)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &rig{clk: clk, logs: logs, w: w, cancel: cancel, done: make(chan error, 1)}
	go func() {
		r.done <- w.Run(ctx, func(u Update[string]) { clk.events <- ev{deliver: &u} }, func(err error) { clk.events <- ev{err: err} })
	}()
	t.Cleanup(func() {
		cancel()
		// Drain events until Run returns, answering nothing.
		for {
			select {
			case err := <-r.done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v", err)
				}
				return
			case <-clk.events:
			case <-time.After(testTimeout):
				t.Fatal("Run did not return")
			}
		}
	})
	return r
}

// expectFetch waits for a fetch with the wait index and answers it.
func (r *rig) expectFetch(t *testing.T, idx uint64, reply fetchReply) {
	t.Helper()
	e := r.clk.next(t)
	if e.reply == nil || e.fetch != idx {
		t.Fatalf("got %v, want fetch(%d)", e, idx)
	}
	e.reply <- reply
}

func (r *rig) expectSleep(t *testing.T, d time.Duration) {
	t.Helper()
	e := r.clk.next(t)
	if e.fire == nil || e.sleep != d {
		t.Fatalf("got %v, want sleep(%v)", e, d)
	}
	e.fire()
}

func (r *rig) expectDeliver(t *testing.T, want Update[string]) {
	t.Helper()
	e := r.clk.next(t)
	if e.deliver == nil || *e.deliver != want {
		t.Fatalf("got %v, want deliver(%+v)", e, want)
	}
}

func (r *rig) expectError(t *testing.T) {
	t.Helper()
	if e := r.clk.next(t); e.err == nil {
		t.Fatalf("got %v, want error", e)
	}
}

func (r *rig) expectProbe(t *testing.T, err error) {
	t.Helper()
	e := r.clk.next(t)
	if e.probe == nil {
		t.Fatalf("got %v, want probe", e)
	}
	e.probe <- err
}

func ok(v string, index uint64) fetchReply { return fetchReply{v: v, meta: Meta{Index: index}} }

var (
	errDown = errors.New(`Get "http://127.0.0.1:8500/v1/catalog/services": dial tcp 127.0.0.1:8500: connect: connection refused`)
	err403  = api.StatusError{Code: 403, Body: "Permission denied"}
)

// pace is MinInterval plus the jitter of Rand 0.5.
const pace = 112500 * time.Microsecond

func TestIndexRules(t *testing.T) {
	r := newRig(t, false)
	r.expectFetch(t, 0, ok("a", 0))
	r.expectDeliver(t, Update[string]{Value: "a", Index: 1, Fresh: true}) // 0 counts as 1
	// The blocking fetch follows the one at index 0 at once.
	r.expectFetch(t, 1, ok("a", 1)) // same index: nothing
	r.expectSleep(t, pace)
	r.expectFetch(t, 1, ok("b", 7))
	r.expectDeliver(t, Update[string]{Value: "b", Index: 7})
	r.expectSleep(t, pace)
	r.expectFetch(t, 7, ok("c", 3)) // backwards: fresh
	r.expectDeliver(t, Update[string]{Value: "c", Index: 3, Fresh: true})
	r.expectSleep(t, pace)
	r.expectFetch(t, 3, fetchReply{v: "d", meta: Meta{Index: 3}, took: time.Second})
	// The fetch took longer than the pace: the next one starts at once.
	r.expectFetch(t, 3, ok("d", 4))
	r.expectDeliver(t, Update[string]{Value: "d", Index: 4})
	r.expectSleep(t, pace)
}

func TestBackoffAndRecoveryWithoutProbe(t *testing.T) {
	r := newRig(t, false)
	r.expectFetch(t, 0, ok("a", 5))
	r.expectDeliver(t, Update[string]{Value: "a", Index: 5, Fresh: true})
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}
	for _, d := range want {
		r.expectFetch(t, 5, fetchReply{err: errDown})
		r.expectError(t)
		r.expectSleep(t, d) // jitter factor 1.0 at Rand 0.5
	}
	r.expectFetch(t, 5, ok("a", 5))
	r.expectSleep(t, pace)
	if got := r.logs.String(); !strings.Contains(got, `msg="Consul reachable again" after=3.75s`) {
		t.Errorf("logs lack the recovery line with the outage length:\n%s", got)
	}
}

func TestProbeEndsBackoff(t *testing.T) {
	r := newRig(t, true)
	r.expectFetch(t, 0, ok("a", 5))
	r.expectDeliver(t, Update[string]{Value: "a", Index: 5, Fresh: true})
	// Fail until the backoff is 8 s: 250 ms, 0.5, 1 without probes (<= 1 s).
	for _, d := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second} {
		r.expectFetch(t, 5, fetchReply{err: errDown})
		r.expectError(t)
		r.expectSleep(t, d)
	}
	r.expectFetch(t, 5, fetchReply{err: errDown})
	r.expectError(t)
	// 2 s of backoff: probe after 1 s; it fails; the backoff ends at 2 s.
	r.expectSleep(t, time.Second)
	r.expectProbe(t, errDown)
	r.expectSleep(t, time.Second)
	r.expectFetch(t, 5, fetchReply{err: errDown})
	r.expectError(t)
	// 4 s: the probe fails at 1 s, succeeds at 2 s: retry at once.
	r.expectSleep(t, time.Second)
	r.expectProbe(t, errDown)
	r.expectSleep(t, time.Second)
	r.expectProbe(t, nil)
	r.expectFetch(t, 5, ok("b", 9))
	r.expectDeliver(t, Update[string]{Value: "b", Index: 9})
	// Outage: from the first failure to this success.
	if got := r.logs.String(); !strings.Contains(got, `msg="Consul reachable again" after=5.75s`) {
		t.Errorf("logs lack the recovery line:\n%s", got)
	}
	r.expectSleep(t, pace)
}

func TestPermanentErrorsLoggedOncePerMinuteNoProbe(t *testing.T) {
	r := newRig(t, true)
	backoffs := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, d := range backoffs {
		r.expectFetch(t, 0, fetchReply{err: err403})
		r.expectError(t)
		r.expectSleep(t, d) // no probe: retrying cannot fix a 403 at once
		if i == 0 {
			continue
		}
	}
	r.expectFetch(t, 0, fetchReply{err: err403})
	r.expectError(t)
	r.expectSleep(t, 30*time.Second)
	logs := r.logs.String()
	// 0 s and 62.25 s and 122.25 s... : the failures at 0, 0.25, ... 32.25,
	// 62.25, 92.25: lines at 0 and 62.25 only.
	if n := strings.Count(logs, "level=ERROR"); n != 2 {
		t.Errorf("%d ERROR lines, want 2 (once per minute):\n%s", n, logs)
	}
	if !strings.Contains(logs, "service:read and node:read") || !strings.Contains(logs, "(-test-token-flag)") {
		t.Errorf("the ERROR line does not say what to do with the caller's hint:\n%s", logs)
	}
}

func TestAdviceNamesTheCallersSettings(t *testing.T) {
	lb := Hints{Token: "-consul-token-file or CONSUL_HTTP_TOKEN", Datacenter: "-consul-dc"}
	for _, tc := range []struct {
		kind      Kind
		hints     Hints
		want, not []string
	}{
		{ACLDenied, lb, []string{"service:read and node:read", "set the right token (-consul-token-file or CONSUL_HTTP_TOKEN)"}, nil},
		{ACLDenied, Hints{Token: `the target's "token" parameter`}, []string{`set the right token (the target's "token" parameter)`}, []string{"-consul"}},
		{ACLDenied, Hints{}, []string{"set the right token"}, []string{"-consul", "()"}},
		{NoDatacenter, lb, []string{"check the datacenter (-consul-dc) against `consul catalog datacenters`"}, nil},
		{NoDatacenter, Hints{}, []string{"check the datacenter against"}, []string{"-consul", "()"}},
		{Transient, lb, nil, []string{"-consul"}},
	} {
		got := tc.kind.Advice(tc.hints)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%v.Advice(%+v) = %q, want it to contain %q", tc.kind, tc.hints, got, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("%v.Advice(%+v) = %q, want no %q", tc.kind, tc.hints, got, n)
			}
		}
	}
}

func TestFilteredByACLsLogged(t *testing.T) {
	r := newRig(t, false)
	r.expectFetch(t, 0, fetchReply{v: "a", meta: Meta{Index: 3, FilteredByACLs: true}})
	r.expectDeliver(t, Update[string]{Value: "a", Index: 3, Fresh: true, Filtered: true})
	r.expectFetch(t, 3, fetchReply{v: "a", meta: Meta{Index: 4, FilteredByACLs: true}})
	r.expectDeliver(t, Update[string]{Value: "a", Index: 4, Filtered: true})
	r.expectSleep(t, pace)
	logs := r.logs.String()
	if n := strings.Count(logs, "level=ERROR"); n != 1 || !strings.Contains(logs, "Filtered-By-ACLs") {
		t.Errorf("want one ERROR line about ACL filtering:\n%s", logs)
	}
}

func TestKick(t *testing.T) {
	r := newRig(t, false)
	r.expectFetch(t, 0, ok("a", 5))
	r.expectDeliver(t, Update[string]{Value: "a", Index: 5, Fresh: true})
	e := r.clk.next(t)
	if e.reply == nil || e.fetch != 5 {
		t.Fatalf("got %v, want fetch(5)", e)
	}
	r.w.Kick() // cancels the blocking fetch
	r.expectSleep(t, pace)
	r.expectFetch(t, 0, ok("a", 5))
	// Same index and value, delivered because of the kick.
	r.expectDeliver(t, Update[string]{Value: "a", Index: 5, Fresh: true, Kicked: true})
	// The blocking fetch follows the kick's at once.
	r.expectFetch(t, 5, ok("a", 6))
	r.expectDeliver(t, Update[string]{Value: "a", Index: 6})
	r.expectSleep(t, pace)
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Kind
	}{
		{errDown, Transient},
		{api.StatusError{Code: 500, Body: "rpc error: No cluster leader"}, Transient},
		{api.StatusError{Code: 429, Body: "Your IP is issuing too many concurrent connections"}, Transient},
		{err403, ACLDenied},
		{fmt.Errorf("consul: health: %w", api.StatusError{Code: 403, Body: "ACL not found"}), ACLDenied},
		{api.StatusError{Code: 500, Body: "No path to datacenter"}, NoDatacenter},
		{errors.New("Unexpected response code: 500 (No path to datacenter)"), NoDatacenter},
		{errors.New("Unexpected response code: 403 (Permission denied)"), ACLDenied},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestOptionsRejected(t *testing.T) {
	good := Options{WaitTime: time.Minute, MinInterval: time.Millisecond, BackoffBase: time.Second, BackoffMax: time.Second, Timeout: time.Second}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []func(*Options){
		func(o *Options) { o.WaitTime = time.Millisecond },
		func(o *Options) { o.MinInterval = 0 },
		func(o *Options) { o.BackoffBase = 0 },
		func(o *Options) { o.BackoffMax = time.Millisecond },
		func(o *Options) { o.Timeout = 0 },
	} {
		o := good
		f(&o)
		if _, err := New(o, func(context.Context, uint64, time.Duration) (string, Meta, error) { return "", Meta{}, nil }); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func TestTransientFailuresWarnAtMostEveryTenSeconds(t *testing.T) {
	r := newRig(t, false)
	backoffs := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	for _, d := range backoffs {
		r.expectFetch(t, 0, fetchReply{err: errDown})
		r.expectError(t)
		r.expectSleep(t, d)
	}
	r.expectFetch(t, 0, fetchReply{err: errDown})
	r.expectError(t)
	r.expectSleep(t, 30*time.Second)
	// Failures at 0, .25, .75, 1.75, 3.75, 7.75, 15.75, 31.75 s: WARN at 0,
	// 15.75 and 31.75.
	if n := strings.Count(r.logs.String(), "level=WARN"); n != 3 {
		t.Errorf("%d WARN lines, want 3:\n%s", n, r.logs.String())
	}
}

func TestUrgentCapsBackoff(t *testing.T) {
	r := newRig(t, false)
	urgent := true
	r.w.opts.Urgent = func() bool { return urgent }
	for _, d := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, time.Second, time.Second} {
		r.expectFetch(t, 0, fetchReply{err: err403})
		r.expectError(t)
		r.expectSleep(t, d)
	}
}
