package loadreport

import (
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/orca"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

func TestCollectorConfig(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config // Logger and DialOptions not compared
	}{
		{"zero", Config{}, DefaultConfig()},
		{"defaults", DefaultConfig(), DefaultConfig()},
		{"short interval", Config{Interval: 100 * time.Millisecond}, Config{
			Interval: 100 * time.Millisecond, TTL: 3 * time.Second, BackoffBase: 250 * time.Millisecond,
			BackoffMax: 30 * time.Second, UnimplementedRetry: 5 * time.Minute,
		}},
		{"long interval", Config{Interval: 10 * time.Second}, Config{
			Interval: 10 * time.Second, TTL: 30 * time.Second, BackoffBase: 250 * time.Millisecond,
			BackoffMax: 30 * time.Second, UnimplementedRetry: 5 * time.Minute,
		}},
		{"TTL and backoff max raised", Config{Interval: 10 * time.Millisecond, TTL: time.Nanosecond, BackoffBase: time.Minute, BackoffMax: time.Second},
			Config{Interval: 10 * time.Millisecond, TTL: 20 * time.Millisecond, BackoffBase: time.Minute,
				BackoffMax: time.Minute, UnimplementedRetry: 5 * time.Minute}},
		{"interval of a minute", Config{Interval: time.Minute, TTL: time.Minute}, Config{
			Interval: time.Minute, TTL: 2 * time.Minute, BackoffBase: 250 * time.Millisecond,
			BackoffMax: 30 * time.Second, UnimplementedRetry: 5 * time.Minute,
		}},
	}
	ignore := cmpopts.IgnoreFields(Config{}, "Logger", "DialOptions", "Credentials")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, ignore); diff != "" {
				t.Errorf("withDefaults (-want +got):\n%s", diff)
			}
			if got.Logger == nil {
				t.Error("no logger")
			}
		})
	}
	for _, cfg := range []Config{{Interval: -1}, {TTL: -1}, {BackoffBase: -1}, {BackoffMax: -1}, {UnimplementedRetry: -1}} {
		if c, err := NewCollector(cfg); err == nil || !strings.Contains(err.Error(), "negative") {
			if c != nil {
				c.Close()
			}
			t.Errorf("NewCollector(%+v) error = %v, want one about a negative value", cfg, err)
		}
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("%+v.Validate() = %v, want an error about a negative value", cfg, err)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("the zero Config: Validate() = %v, want nil (defaults)", err)
	}
	// Out-of-range intervals are rejected with the value, never clamped.
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{time.Nanosecond, "loadreport: interval 1ns is outside [10ms, 1m0s]"},
		{9 * time.Millisecond, "loadreport: interval 9ms is outside [10ms, 1m0s]"},
		{time.Minute + time.Millisecond, "loadreport: interval 1m0.001s is outside [10ms, 1m0s]"},
		{2 * time.Minute, "loadreport: interval 2m0s is outside [10ms, 1m0s]"},
	} {
		cfg := Config{Interval: tc.d}
		if err := cfg.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("Config{Interval: %v}.Validate() = %v, want %q", tc.d, err, tc.want)
		}
		if c, err := NewCollector(cfg); err == nil {
			c.Close()
			t.Errorf("NewCollector(Config{Interval: %v}) accepted it", tc.d)
		}
	}
}

