package loadreport

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
)

// fakeCPU is a process CPU time that tests set.
type fakeCPU struct {
	mu  sync.Mutex
	t   time.Duration
	err error
}

func (f *fakeCPU) time() (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t, f.err
}

func (f *fakeCPU) add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t += d
}

func newTestRecorder(t *testing.T, window time.Duration, procs int) (*Recorder, *fakeClock, *fakeCPU) {
	t.Helper()
	clk, cpu := newFakeClock(), &fakeCPU{}
	r, err := newRecorder(RecorderConfig{Window: window}, clk, cpu.time, func() int { return procs })
	if err != nil {
		t.Fatal(err)
	}
	return r, clk, cpu
}

func TestRecorderWindowConfig(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Duration
	}{
		{0, DefaultWindow},
		{time.Millisecond, MinWindow},
		{3 * time.Second, 3 * time.Second},
		{time.Hour, MaxWindow},
	} {
		r, err := NewRecorder(RecorderConfig{Window: tc.in})
		if err != nil {
			t.Fatalf("NewRecorder(window %v): %v", tc.in, err)
		}
		if got := r.Window(); got != tc.want {
			t.Errorf("window %v: Window() = %v, want %v", tc.in, got, tc.want)
		}
	}
	if _, err := NewRecorder(RecorderConfig{Window: -time.Second}); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("NewRecorder(negative window) error = %v, want one about a negative window", err)
	}
}

// TestRecorderSlidingRates drives calls and reads with a fake clock: with
// reads every 100 ms and a 1 s window, the rates are exact over the last
// second.
func TestRecorderSlidingRates(t *testing.T) {
	r, clk, cpu := newTestRecorder(t, time.Second, 2)
	step := 100 * time.Millisecond

	// 3 s at 10 calls (2 failed) and 50 ms of CPU per 100 ms.
	for i := range 30 {
		for j := range 10 {
			start := r.CallStarted()
			var err error
			if j < 2 {
				err = errors.New("boom")
			}
			r.CallFinished(start, err)
		}
		cpu.add(50 * time.Millisecond)
		clk.Advance(step)
		m := r.Metrics()
		if i < 9 {
			continue // the first second averages over less than a window
		}
		want := Metrics{QPS: 100, EPS: 20, CPU: 0.25}
		if diff := cmp.Diff(want, m, approx); diff != "" {
			t.Fatalf("after %v: Metrics (-want +got):\n%s", time.Duration(i+1)*step, diff)
		}
	}
	// Calls stop: the rates fall to 0 once the window has passed.
	for range 10 {
		clk.Advance(step)
		r.Metrics()
	}
	if diff := cmp.Diff(Metrics{}, r.Metrics(), approx); diff != "" {
		t.Errorf("a window after the last call: Metrics (-want +got):\n%s", diff)
	}
}

// TestRecorderConcurrency: the mean calls in flight over the window is
// steady where the instant's count is not. A lightly loaded server, one
// 5 ms call every 100 ms, has no call in flight at most instants but a
// concurrency of 0.05 at every read; four calls that last a whole step
// make 4.
func TestRecorderConcurrency(t *testing.T) {
	r, clk, _ := newTestRecorder(t, time.Second, 1)
	step := 100 * time.Millisecond
	for i := range 30 {
		start := r.CallStarted()
		clk.Advance(5 * time.Millisecond)
		r.CallFinished(start, nil)
		clk.Advance(step - 5*time.Millisecond)
		m := r.Metrics()
		if m.InFlight != 0 {
			t.Fatalf("step %d: InFlight = %d, want 0 between calls", i, m.InFlight)
		}
		if i >= 10 && math.Abs(m.Concurrency-0.05) > 1e-9 {
			t.Fatalf("step %d: Concurrency = %v, want 0.05", i, m.Concurrency)
		}
	}
	for i := range 20 {
		var starts []time.Time
		for range 4 {
			starts = append(starts, r.CallStarted())
		}
		clk.Advance(step)
		for _, s := range starts {
			r.CallFinished(s, nil)
		}
		m := r.Metrics()
		if i >= 10 && math.Abs(m.Concurrency-4) > 1e-9 {
			t.Fatalf("busy step %d: Concurrency = %v, want 4", i, m.Concurrency)
		}
	}
}

var approx = cmp.Comparer(func(a, b float64) bool { return math.Abs(a-b) < 1e-9 })

// TestRecorderFirstWindowAndSparseReads checks the spans rates are averaged
// over when the recorder is young or read rarely.
func TestRecorderFirstWindowAndSparseReads(t *testing.T) {
	r, clk, cpu := newTestRecorder(t, 10*time.Second, 4)
	for range 8 {
		r.CallFinished(r.CallStarted(), nil)
	}
	cpu.add(2 * time.Second)
	clk.Advance(2 * time.Second)
	// Over the 2 s since NewRecorder: 8 calls, 2 s of CPU on 4 cores.
	if diff := cmp.Diff(Metrics{QPS: 4, CPU: 0.25}, r.Metrics(), approx); diff != "" {
		t.Errorf("after 2 s (-want +got):\n%s", diff)
	}
	// Read again 60 s later: the rate covers the 60 s since the last read
	// (the newest sample at least a window old).
	for range 120 {
		r.CallFinished(r.CallStarted(), errors.New("x"))
	}
	clk.Advance(60 * time.Second)
	if diff := cmp.Diff(Metrics{QPS: 2, EPS: 2}, r.Metrics(), approx); diff != "" {
		t.Errorf("after 60 s more (-want +got):\n%s", diff)
	}
	// No time passed: no rate, not a division by zero.
	r2, _, _ := newTestRecorder(t, time.Second, 1)
	r2.CallStarted()
	if diff := cmp.Diff(Metrics{InFlight: 1}, r2.Metrics(), approx); diff != "" {
		t.Errorf("at once (-want +got):\n%s", diff)
	}
}

