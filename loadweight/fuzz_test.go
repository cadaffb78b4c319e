package loadweight_test

import (
	"math"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

// FuzzUpdate feeds a Weigher with outliers on arbitrary reports (what
// backends send: any float, NaN and infinities included) over time: the
// weights are always one positive, finite weight per endpoint with a mean
// of 1, and at most MaxEjectedFraction of the endpoints (at least one,
// never all) are outliers, each with the probe share's weight.
func FuzzUpdate(f *testing.F) {
	f.Add([]byte{5, 1, 100, 50, 5, 1, 100, 50, 5, 1, 100, 50, 20, 1, 100, 50, 5, 1, 100, 50})
	f.Add([]byte{3, 0, 255, 255, 255, 7, 0, 0, 0, 9, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 {
			return
		}
		n := 3 + int(data[0])%6
		data = data[1:]
		eps := policytest.Endpoints("a", "b", "c", "d", "e", "f", "g", "h")[:n]
		cfg := loadweight.DefaultConfig()
		cfg.BlackoutPeriod, cfg.Outliers.EjectAfter, cfg.Outliers.BaseEjectionTime = time.Second, time.Second, 2*time.Second
		w, err := loadweight.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// value turns a byte into a report value, specials included.
		value := func(b byte) float64 {
			switch b {
			case 255:
				return math.NaN()
			case 254:
				return math.Inf(1)
			case 253:
				return -1
			}
			return float64(b)
		}
		now := time.Unix(0, 0)
		for step := 0; len(data) >= 1 && step < 64; step++ {
			now = now.Add(time.Duration(data[0]) * 50 * time.Millisecond)
			data = data[1:]
			reports := map[string]loadreport.Report{}
			for _, e := range eps {
				if len(data) < 3 {
					break
				}
				if data[0]%8 != 0 { // every eighth endpoint has no report
					reports[e.ID] = loadreport.Report{
						QPS: value(data[0]), CPU: value(data[1]) / 100, Concurrency: value(data[2]) / 10, At: now,
					}
				}
				data = data[3:]
			}
			res, _ := w.Update(now, eps, reports)
			if len(res.Weights) != n || len(res.Outliers) != n || len(res.Latencies) != n {
				t.Fatalf("step %d: %d weights, %d outliers, %d latencies for %d endpoints", step, len(res.Weights), len(res.Outliers), len(res.Latencies), n)
			}
			sum, ejected := 0.0, 0
			for i, wt := range res.Weights {
				if !(wt > 0) || math.IsInf(wt, 0) {
					t.Fatalf("step %d: weight %d is %v", step, i, wt)
				}
				sum += wt
				if res.Outliers[i] {
					ejected++
					if share := wt / float64(n); share > cfg.Outliers.ProbeShare*1.0001 {
						t.Fatalf("step %d: outlier %d has a share of %v", step, i, share)
					}
				}
			}
			if math.Abs(sum-float64(n)) > 1e-6*float64(n) {
				t.Fatalf("step %d: weights sum to %v, want %d", step, sum, n)
			}
			if limit := max(int(cfg.Outliers.MaxEjectedFraction*float64(n)), 1); ejected != res.Ejected || ejected > limit || ejected >= n {
				t.Fatalf("step %d: %d outliers (Ejected %d), limit %d of %d", step, ejected, res.Ejected, limit, n)
			}
		}
	})
}
