package backend

import (
	"context"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestLatency(t *testing.T) {
	const latency = 200 * time.Millisecond
	cfg := testConfig(t)
	cfg.Latency = latency
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	cc := dial(t, r.Addr())
	c := userpb.NewUserClient(cc)

	timed := func() (time.Duration, error) {
		start := time.Now()
		_, err := c.GetUserList(ctx, &userpb.PageInfo{})
		return time.Since(start), err
	}
	if d, err := timed(); err != nil || d < latency {
		t.Errorf("call with %v latency took %v (err %v), want at least the latency", latency, d, err)
	}
	// Health checks are not delayed.
	start := time.Now()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d >= latency {
		t.Errorf("health check took %v, want no added latency", d)
	}
	// A deadline shorter than the latency ends the call.
	dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer dcancel()
	if _, err := c.GetUserList(dctx, &userpb.PageInfo{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call with a 50ms deadline: %v, want DeadlineExceeded", err)
	}
	// The backend recovers.
	r.SetLatency(0)
	if d, err := timed(); err != nil || d >= latency {
		t.Errorf("call after SetLatency(0) took %v (err %v), want well under %v", d, err, latency)
	}
	r.SetLatency(2 * latency)
	if d, err := timed(); err != nil || d < 2*latency {
		t.Errorf("call after SetLatency(%v) took %v (err %v)", 2*latency, d, err)
	}
}

// waitReport waits on the collector until the report of id satisfies ok.
func waitReport(ctx context.Context, t *testing.T, c *loadreport.Collector, id, what string, ok func(loadreport.Report) bool) loadreport.Report {
	t.Helper()
	for {
		l := c.Loads()
		if r, found := l.Report(id); found && ok(r) {
			return r
		}
		select {
		case <-l.Changed:
		case <-ctx.Done():
			r, _ := l.Report(id)
			t.Fatalf("no report with %s; last %+v, stream %+v", what, r, l.Streams[id])
		}
	}
}

// TestORCAReports reads a real backend's load through a Collector: QPS
// after calls, errors, a slow call in flight, and the application
// utilization the backend sets. Reports need no lb-token even when calls
// do.
func TestORCAReports(t *testing.T) {
	cfg := testConfig(t)
	cfg.ORCAMinInterval = 50 * time.Millisecond
	cfg.LoadWindow = time.Second
	cfg.RequireLBToken = true
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	col, err := loadreport.NewCollector(loadreport.Config{Interval: 50 * time.Millisecond, Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	col.Update(discovery.Snapshot{Service: cfg.Service, Endpoints: []discovery.Endpoint{
		{ID: r.ID(), Addr: netip.MustParseAddrPort(r.Addr()), Weight: 1},
	}})
	waitReport(ctx, t, col, r.ID(), "a first report", func(loadreport.Report) bool { return true })

	c := userpb.NewUserClient(dial(t, r.Addr()))
	tctx := withToken(ctx, lbtoken.ForID(r.ID()))
	for range 20 {
		if _, err := c.GetUserList(tctx, &userpb.PageInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	rep := waitReport(ctx, t, col, r.ID(), "QPS > 0", func(r loadreport.Report) bool { return r.QPS > 0 })
	t.Logf("after 20 calls: QPS %.1f", rep.QPS)

	if _, err := c.GetUserList(tctx, &userpb.PageInfo{PSize: MaxPageSize + 1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad page size: %v", err)
	}
	waitReport(ctx, t, col, r.ID(), "EPS > 0", func(r loadreport.Report) bool { return r.EPS > 0 })

	r.SetLatency(time.Second)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := c.GetUserList(tctx, &userpb.PageInfo{}); err != nil {
			t.Errorf("slow call: %v", err)
		}
	})
	waitReport(ctx, t, col, r.ID(), "a call in flight", func(r loadreport.Report) bool { return r.InFlight >= 1 })
	wg.Wait()
	waitReport(ctx, t, col, r.ID(), "no call in flight", func(r loadreport.Report) bool { return r.InFlight == 0 })

	r.SetAppUtilization(0.6)
	waitReport(ctx, t, col, r.ID(), "application utilization 0.6", func(r loadreport.Report) bool { return r.AppUtil == 0.6 })
}

// TestCPUBurn checks that CPUBurn makes the backend's measured CPU
// utilization rise, and that it falls back when the burn stops.
func TestCPUBurn(t *testing.T) {
	if testing.Short() {
		t.Skip("burns a core for a few seconds")
	}
	cfg := testConfig(t)
	cfg.CPUBurn = 1
	cfg.LoadWindow = 500 * time.Millisecond
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	procs := float64(runtime.GOMAXPROCS(0))

	// poll waits until the utilization, averaged over a window that began
	// after the phase did, satisfies ok.
	poll := func(what string, ok func(cpu float64) bool) float64 {
		t.Helper()
		phase := time.Now()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			cpu := r.Recorder().Metrics().CPU
			if time.Since(phase) > 2*cfg.LoadWindow && ok(cpu) {
				return cpu
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("CPU utilization never %s; last %.3f", what, cpu)
			}
		}
	}
	busy := poll("rose", func(cpu float64) bool { return cpu >= 0.4/procs })
	r.SetCPUBurn(0)
	idle := poll("fell", func(cpu float64) bool { return cpu < 0.2/procs })
	r.SetCPUBurn(0.5)
	half := poll("rose again", func(cpu float64) bool { return cpu >= 0.2/procs })
	t.Logf("GOMAXPROCS %v: CPU utilization %.3f burning a core, %.3f idle, %.3f burning half a core", procs, busy, idle, half)
}

// TestDrainEndsORCAStreams checks that an open load report stream does not
// hold up the graceful stop: it ends with Unavailable.
func TestDrainEndsORCAStreams(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 5 * time.Second
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	stream, err := orcasvc.NewOpenRcaServiceClient(dial(t, r.Addr())).StreamCoreMetrics(ctx,
		&orcasvc.OrcaLoadReportRequest{ReportInterval: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := r.stop(t); err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if d := time.Since(start); d >= cfg.ShutdownTimeout {
		t.Errorf("stop took %v, want well under the shutdown timeout %v", d, cfg.ShutdownTimeout)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Errorf("stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
}

func TestNewClampsLoadSettings(t *testing.T) {
	for _, tc := range []struct {
		min, window         time.Duration
		wantMin, wantWindow time.Duration
	}{
		{0, 0, time.Second, 5 * time.Second},
		{time.Millisecond, time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond},
		{2 * time.Second, time.Hour, 2 * time.Second, time.Minute},
	} {
		cfg := testConfig(t)
		cfg.ORCAMinInterval, cfg.LoadWindow = tc.min, tc.window
		b, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		b.Serve(canceled())
		if b.cfg.ORCAMinInterval != tc.wantMin || b.rec.Window() != tc.wantWindow {
			t.Errorf("ORCA min interval %v, load window %v: got %v, %v; want %v, %v",
				tc.min, tc.window, b.cfg.ORCAMinInterval, b.rec.Window(), tc.wantMin, tc.wantWindow)
		}
		if got := b.orca.Interval(time.Nanosecond); got != tc.wantMin {
			t.Errorf("reporter floor %v, want %v", got, tc.wantMin)
		}
	}
}

// TestCapacityUtilization: with a capacity, the mean calls in flight over
// the load window, divided by it, are reported as application utilization,
// until the service sets one itself.
func TestCapacityUtilization(t *testing.T) {
	cfg := testConfig(t)
	cfg.ORCAMinInterval = 50 * time.Millisecond
	cfg.LoadWindow = time.Second
	cfg.Capacity = 4
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	col, err := loadreport.NewCollector(loadreport.Config{Interval: 50 * time.Millisecond, Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	col.Update(discovery.Snapshot{Service: cfg.Service, Endpoints: []discovery.Endpoint{
		{ID: r.ID(), Addr: netip.MustParseAddrPort(r.Addr()), Weight: 1},
	}})
	waitReport(ctx, t, col, r.ID(), "an idle report", func(r loadreport.Report) bool { return r.AppUtil == 0 })

	// Two callers back to back on 100 ms calls: about two calls in flight
	// on average, a utilization of about 2/4.
	r.SetLatency(100 * time.Millisecond)
	c := userpb.NewUserClient(dial(t, r.Addr()))
	loadCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for i := 0; i < 200 && loadCtx.Err() == nil; i++ {
				if _, err := c.GetUserList(loadCtx, &userpb.PageInfo{}); err != nil && loadCtx.Err() == nil {
					t.Errorf("call: %v", err)
				}
			}
		})
	}
	waitReport(ctx, t, col, r.ID(), "utilization about 2/4", func(r loadreport.Report) bool { return r.AppUtil > 0.4 && r.AppUtil <= 0.5 })
	r.SetAppUtilization(0.9)
	waitReport(ctx, t, col, r.ID(), "the service's own utilization", func(r loadreport.Report) bool { return r.AppUtil == 0.9 })
	stop()
	wg.Wait()
}
