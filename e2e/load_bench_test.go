package e2e

import (
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
)

// BenchmarkSlowBackend runs one scenario under round_robin and under
// least_load: four backends (5 ms per call, one at 20 ms), eight workers
// calling back to back through a grpclb client. After a 4 s warm-up it
// measures 5 s of calls and reports their mean, p50, p90 and p99 latency, the call rate and the slow
// backend's share. Run it with -benchtime 1x (make bench); b.N only
// repeats the measurement.
func BenchmarkSlowBackend(b *testing.B) {
	for _, pol := range []string{roundrobin.Name, leastload.Name} {
		b.Run(pol, func(b *testing.B) {
			svc := serviceName(b)
			var bs []*runningBackend
			for range 4 {
				bs = append(bs, loadBackend(b, svc, nil))
			}
			waitPassing(b, svc, 4)
			bs[0].SetLatency(20 * time.Millisecond)
			l := startLB(b, fastLoad(pol))
			c := client(b, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
			waitSeen(b, c, bs...)
			closedLoop(b.Context(), c, 8, 4*time.Second)
			b.ResetTimer()
			var res loadResult
			for range b.N {
				res = closedLoop(b.Context(), c, 8, 5*time.Second)
			}
			b.StopTimer()
			if len(res.failures) > 0 {
				b.Fatalf("calls failed: %v", res.failures)
			}
			calls := 0
			for _, n := range res.calls {
				calls += n
			}
			var sum time.Duration
			for _, d := range res.latencies {
				sum += d
			}
			b.ReportMetric(float64(sum.Microseconds())/1000/float64(len(res.latencies)), "mean-ms")
			b.ReportMetric(float64(res.percentile(0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(res.percentile(0.9).Microseconds())/1000, "p90-ms")
			b.ReportMetric(float64(res.percentile(0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(100*res.share(bs[0].ID()), "slow-%")
			b.ReportMetric(float64(calls)/5, "calls/s")
			b.Logf("%s: p50 %v, p99 %v, slow backend %.1f%% of %d calls\n", pol,
				res.percentile(0.5).Round(10*time.Microsecond), res.percentile(0.99).Round(10*time.Microsecond), 100*res.share(bs[0].ID()), calls)
		})
	}
}
