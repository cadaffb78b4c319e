package loadreport

import (
	"context"
	"fmt"
	"maps"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// Bounds and default of RecorderConfig.Window.
const (
	DefaultWindow = 5 * time.Second
	MinWindow     = 100 * time.Millisecond
	MaxWindow     = time.Minute
)

// windowSteps is the resolution of the sliding window: the recorder keeps a
// sample of its counters at most every Window/windowSteps, and the ring
// holds enough of them to always find one at least Window old.
const (
	windowSteps = 10
	ringSize    = windowSteps + 2
)

// RecorderConfig configures a Recorder.
type RecorderConfig struct {
	// Window is the span over which QPS, EPS and CPU utilization are
	// averaged. Default DefaultWindow (5 s); values are clamped to
	// [MinWindow, MaxWindow]; negative is rejected.
	Window time.Duration
}

// Metrics is what a Recorder measured, as one immutable value.
type Metrics struct {
	// CPU is the process's CPU time over the window divided by the wall
	// time and by GOMAXPROCS (which follows the container's CPU limit):
	// 0 idle, 1 every usable core busy. 0 where the platform cannot tell.
	CPU float64
	// AppUtil is the application utilization the service set, [0, ∞).
	AppUtil float64
	// QPS and EPS are the calls and the failed calls finished per second
	// over the window.
	QPS, EPS float64
	// InFlight is the number of calls running now.
	InFlight int64
	// Concurrency is the mean number of calls in flight over the window:
	// the time calls that finished in it spent in flight, divided by its
	// span (Little's law). Unlike InFlight, which is one instant's count
	// and often 0 on a lightly loaded server, it is steady, so it makes a
	// good utilization: Concurrency / capacity. A long call counts when it
	// finishes.
	Concurrency float64
	// Utilization holds the named utilizations the service set. Shared:
	// it must not be modified. Nil when there are none.
	Utilization map[string]float64
}

// Recorder measures the load of one server: its process's CPU utilization,
// the calls in flight, the rate of calls and of failed calls over a sliding
// window (counted by its interceptors), and the utilizations the service
// sets. It is the usual MetricsProvider of a Reporter.
//
// The call path costs a few atomic additions; reading (Metrics) takes a
// short lock. All methods are safe for concurrent use and do not block.
type Recorder struct {
	// Read-only after construction.
	window  time.Duration
	step    time.Duration // least spacing of the ring's samples
	clock   clock.Clock
	cpuTime func() (time.Duration, error)
	procs   func() int

	// Updated on the call path with atomics. errs is added after calls and
	// read before it, so a reader never sees more errors than calls.
	inFlight atomic.Int64
	calls    atomic.Uint64 // finished calls
	errs     atomic.Uint64 // finished calls that returned an error
	busy     atomic.Int64  // nanoseconds that finished calls spent in flight
	appUtil  atomic.Uint64 // math.Float64bits of the application utilization

	// util is the map of named utilizations, replaced whole on each change
	// (copy on write) under utilMu; readers load it without the lock.
	utilMu sync.Mutex
	util   atomic.Pointer[map[string]float64]

	mu     sync.Mutex
	ring   [ringSize]sample // guarded by mu: samples, oldest first from ring[(head+1)%ringSize]
	head   int              // guarded by mu: index of the newest sample
	filled int              // guarded by mu: number of samples in ring
}

// sample is the recorder's counters at one moment.
type sample struct {
	at     time.Time
	calls  uint64
	errs   uint64
	busy   time.Duration
	cpu    time.Duration
	cpuErr bool // the CPU time could not be read
}

// NewRecorder returns a Recorder whose window starts now. It rejects a
// negative window and clamps the others (see RecorderConfig).
func NewRecorder(cfg RecorderConfig) (*Recorder, error) {
	return newRecorder(cfg, clock.Real{}, processCPUTime, func() int { return runtime.GOMAXPROCS(0) })
}

func newRecorder(cfg RecorderConfig, clk clock.Clock, cpuTime func() (time.Duration, error), procs func() int) (*Recorder, error) {
	switch {
	case cfg.Window < 0:
		return nil, fmt.Errorf("loadreport: window %v is negative", cfg.Window)
	case cfg.Window == 0:
		cfg.Window = DefaultWindow
	}
	cfg.Window = min(max(cfg.Window, MinWindow), MaxWindow)
	r := &Recorder{
		window:  cfg.Window,
		step:    cfg.Window / windowSteps,
		clock:   clk,
		cpuTime: cpuTime,
		procs:   procs,
	}
	r.ring[0] = r.sampleNow(clk.Now())
	r.filled = 1
	return r, nil
}

// sampleNow reads the counters. errs is read before calls.
func (r *Recorder) sampleNow(now time.Time) sample {
	s := sample{at: now, errs: r.errs.Load()}
	s.calls = r.calls.Load()
	s.busy = time.Duration(r.busy.Load())
	cpu, err := r.cpuTime()
	s.cpu, s.cpuErr = cpu, err != nil
	return s
}

// Window returns the span over which rates are averaged, after clamping.
func (r *Recorder) Window() time.Duration { return r.window }

// CallStarted records that a call began and returns when, to pass to its
// CallFinished. Each call must be followed by one CallFinished. The
// interceptors call both; a service that is not served through them can
// too.
func (r *Recorder) CallStarted() time.Time {
	r.inFlight.Add(1)
	return r.clock.Now()
}

// CallFinished records that the call CallStarted returned start for ended,
// failed when err is not nil.
func (r *Recorder) CallFinished(start time.Time, err error) {
	if d := r.clock.Now().Sub(start); d > 0 {
		r.busy.Add(int64(d))
	}
	r.inFlight.Add(-1)
	r.calls.Add(1)
	if err != nil {
		r.errs.Add(1)
	}
}

// SetAppUtilization sets the application utilization reported from now on:
// a service-defined measure of how busy it is, where 1 usually means fully
// busy, and which balancers (gRPC's weighted_round_robin, Lookaside's
// least_load) prefer to CPU when set. NaN and negative values are stored
// as 0, +Inf as the largest float64.
func (r *Recorder) SetAppUtilization(v float64) {
	r.appUtil.Store(math.Float64bits(sanitize(v)))
}

// SetUtilization sets a named utilization, reported in the utilization map
// of every report (ORCA expects [0, 1]). Values are sanitized as by
// SetAppUtilization; an empty name is ignored.
func (r *Recorder) SetUtilization(name string, v float64) {
	if name == "" {
		return
	}
	r.utilMu.Lock()
	defer r.utilMu.Unlock()
	m := make(map[string]float64)
	if old := r.util.Load(); old != nil {
		maps.Copy(m, *old)
	}
	m[name] = sanitize(v)
	r.util.Store(&m)
}

// DeleteUtilization removes a named utilization set with SetUtilization.
func (r *Recorder) DeleteUtilization(name string) {
	r.utilMu.Lock()
	defer r.utilMu.Unlock()
	old := r.util.Load()
	if old == nil {
		return
	}
	if _, ok := (*old)[name]; !ok {
		return
	}
	m := maps.Clone(*old)
	delete(m, name)
	if len(m) == 0 {
		r.util.Store(nil)
		return
	}
	r.util.Store(&m)
}

// Metrics returns the current measurements. Rates (QPS, EPS, CPU,
// Concurrency) are averaged from the newest kept sample at least Window old
// until now: over Window to Window×1.1 when Metrics is called at least every
// Window/10, over a longer span when it is called less often, and over the
// time since NewRecorder during the first Window.
func (r *Recorder) Metrics() Metrics {
	now := r.clock.Now()
	cur := r.sampleNow(now)

	r.mu.Lock()
	ref := r.referenceLocked(now)
	if now.Sub(r.ring[r.head].at) >= r.step {
		r.head = (r.head + 1) % ringSize
		r.ring[r.head] = cur
		r.filled = min(r.filled+1, ringSize)
	}
	r.mu.Unlock()

	m := Metrics{
		AppUtil:  math.Float64frombits(r.appUtil.Load()),
		InFlight: max(r.inFlight.Load(), 0),
	}
	if u := r.util.Load(); u != nil {
		m.Utilization = *u
	}
	// The counters only grow; the comparisons guard against a sample whose
	// reader was preempted between reading the clock and the counters.
	if dt := now.Sub(ref.at).Seconds(); dt > 0 {
		if cur.calls >= ref.calls {
			m.QPS = float64(cur.calls-ref.calls) / dt
		}
		if cur.errs >= ref.errs {
			m.EPS = float64(cur.errs-ref.errs) / dt
		}
		if cur.busy >= ref.busy {
			m.Concurrency = (cur.busy - ref.busy).Seconds() / dt
		}
		if !cur.cpuErr && !ref.cpuErr && cur.cpu >= ref.cpu {
			m.CPU = (cur.cpu - ref.cpu).Seconds() / dt / float64(max(r.procs(), 1))
		}
	}
	return m
}

// referenceLocked returns the newest sample taken at or before now-window,
// or the oldest sample when none is that old.
func (r *Recorder) referenceLocked(now time.Time) sample {
	edge := now.Add(-r.window)
	for i := range r.filled {
		s := r.ring[(r.head-i+ringSize)%ringSize]
		if !s.at.After(edge) {
			return s
		}
	}
	return r.ring[(r.head-r.filled+1+ringSize)%ringSize]
}

// Methods of these services are not counted by the interceptors: they are
// the machinery of load balancing, not the load.
var uncountedPrefixes = []string{
	"/" + healthpb.Health_ServiceDesc.ServiceName + "/",
	"/" + orcasvc.OpenRcaService_ServiceDesc.ServiceName + "/",
}

func counted(fullMethod string) bool {
	for _, p := range uncountedPrefixes {
		if strings.HasPrefix(fullMethod, p) {
			return false
		}
	}
	return true
}

// UnaryServerInterceptor returns a server interceptor that counts each call
// in flight while its handler runs, then as finished (failed if it
// returned an error, whatever the code). Calls to the health and ORCA
// services are not counted. Chain it first, so that it sees calls that
// later interceptors reject.
func (r *Recorder) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if !counted(info.FullMethod) {
			return h(ctx, req)
		}
		start := r.CallStarted()
		resp, err := h(ctx, req)
		r.CallFinished(start, err)
		return resp, err
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streaming calls: a
// stream counts as one call, in flight until its handler returns.
func (r *Recorder) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if !counted(info.FullMethod) {
			return h(srv, ss)
		}
		start := r.CallStarted()
		err := h(srv, ss)
		r.CallFinished(start, err)
		return err
	}
}

// sanitize maps NaN and negative values to 0 and +Inf to the largest
// float64, so that reports only carry finite values in [0, ∞).
func sanitize(v float64) float64 {
	switch {
	case math.IsNaN(v) || v < 0:
		return 0
	case math.IsInf(v, 1):
		return math.MaxFloat64
	}
	return v
}
