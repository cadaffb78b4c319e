package backend

import (
	"context"
	"math"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/lookaside-lb/lookaside/loadreport"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// burnPeriod is the cycle of the CPU burner: it spins for CPUBurn of each
// period and sleeps the rest.
const burnPeriod = 10 * time.Millisecond

// SetLatency sets the latency added to every User call from now on (calls
// already waiting keep theirs). Negative means none. It does not block.
func (b *Backend) SetLatency(d time.Duration) {
	b.latency.Store(int64(max(d, 0)))
}

// SetCallCPU sets the CPU time every User call spins for from now on
// (Config.CallCPU; calls already running keep theirs). Negative means none.
// It does not block.
func (b *Backend) SetCallCPU(d time.Duration) {
	b.callCPU.Store(int64(max(d, 0)))
}

// SetCPUBurn sets the share of one core the backend keeps busy, clamped to
// [0, 1] (NaN means 0). It takes effect within 10 ms while Serve runs, and
// does not block.
func (b *Backend) SetCPUBurn(share float64) {
	if math.IsNaN(share) {
		share = 0
	}
	b.burn.Store(math.Float64bits(min(max(share, 0), 1)))
	select {
	case b.burnWake <- struct{}{}:
	default:
	}
}

// SetAppUtilization sets the application utilization the backend reports
// over ORCA (loadreport.Recorder.SetAppUtilization). It does not block.
func (b *Backend) SetAppUtilization(v float64) { b.rec.SetAppUtilization(v) }

// Recorder returns the recorder whose measurements the backend reports over
// ORCA, for services that want to set named utilizations.
func (b *Backend) Recorder() *loadreport.Recorder { return b.rec }

// capacityMetrics is what the backend reports over ORCA: the recorder's
// measurements, with the application utilization derived from the mean
// calls in flight over the window when the backend has a capacity and the
// service set none. The mean, not the instant's count: a lightly loaded
// backend often has no call in flight at the instant of a report, and a
// utilization of 0 would make balancers weigh it by its CPU instead.
type capacityMetrics struct {
	rec      *loadreport.Recorder
	capacity int
}

func (c capacityMetrics) Metrics() loadreport.Metrics {
	m := c.rec.Metrics()
	if c.capacity > 0 && m.AppUtil == 0 {
		m.AppUtil = min(m.Concurrency/float64(c.capacity), 1)
	}
	return m
}

// latencyInterceptor delays User calls by the current latency, then spins
// for the current per-call CPU.
func (b *Backend) latencyInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if info.FullMethod != userpb.User_GetUserList_FullMethodName {
		return h(ctx, req)
	}
	if d := time.Duration(b.latency.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if d := time.Duration(b.callCPU.Load()); d > 0 {
		if err := spinCPU(ctx, d); err != nil {
			return nil, status.FromContextError(err).Err()
		}
	}
	return h(ctx, req)
}

// spinYield is how much CPU time spinCPU uses between two yields of the
// processor.
const spinYield = 100 * time.Microsecond

// spinCPU keeps the CPU busy until the calling goroutine has used d of
// CPU time (threadCPUTime; where it is unavailable, d of wall time), or
// until ctx is done, whose error it then returns. It yields the processor
// every spinYield of CPU, so that the process's other goroutines (other
// backends, in tests) share the cores with it at a fine grain, as other
// processes would, instead of waiting for Go's 10 ms preemption. It
// blocks.
func spinCPU(ctx context.Context, d time.Duration) error {
	// The goroutine stays on its thread, so that the thread's CPU time is
	// the goroutine's own.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, ok := threadCPUTime()
	wallStart := time.Now()
	var sink uint64
	var yielded time.Duration
	for i := 0; ; i++ {
		for j := range uint64(2000) { // busy on purpose: ~µs between checks
			sink += j * j
		}
		used := time.Since(wallStart)
		if ok {
			now, _ := threadCPUTime()
			used = now - start
		}
		if used >= d {
			spinSink.Store(sink)
			return nil
		}
		if used-yielded >= spinYield {
			yielded = used
			runtime.Gosched()
		}
		if i%64 == 63 && ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// spinSink keeps the compiler from removing spinCPU's loop.
var spinSink atomic.Uint64

// burnCPU spins for the CPUBurn share of every burnPeriod until ctx is
// done. While the share is 0 it sleeps until SetCPUBurn.
func (b *Backend) burnCPU(ctx context.Context) {
	timer := time.NewTimer(burnPeriod)
	timer.Stop()
	defer timer.Stop()
	for {
		share := math.Float64frombits(b.burn.Load())
		if share <= 0 {
			select {
			case <-ctx.Done():
				return
			case <-b.burnWake:
				continue
			}
		}
		start := time.Now()
		spin := time.Duration(share * float64(burnPeriod))
		for time.Since(start) < spin {
			// Busy on purpose.
		}
		timer.Reset(burnPeriod - time.Since(start))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}