func newTestCollector(t *testing.T, cfg Config, clk clock.Clock) *Collector {
	t.Helper()
	cfg.Logger = testLogger(t)
	c, err := newCollector(cfg, clk, func() float64 { return 0.5 }) // no jitter
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// waitChanged waits for ch to be closed.
func waitChanged(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("no change signalled: %s", what)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestCollectorFollowsEndpoints runs real reporters on loopback: the
// collector opens a stream per endpoint, keeps each one's report, and
// closes the stream of an endpoint that leaves or moves. It runs with the
// collector's own HTTP/2 streams and with grpc.ClientConn streams
// (Config.DialOptions), which decode the same reports.
func TestCollectorFollowsEndpoints(t *testing.T) {
	t.Run("h2", func(t *testing.T) { testCollectorFollowsEndpoints(t, nil) })
	t.Run("grpc.ClientConn", func(t *testing.T) {
		testCollectorFollowsEndpoints(t, []grpc.DialOption{grpc.WithUserAgent("loadreport-test")})
	})
}

func testCollectorFollowsEndpoints(t *testing.T, dialOpts []grpc.DialOption) {
	ctx := testContext(t)
	rcfg := ReporterConfig{MinInterval: 50 * time.Millisecond}
	srcA, srcB, srcC := &fixedMetrics{}, &fixedMetrics{}, &fixedMetrics{}
	srcA.set(Metrics{CPU: 0.25, QPS: 10, InFlight: 2, Concurrency: 1.5})
	srcB.set(Metrics{AppUtil: 0.5, QPS: 20, EPS: 1, Utilization: map[string]float64{"disk": 0.5}})
	srcC.set(Metrics{CPU: 0.75})
	addrA, _ := serveReporter(t, newTestReporter(t, srcA, rcfg))
	addrB, openB := serveReporter(t, newTestReporter(t, srcB, rcfg))
	addrC, _ := serveReporter(t, newTestReporter(t, srcC, rcfg))

	c := newTestCollector(t, Config{Interval: 50 * time.Millisecond, DialOptions: dialOpts}, clock.Real{})
	first := c.Changed()
	c.Update(snapshot("a", addrA, "b", addrB))
	waitChanged(t, first, "endpoints tracked")
	if got := c.Loads().Streams; len(got) != 2 || got["a"].Addr != addrA || got["b"].Addr != addrB {
		t.Errorf("Streams right after Update = %+v, want a and b at their addresses", got)
	}

	// Wait on Changed until both reports are in.
	for {
		l := c.Loads()
		if len(l.Reports) == 2 {
			break
		}
		select {
		case <-l.Changed:
		case <-ctx.Done():
			t.Fatalf("reports never arrived: %+v", l)
		}
	}
	l := c.Loads()
	opts := cmpopts.IgnoreFields(Report{}, "At", "Expires")
	wantA := Report{CPU: 0.25, QPS: 10, InFlight: 2, Concurrency: 1.5, Named: map[string]float64{InFlightMetric: 2, ConcurrencyMetric: 1.5}}
	wantB := Report{AppUtil: 0.5, QPS: 20, EPS: 1, Utilization: map[string]float64{"disk": 0.5}, Named: map[string]float64{InFlightMetric: 0, ConcurrencyMetric: 0}}
	if diff := cmp.Diff(map[string]Report{"a": wantA, "b": wantB}, l.Reports, opts); diff != "" {
		t.Errorf("Reports (-want +got):\n%s", diff)
	}
	for id, st := range l.Streams {
		if !st.Connected || st.Unimplemented || st.LastError != nil {
			t.Errorf("stream %s: %+v, want connected", id, st)
		}
	}
	if r, ok := c.Load("a"); !ok || r.Expires.Sub(r.At) != 3*time.Second {
		t.Errorf("Load(a) = %+v, %v; want a report fresh for 3 s", r, ok)
	}

	// b leaves: its report goes at once, its stream and goroutine end.
	c.Update(snapshot("a", addrA))
	if _, ok := c.Load("b"); ok {
		t.Error("b still has a report after leaving")
	}
	if _, ok := c.Loads().Streams["b"]; ok {
		t.Error("b still has a stream state after leaving")
	}
	eventually(ctx, t, "b's server stream to end", func() bool { return openB.Load() == 0 })
	eventually(ctx, t, "b's goroutine to end", func() bool { return c.running.Load() == 1 })

	// a moves to C's address: its stream restarts there.
	c.Update(snapshot("a", addrC))
	eventually(ctx, t, "a's report from its new address", func() bool {
		r, ok := c.Load("a")
		return ok && r.CPU == 0.75
	})
	if got := c.Loads().Streams["a"].Addr; got != addrC {
		t.Errorf("a's stream address = %v, want %v", got, addrC)
	}

	c.Update(snapshot())
	eventually(ctx, t, "every stream goroutine to end", func() bool { return c.running.Load() == 0 })
	if l := c.Loads(); len(l.Reports) != 0 || len(l.Streams) != 0 {
		t.Errorf("Loads after every endpoint left = %+v, want empty", l)
	}
}

// TestCollectorUnimplemented checks that an endpoint without ORCA is asked
// once, then again only after UnimplementedRetry or when it moves.
func TestCollectorUnimplemented(t *testing.T) {
	ctx := testContext(t)
	clk := newFakeClock()
	addr, calls := unimplementedServer(t)
	c := newTestCollector(t, Config{}, clk)
	c.Update(snapshot("plain", addr))

	eventually(ctx, t, "the stream to be marked Unimplemented", func() bool {
		return c.Loads().Streams["plain"].Unimplemented
	})
	eventually(ctx, t, "the 5 min retry timer", func() bool { return clk.hasTimer(5 * time.Minute) })
	st := c.Loads().Streams["plain"]
	if status.Code(st.LastError) != codes.Unimplemented || st.Connected || st.Failures != 0 {
		t.Errorf("stream state %+v, want Unimplemented, not connected, no failures", st)
	}
	never(t, "a second call before the retry interval", 300*time.Millisecond, func() bool { return calls.Load() > 1 })

	clk.Advance(5*time.Minute - time.Second)
	never(t, "a second call before the retry interval", 100*time.Millisecond, func() bool { return calls.Load() > 1 })
	clk.Advance(time.Second)
	eventually(ctx, t, "the retry after 5 min", func() bool { return calls.Load() == 2 })
	eventually(ctx, t, "the next 5 min retry timer", func() bool { return clk.hasTimer(5 * time.Minute) })
	if got := calls.Load(); got != 2 {
		t.Errorf("%d calls after one retry interval, want 2", got)
	}

	// The endpoint moves to an address that serves ORCA: asked at once.
	src := &fixedMetrics{}
	src.set(Metrics{QPS: 3})
	orcaAddr, _ := serveReporter(t, newTestReporter(t, src, ReporterConfig{}))
	c.Update(snapshot("plain", orcaAddr))
	eventually(ctx, t, "a report from the new address", func() bool {
		_, ok := c.Load("plain")
		return ok
	})
	if st := c.Loads().Streams["plain"]; st.Unimplemented || !st.Connected {
		t.Errorf("stream state %+v after moving, want connected", st)
	}
}

// TestCollectorExpiry checks with a fake clock that a report expires TTL
// after it arrived, that expiry signals a change, and that the TTL
// stretches for endpoints that report less often than asked.
func TestCollectorExpiry(t *testing.T) {
	ctx := testContext(t)
	clk := newFakeClock()
	srv := newScriptedORCA()
	addr, _ := serve(t, func(s *grpc.Server) { orcasvc.RegisterOpenRcaServiceServer(s, srv) })
	c := newTestCollector(t, Config{}, clk) // 1 s interval, 3 s TTL
	c.Update(snapshot("e", addr))
	t0 := clk.Now()

	srv.send(ctx, t, &orcapb.OrcaLoadReport{CpuUtilization: 0.5})
	eventually(ctx, t, "the first report", func() bool { _, ok := c.Load("e"); return ok })
	r, _ := c.Load("e")
	if !r.At.Equal(t0) || !r.Expires.Equal(t0.Add(3*time.Second)) || r.Age(t0.Add(time.Second)) != time.Second {
		t.Errorf("report at %v expiring %v, want at %v expiring 3 s later", r.At, r.Expires, t0)
	}
	eventually(ctx, t, "the expiry timer", func() bool { return clk.hasTimer(3 * time.Second) })
	changed := c.Changed()

	clk.Advance(3*time.Second - time.Millisecond)
	never(t, "expiry before the TTL", 100*time.Millisecond, func() bool { _, ok := c.Load("e"); return !ok })
	clk.Advance(time.Millisecond)
	waitChanged(t, changed, "expiry")
	if _, ok := c.Load("e"); ok {
		t.Error("report still there after its TTL")
	}
	if st := c.Loads().Streams["e"]; !st.Connected {
		t.Errorf("stream %+v, want still connected: only the report expired", st)
	}

	// The next report comes 3 s after the last one: it stays fresh for
	// 3 × 3 s.
	srv.send(ctx, t, &orcapb.OrcaLoadReport{CpuUtilization: 0.5})
	eventually(ctx, t, "the second report", func() bool { _, ok := c.Load("e"); return ok })
	if r, _ := c.Load("e"); r.Expires.Sub(r.At) != 9*time.Second {
		t.Errorf("second report fresh for %v, want 9s (3 × the 3 s gap)", r.Expires.Sub(r.At))
	}
	eventually(ctx, t, "the expiry timer", func() bool { return clk.hasTimer(9 * time.Second) })
	clk.Advance(time.Minute)
	eventually(ctx, t, "the second report to expire", func() bool { _, ok := c.Load("e"); return !ok })

	// A gap of a minute stretches the TTL to its cap of 2 min.
	srv.send(ctx, t, &orcapb.OrcaLoadReport{CpuUtilization: 0.5})
	eventually(ctx, t, "the third report", func() bool { _, ok := c.Load("e"); return ok })
	if r, _ := c.Load("e"); r.Expires.Sub(r.At) != MaxStretchedTTL {
		t.Errorf("third report fresh for %v, want %v", r.Expires.Sub(r.At), MaxStretchedTTL)
	}
}

// TestCollectorChangedSignal checks that a report repeating the same values
// refreshes the snapshot without signalling, and a new value signals.
func TestCollectorChangedSignal(t *testing.T) {
	ctx := testContext(t)
	clk := newFakeClock()
	srv := newScriptedORCA()
	addr, _ := serve(t, func(s *grpc.Server) { orcasvc.RegisterOpenRcaServiceServer(s, srv) })
	c := newTestCollector(t, Config{}, clk)
	c.Update(snapshot("e", addr))

	srv.send(ctx, t, &orcapb.OrcaLoadReport{RpsFractional: 1})
	eventually(ctx, t, "the first report", func() bool { _, ok := c.Load("e"); return ok })
	l := c.Loads()
	clk.Advance(time.Second)
	srv.send(ctx, t, &orcapb.OrcaLoadReport{RpsFractional: 1})
	eventually(ctx, t, "the repeated report", func() bool { r, _ := c.Load("e"); return r.At.After(l.Reports["e"].At) })
	if isClosed(l.Changed) {
		t.Error("a report with the same values signalled a change")
	}
	srv.send(ctx, t, &orcapb.OrcaLoadReport{RpsFractional: 2})
	waitChanged(t, l.Changed, "a new QPS")
	if r, _ := c.Load("e"); r.QPS != 2 {
		t.Errorf("QPS %v, want 2", r.QPS)
	}
	// Values that make no sense are read as 0 or the largest float64.
	srv.send(ctx, t, &orcapb.OrcaLoadReport{CpuUtilization: -1, Eps: math.Inf(1), NamedMetrics: map[string]float64{InFlightMetric: 4}})
	eventually(ctx, t, "the odd report", func() bool { r, _ := c.Load("e"); return r.InFlight == 4 })
	if r, _ := c.Load("e"); r.CPU != 0 || r.EPS != math.MaxFloat64 {
		t.Errorf("CPU %v, EPS %v; want 0 and the largest float64", r.CPU, r.EPS)
	}
}

// TestCollectorBackoff checks the waits between attempts on a failing
// endpoint, exactly with a fake clock and no jitter, and that a stream that
// delivered a report resets them.
func TestCollectorBackoff(t *testing.T) {
	ctx := testContext(t)
	clk := newFakeClock()
	srv := newScriptedORCA()
	srv.failWith(status.Error(codes.Unavailable, "overloaded"))
	addr, _ := serve(t, func(s *grpc.Server) { orcasvc.RegisterOpenRcaServiceServer(s, srv) })
	c := newTestCollector(t, Config{BackoffBase: 250 * time.Millisecond, BackoffMax: time.Second}, clk)
	c.Update(snapshot("e", addr))

	for i, wait := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, time.Second} {
		eventually(ctx, t, "the attempt's backoff timer", func() bool { return clk.hasTimer(wait) })
		if got := srv.calls.Load(); got != int64(i+1) {
			t.Fatalf("%d calls before backoff %d, want %d", got, i+1, i+1)
		}
		st := c.Loads().Streams["e"]
		if st.Failures != i+1 || status.Code(st.LastError) != codes.Unavailable || st.Connected {
			t.Errorf("after %d failures: %+v", i+1, st)
		}
		clk.Advance(wait)
		eventually(ctx, t, "the next attempt", func() bool { return srv.calls.Load() == int64(i+2) })
	}

	// The endpoint recovers: a report arrives, then the stream fails; the
	// backoff starts over.
	srv.fail.Store(nil)
	eventually(ctx, t, "the last backoff timer", func() bool { return clk.hasTimer(time.Second) })
	clk.Advance(time.Second)
	srv.send(ctx, t, &orcapb.OrcaLoadReport{RpsFractional: 1})
	eventually(ctx, t, "connected", func() bool { return c.Loads().Streams["e"].Connected })
	if st := c.Loads().Streams["e"]; st.Failures != 0 || st.LastError != nil {
		t.Errorf("connected stream %+v, want no failures or error", st)
	}
	changed := c.Changed()
	srv.ends <- errors.New("gone")
	waitChanged(t, changed, "the stream failing")
	eventually(ctx, t, "the first backoff again", func() bool { return clk.hasTimer(250 * time.Millisecond) })
	if st := c.Loads().Streams["e"]; st.Connected || st.Failures != 1 {
		t.Errorf("stream after failing %+v, want disconnected with 1 failure", st)
	}
	if _, ok := c.Load("e"); !ok {
		t.Error("a failed stream dropped its report before the TTL")
	}
}

// TestCollectorGRPCOrcaServer reads a backend that serves grpc-go's own
// orca service: it sends a first report at once (then every 30 s).
func TestCollectorGRPCOrcaServer(t *testing.T) {
	ctx := testContext(t)
	smr := orca.NewServerMetricsRecorder()
	smr.SetCPUUtilization(0.3)
	smr.SetQPS(5)
	smr.SetNamedUtilization("queue", 0.2)
	addr, _ := serve(t, func(s *grpc.Server) {
		if err := orca.Register(s, orca.ServiceOptions{ServerMetricsProvider: smr}); err != nil {
			t.Fatal(err)
		}
	})
	c := newTestCollector(t, Config{}, clock.Real{})
	c.Update(snapshot("go", addr))
	eventually(ctx, t, "the report", func() bool { _, ok := c.Load("go"); return ok })
	r, _ := c.Load("go")
	want := Report{CPU: 0.3, QPS: 5, Utilization: map[string]float64{"queue": 0.2}}
	if diff := cmp.Diff(want, r, cmpopts.IgnoreFields(Report{}, "At", "Expires")); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
}

func TestCollectorClose(t *testing.T) {
	ctx := testContext(t)
	addr, open := serveReporter(t, newTestReporter(t, &fixedMetrics{}, ReporterConfig{}))
	c, err := NewCollector(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c.Update(snapshot("e", addr, "bad", netip.AddrPort{}))
	if _, ok := c.Loads().Streams["bad"]; ok {
		t.Error("an endpoint without an address is tracked")
	}
	eventually(ctx, t, "the report", func() bool { _, ok := c.Load("e"); return ok })
	c.Close()
	if n := c.running.Load(); n != 0 {
		t.Errorf("%d stream goroutines after Close", n)
	}
	c.Close() // safe twice
	c.Update(snapshot("f", addr))
	if _, ok := c.Loads().Streams["f"]; ok {
		t.Error("Update after Close tracked an endpoint")
	}
	eventually(ctx, t, "the server's stream to end", func() bool { return open.Load() == 0 })
}

func BenchmarkCollectorReport(b *testing.B) {
	c, err := newCollector(Config{Logger: slog.New(slog.DiscardHandler)}, clock.Real{}, clock.RandFloat)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// 100 endpoints tracked without streams: the cost of recording one
	// report and publishing a snapshot.
	c.mu.Lock()
	for i := range 100 {
		id := "e" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		c.streams[id] = &stream{id: id, cancel: func() {}}
	}
	s := c.streams["eaa"]
	c.mu.Unlock()
	rep := &orcapb.OrcaLoadReport{RpsFractional: 1, CpuUtilization: 0.5}
	b.ReportAllocs()
	for b.Loop() {
		c.received(s, rep)
	}
}
