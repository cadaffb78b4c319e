package loadreport

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/discovery"
)

const testTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	if n, err := strconv.Atoi(os.Getenv(memServerEnv)); err == nil {
		serveManyORCA(n)
	}
	goleak.VerifyTestMain(m)
}

// testContext is the 10 s context every test runs under.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testLogger discards logs unless the test is verbose.
func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// eventually polls cond every 5 ms until it holds, failing the test when ctx
// ends first.
func eventually(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// never checks that cond stays false for d.
func never(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			t.Fatalf("unexpectedly: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeClock is a clock whose time moves only with Advance. Timers fire
// (their channel receives) when Advance reaches them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer // pending, in creation order
}

type fakeTimer struct {
	at time.Time
	d  time.Duration
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), d: d, ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t.ch, func() bool { return false }
	}
	c.timers = append(c.timers, t)
	return t.ch, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.Index(c.timers, t)
		if i < 0 {
			return false
		}
		c.timers = slices.Delete(c.timers, i, i+1)
		return true
	}
}

// Advance moves the time forward by d and fires the timers it reaches.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		t.ch <- c.now
		return true
	})
}

// hasTimer reports whether a timer created for exactly d is pending.
func (c *fakeClock) hasTimer(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.timers, func(t *fakeTimer) bool { return t.d == d })
}

// serve serves srv's services on a loopback port until the test ends.
func serve(t *testing.T, register func(*grpc.Server), opts ...grpc.ServerOption) (netip.AddrPort, *grpc.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	register(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return netip.MustParseAddrPort(lis.Addr().String()), srv
}

// fixedMetrics is a MetricsProvider with set values.
type fixedMetrics struct {
	mu sync.Mutex
	m  Metrics
}

func (f *fixedMetrics) Metrics() Metrics {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m
}

func (f *fixedMetrics) set(m Metrics) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m = m
}

// newTestReporter returns a Reporter of src logging to the test.
func newTestReporter(t *testing.T, src MetricsProvider, cfg ReporterConfig) *Reporter {
	t.Helper()
	cfg.Logger = testLogger(t)
	r, err := NewReporter(src, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// serveReporter serves r on a loopback port, and counts its open streams.
func serveReporter(t *testing.T, r *Reporter) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	var open atomic.Int64
	count := grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		open.Add(1)
		defer open.Add(-1)
		return h(srv, ss)
	})
	addr, _ := serve(t, func(s *grpc.Server) { r.Register(s) }, count)
	return addr, &open
}

// scriptedORCA is an ORCA server that sends the reports it is given and
// ends a stream with the error it is given.
type scriptedORCA struct {
	orcasvc.UnimplementedOpenRcaServiceServer
	calls   atomic.Int64
	reports chan *orcapb.OrcaLoadReport
	fail    atomic.Pointer[error] // when set, streams end at once with it
	ends    chan error            // a value sent here ends the current stream
}

func newScriptedORCA() *scriptedORCA {
	return &scriptedORCA{reports: make(chan *orcapb.OrcaLoadReport), ends: make(chan error)}
}

func (s *scriptedORCA) failWith(err error) { s.fail.Store(&err) }

func (s *scriptedORCA) StreamCoreMetrics(_ *orcasvc.OrcaLoadReportRequest, stream orcasvc.OpenRcaService_StreamCoreMetricsServer) error {
	s.calls.Add(1)
	if err := s.fail.Load(); err != nil {
		return *err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case err := <-s.ends:
			return err
		case r := <-s.reports:
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

// send hands r to the stream open now.
func (s *scriptedORCA) send(ctx context.Context, t *testing.T, r *orcapb.OrcaLoadReport) {
	t.Helper()
	select {
	case s.reports <- r:
	case <-ctx.Done():
		t.Fatal("no stream took the report")
	}
}

// unimplementedServer answers every call with Unimplemented and counts
// them, as a gRPC server without ORCA does.
func unimplementedServer(t *testing.T) (netip.AddrPort, *atomic.Int64) {
	var calls atomic.Int64
	addr, _ := serve(t, func(*grpc.Server) {}, grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		calls.Add(1)
		return status.Error(codes.Unimplemented, "unknown service")
	}))
	return addr, &calls
}

// snapshot builds a discovery snapshot of endpoints given as id, addr pairs.
func snapshot(pairs ...any) discovery.Snapshot {
	s := discovery.Snapshot{Service: "svc"}
	for i := 0; i+1 < len(pairs); i += 2 {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{ID: pairs[i].(string), Addr: pairs[i+1].(netip.AddrPort), Weight: 1})
	}
	s.Endpoints = discovery.SortEndpoints(s.Endpoints)
	return s
}