func TestRecorderCPUUnavailable(t *testing.T) {
	r, clk, cpu := newTestRecorder(t, time.Second, 1)
	cpu.mu.Lock()
	cpu.err = errors.New("no rusage")
	cpu.mu.Unlock()
	cpu.add(time.Second)
	clk.Advance(time.Second)
	if got := r.Metrics().CPU; got != 0 {
		t.Errorf("CPU = %v with no CPU time, want 0", got)
	}
}

func TestRecorderUtilizations(t *testing.T) {
	r, _, _ := newTestRecorder(t, time.Second, 1)
	for _, tc := range []struct{ in, want float64 }{
		{0.7, 0.7}, {2.5, 2.5}, {-1, 0}, {math.NaN(), 0}, {math.Inf(1), math.MaxFloat64}, {0, 0},
	} {
		r.SetAppUtilization(tc.in)
		if got := r.Metrics().AppUtil; got != tc.want {
			t.Errorf("SetAppUtilization(%v): AppUtil = %v, want %v", tc.in, got, tc.want)
		}
	}

	r.SetUtilization("disk", 0.5)
	r.SetUtilization("", 1) // ignored
	before := r.Metrics().Utilization
	r.SetUtilization("queue", 0.25)
	if diff := cmp.Diff(map[string]float64{"disk": 0.5}, before); diff != "" {
		t.Errorf("a returned map changed after SetUtilization (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{"disk": 0.5, "queue": 0.25}, r.Metrics().Utilization); diff != "" {
		t.Errorf("Utilization (-want +got):\n%s", diff)
	}
	r.DeleteUtilization("disk")
	r.DeleteUtilization("absent")
	if diff := cmp.Diff(map[string]float64{"queue": 0.25}, r.Metrics().Utilization); diff != "" {
		t.Errorf("Utilization after delete (-want +got):\n%s", diff)
	}
	r.DeleteUtilization("queue")
	if got := r.Metrics().Utilization; got != nil {
		t.Errorf("Utilization after deleting all = %v, want nil", got)
	}
}

func TestRecorderInterceptors(t *testing.T) {
	r, clk, _ := newTestRecorder(t, time.Second, 1)
	unary := r.UnaryServerInterceptor()
	stream := r.StreamServerInterceptor()
	ctx := context.Background()

	var inFlight int64
	call := func(method string, fail bool) {
		t.Helper()
		_, err := unary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, func(context.Context, any) (any, error) {
			inFlight = r.Metrics().InFlight
			if fail {
				return nil, errors.New("failed")
			}
			return "ok", nil
		})
		if (err != nil) != fail {
			t.Errorf("%s: err = %v", method, err)
		}
	}
	call("/lookaside.user.v1.User/GetUserList", false)
	if inFlight != 1 {
		t.Errorf("in flight during a counted call = %d, want 1", inFlight)
	}
	call("/lookaside.user.v1.User/GetUserList", true)
	call("/grpc.health.v1.Health/Check", true)
	if inFlight != 0 {
		t.Errorf("in flight during a health call = %d, want 0", inFlight)
	}
	err := stream(nil, nil, &grpc.StreamServerInfo{FullMethod: "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics"},
		func(any, grpc.ServerStream) error { return errors.New("not counted") })
	if err == nil {
		t.Error("the stream interceptor lost the handler's error")
	}
	err = stream(nil, nil, &grpc.StreamServerInfo{FullMethod: "/pkg.Svc/Stream"}, func(any, grpc.ServerStream) error {
		inFlight = r.Metrics().InFlight
		return nil
	})
	if err != nil || inFlight != 1 {
		t.Errorf("counted stream: err %v, in flight %d; want nil, 1", err, inFlight)
	}

	clk.Advance(time.Second)
	// Three counted calls, one failed, over 1 s.
	if diff := cmp.Diff(Metrics{QPS: 3, EPS: 1}, r.Metrics(), approx); diff != "" {
		t.Errorf("Metrics (-want +got):\n%s", diff)
	}
}

func TestRecorderRealCPU(t *testing.T) {
	if testing.Short() {
		t.Skip("burns CPU for 300 ms")
	}
	r, err := NewRecorder(RecorderConfig{Window: MinWindow})
	if err != nil {
		t.Fatal(err)
	}
	// Spin one goroutine for 300 ms: at least some CPU must show.
	deadline := time.Now().Add(300 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	if got := r.Metrics().CPU; got <= 0 || got > 1.5 {
		t.Errorf("CPU after spinning = %v, want in (0, 1.5] (spins %d)", got, x)
	}
}

func BenchmarkRecorderCall(b *testing.B) {
	r, err := NewRecorder(RecorderConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.CallFinished(r.CallStarted(), nil)
		}
	})
}

func BenchmarkRecorderMetrics(b *testing.B) {
	r, err := NewRecorder(RecorderConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r.Metrics()
	}
}
