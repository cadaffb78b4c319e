package backend

import (
	"context"
	"math"
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

// latencyInterceptor delays User calls by the current latency.
func (b *Backend) latencyInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if d := time.Duration(b.latency.Load()); d > 0 && info.FullMethod == userpb.User_GetUserList_FullMethodName {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return h(ctx, req)
}

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
