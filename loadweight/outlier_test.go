package loadweight_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

// lrep is a report received at s seconds with 100 calls per second at CPU
// 0.5 (A58 weight 200) and a mean latency of ms milliseconds
// (Concurrency = QPS × latency). ms 0 sends no concurrency.
func lrep(s, ms float64) loadreport.Report {
	return loadreport.Report{QPS: 100, CPU: 0.5, Concurrency: 100 * ms / 1000, At: at(s)}
}

// lreps gives each endpoint a..e (in order) the latency in ms at s seconds.
func lreps(s float64, ms ...float64) reports {
	r := reports{}
	for i, l := range ms {
		r[string(rune('a'+i))] = lrep(s, l)
	}
	return r
}

// ostep is one Update of an outlier scenario and what it must return.
type ostep struct {
	name      string
	at        float64
	eps       []discovery.Endpoint // nil: the scenario's
	reports   reports
	publish   bool
	outliers  string    // the ejected endpoints' IDs, in order
	weights   []float64 // nil: not checked
	ejections uint64
	next      float64 // seconds after t0; -1: not checked; 0: none
}

// outlierConfig is exact: no blackout, no smoothing, every change
// published at once, ejection at the first Update above the line.
func outlierConfig() loadweight.Config {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod, cfg.Smoothing, cfg.MinUpdateInterval, cfg.ChangeThreshold = 0, 1, 0, 0
	cfg.Outliers.EjectAfter = 0
	return cfg
}

func runOutliers(t *testing.T, cfg loadweight.Config, eps []discovery.Endpoint, steps []ostep) *loadweight.Weigher {
	t.Helper()
	w, err := loadweight.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		e := s.eps
		if e == nil {
			e = eps
		}
		res, pub := w.Update(at(s.at), e, s.reports)
		if pub != s.publish {
			t.Errorf("%s: published %v, want %v", s.name, pub, s.publish)
		}
		got := ""
		for i, o := range res.Outliers {
			if o {
				got += e[i].ID
			}
		}
		if got != s.outliers {
			t.Errorf("%s: outliers %q, want %q (latencies %v, median %v)", s.name, got, s.outliers, res.Latencies, res.MedianLatency)
		}
		if res.Ejected != len(s.outliers) {
			t.Errorf("%s: Ejected %d, want %d", s.name, res.Ejected, len(s.outliers))
		}
		if s.weights != nil {
			if diff := cmp.Diff(s.weights, res.Weights, approx); diff != "" {
				t.Errorf("%s: weights (-want +got):\n%s", s.name, diff)
			}
		}
		if res.Ejections != s.ejections {
			t.Errorf("%s: %d ejections, want %d", s.name, res.Ejections, s.ejections)
		}
		if s.next >= 0 {
			var next time.Time
			if s.next > 0 {
				next = at(s.next)
			}
			if !res.NextUpdate.Equal(next) {
				t.Errorf("%s: next update %v, want %v", s.name, res.NextUpdate.Sub(t0), next.Sub(t0))
			}
		}
	}
	return w
}

// probe is the weight of each of k outliers among n endpoints when the
// others' weights sum to sum: share·(sum + k·probe) with the default 0.5 %.
func probe(sum float64, k int) float64 { return 0.005 * sum / (1 - 0.005*float64(k)) }

// TestOutlierEjected: among five endpoints of equal capacity, the one four
// times slower gets a 0.5 % probe share instead of its A58 weight (and
// not the minimum-weight floor); the result says which and how slow.
func TestOutlierEjected(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c", "d", "e")
	w := runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "one slow", at: 0, reports: lreps(0, 5, 5, 5, 5, 20), publish: true, outliers: "e",
			weights: norm(200, 200, 200, 200, probe(800, 1)), ejections: 1, next: 5},
	})
	res := w.Published()
	wantLat := []time.Duration{5 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond}
	if diff := cmp.Diff(wantLat, res.Latencies, cmp.Comparer(func(a, b time.Duration) bool { return (a - b).Abs() < time.Microsecond })); diff != "" {
		t.Errorf("latencies (-want +got):\n%s", diff)
	}
	if (res.MedianLatency - 5*time.Millisecond).Abs() > time.Microsecond {
		t.Errorf("median latency %v, want 5ms", res.MedianLatency)
	}
	if share := res.Weights[4] / 5; share < 0.0049 || share > 0.0051 {
		t.Errorf("outlier's share of the weight %.4f, want 0.5 %%", share)
	}
}

// TestOutlierReadmission: an ejected endpoint stays out for the base
// ejection time whatever its latency, then comes back once its latency is
// under 1.5× the median (not merely under 2×).
func TestOutlierReadmission(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c", "d", "e")
	runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "ejected", at: 0, reports: lreps(0, 5, 5, 5, 5, 20), publish: true, outliers: "e", ejections: 1, next: 5},
		{name: "fast again within the ejection time", at: 3, reports: lreps(3, 5, 5, 5, 5, 5), outliers: "e", ejections: 1, next: 5},
		{name: "1.8× after it", at: 5, reports: lreps(5, 5, 5, 5, 5, 9), outliers: "e", ejections: 1, next: -1},
		{name: "1.6×", at: 6, reports: lreps(6, 5, 5, 5, 5, 8), outliers: "e", ejections: 1, next: -1},
		{name: "1.4×: readmitted", at: 7, reports: lreps(7, 5, 5, 5, 5, 7), publish: true, outliers: "",
			weights: norm(200, 200, 200, 200, 200), ejections: 1, next: -1},
		// Between the lines: not ejected again.
		{name: "1.8× readmitted", at: 8, reports: lreps(8, 5, 5, 5, 5, 9), outliers: "", ejections: 1, next: -1},
	})
}

// TestOutlierEjectionTimeGrows: ejected again soon after its readmission,
// an endpoint stays out twice as long as the last time, up to the
// maximum; ejected long after, for the base time again.
func TestOutlierEjectionTimeGrows(t *testing.T) {
	cfg := outlierConfig()
	cfg.Outliers.MaxEjectionTime = 15 * time.Second
	eps := policytest.Endpoints("a", "b", "c", "d", "e")
	slow := func(s float64) reports { return lreps(s, 5, 5, 5, 5, 20) }
	fast := func(s float64) reports { return lreps(s, 5, 5, 5, 5, 5) }
	runOutliers(t, cfg, eps, []ostep{
		{name: "1st ejection", at: 0, reports: slow(0), publish: true, outliers: "e", ejections: 1, next: 5},
		{name: "readmitted at 5 s", at: 5, reports: fast(5), publish: true, ejections: 1, next: -1},
		{name: "2nd ejection: 10 s", at: 6, reports: slow(6), publish: true, outliers: "e", ejections: 2, next: 16},
		{name: "still out at 15.9 s", at: 15.9, reports: fast(15.9), outliers: "e", ejections: 2, next: 16},
		{name: "readmitted at 16 s", at: 16, reports: fast(16), publish: true, ejections: 2, next: -1},
		{name: "3rd ejection: 15 s, the cap", at: 17, reports: slow(17), publish: true, outliers: "e", ejections: 3, next: 32},
		{name: "readmitted at 32 s", at: 32, reports: fast(32), publish: true, ejections: 3, next: -1},
		// 15 s (MaxEjectionTime) after the readmission: the base time.
		{name: "4th ejection, much later: 5 s", at: 47, reports: slow(47), publish: true, outliers: "e", ejections: 4, next: 52},
	})
}

// TestOutlierLimit: at most MaxEjectedFraction of the endpoints are
// ejected, the slowest first; an ejected endpoint keeps its place when a
// slower one appears.
func TestOutlierLimit(t *testing.T) {
	cfg := outlierConfig()
	cfg.Outliers.MaxEjectedFraction = 0.2 // one of five
	eps := policytest.Endpoints("a", "b", "c", "d", "e")
	runOutliers(t, cfg, eps, []ostep{
		{name: "two slow, the slower ejected", at: 0, reports: lreps(0, 5, 5, 5, 20, 30), publish: true, outliers: "e", ejections: 1, next: -1},
		{name: "d slower now: e keeps its place", at: 1, reports: lreps(1, 5, 5, 5, 40, 30), outliers: "e", ejections: 1, next: -1},
	})
	// At the default half: two of five, and never a third even when three
	// are slower than twice the median.
	runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "two of five", at: 0, reports: lreps(0, 5, 5, 5, 20, 30), publish: true, outliers: "de", ejections: 2, next: -1},
	})
	eps6 := policytest.Endpoints("a", "b", "c", "d", "e", "f")
	r := lreps(0, 5, 5, 5, 50, 60, 70)
	runOutliers(t, outlierConfig(), eps6, []ostep{
		// median (5+50)/2 = 27.5: 60 and 70 are above 55.
		{name: "median moves with the slow ones", at: 0, reports: r, publish: true, outliers: "ef", ejections: 2, next: -1},
	})
}

// TestOutlierNeedsPeers: with fewer than three known latencies, or a
// latency that is slow only by microseconds, nothing is ejected; an
// endpoint without ORCA keeps its Consul weight.
func TestOutlierNeedsPeers(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c")
	eps[2].Weight = 2
	runOutliers(t, outlierConfig(), eps, []ostep{
		// c sends no ORCA: weighted by Consul weight at a's rate (400).
		{name: "two latencies", at: 0, reports: reports{"a": lrep(0, 5), "b": lrep(0, 20)}, publish: true,
			weights: norm(200, 200, 400), next: -1},
		// c reports but without concurrency: no latency.
		{name: "one without concurrency", at: 1, reports: reports{"a": lrep(1, 5), "b": lrep(1, 20), "c": lrep(1, 0)},
			publish: true, weights: norm(200, 200, 200), next: -1},
	})
	micro := loadweight.DefaultConfig()
	micro.BlackoutPeriod = 0
	runOutliers(t, micro, policytest.Endpoints("a", "b", "c"), []ostep{
		{name: "0.1 ms and 0.5 ms", at: 0, reports: lreps(0, 0.1, 0.1, 0.5), publish: true, next: -1},
	})
}

// TestOutlierDisabled: with detection off nothing is ejected; turning it
// off readmits the ejected at the next Update.
func TestOutlierDisabled(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c", "d", "e")
	off := outlierConfig()
	off.Outliers.Enabled = false
	runOutliers(t, off, eps, []ostep{
		{name: "off", at: 0, reports: lreps(0, 5, 5, 5, 5, 20), publish: true, weights: norm(1, 1, 1, 1, 1), next: -1},
	})
	w := runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "on", at: 0, reports: lreps(0, 5, 5, 5, 5, 20), publish: true, outliers: "e", ejections: 1, next: -1},
	})
	if err := w.SetConfig(off); err != nil {
		t.Fatal(err)
	}
	if res, pub := w.Update(at(1), eps, lreps(1, 5, 5, 5, 5, 20)); !pub || res.Ejected != 0 {
		t.Errorf("after turning detection off: published %v, %d ejected; want a publication with none", pub, res.Ejected)
	}
}

// TestOutlierEndpointsLeave: when the endpoints that are not ejected
// leave, the ejected one is readmitted: a service never has all of its
// endpoints ejected.
func TestOutlierEndpointsLeave(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c")
	runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "c ejected", at: 0, reports: lreps(0, 5, 5, 20), publish: true, outliers: "c", weights: norm(200, 200, probe(400, 1)), ejections: 1, next: -1},
		{name: "only c left", at: 1, eps: policytest.Endpoints("c"), reports: reports{"c": lrep(1, 20)}, publish: true, weights: []float64{1}, ejections: 1, next: -1},
	})
}

// TestOutlierReportsStop: an ejected endpoint whose reports stop keeps its
// ejection until the ejection time is over, then (its latency unknown) is
// readmitted at its Consul weight.
func TestOutlierReportsStop(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c", "d")
	runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "d ejected", at: 0, reports: lreps(0, 5, 5, 5, 20), publish: true, outliers: "d", ejections: 1, next: -1},
		{name: "d silent", at: 1, reports: lreps(1, 5, 5, 5), outliers: "d", ejections: 1, next: -1},
		{name: "readmitted at 5 s", at: 5, reports: lreps(5, 5, 5, 5), publish: true, weights: norm(1, 1, 1, 1), ejections: 1, next: -1},
	})
}

// TestOutlierLatencySmoothed: the latency is a moving average of the
// reports' Concurrency/QPS with Config.Smoothing, so one slow report does
// not eject.
func TestOutlierLatencySmoothed(t *testing.T) {
	cfg := outlierConfig()
	cfg.Smoothing = 0.5
	eps := policytest.Endpoints("a", "b", "c")
	w := runOutliers(t, cfg, eps, []ostep{
		{name: "equal", at: 0, reports: lreps(0, 5, 5, 5), publish: true, next: -1},
		// c: 0.5×5 + 0.5×14 = 9.5 ms, under 10.
		{name: "one slow report", at: 1, reports: lreps(1, 5, 5, 14), next: -1},
		// c: 0.5×9.5 + 0.5×14 = 11.75 ms.
		{name: "two", at: 2, reports: lreps(2, 5, 5, 14), publish: true, outliers: "c", ejections: 1, next: -1},
	})
	if got := w.Published().Latencies[2]; (got - 11750*time.Microsecond).Abs() > time.Microsecond {
		t.Errorf("c's latency %v, want 11.75ms", got)
	}
}

// TestLatencies: Weigher.Latencies gives the latencies of the last
// Update even when it published nothing.
func TestLatencies(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c")
	w := runOutliers(t, outlierConfig(), eps, []ostep{
		{name: "no reports", at: 0, publish: true, next: -1},
		// Equal weights: nothing to publish, but the latencies are known.
		{name: "reports", at: 1, reports: lreps(1, 5, 6, 7), next: -1},
	})
	got, median := w.Latencies(nil)
	want := []time.Duration{5 * time.Millisecond, 6 * time.Millisecond, 7 * time.Millisecond}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b time.Duration) bool { return (a - b).Abs() < time.Microsecond })); diff != "" {
		t.Errorf("Latencies (-want +got):\n%s", diff)
	}
	if (median - 6*time.Millisecond).Abs() > time.Microsecond {
		t.Errorf("median %v, want 6ms", median)
	}
	if res := w.Published(); res.Latencies[0] != 0 {
		t.Errorf("published latencies %v, want those of the first Update (unknown)", res.Latencies)
	}
}

// TestOutlierEjectAfter: an endpoint is ejected only once its latency has
// stayed above the line for EjectAfter; a dip below starts the count
// again.
func TestOutlierEjectAfter(t *testing.T) {
	cfg := outlierConfig()
	cfg.Outliers.EjectAfter = 2 * time.Second
	eps := policytest.Endpoints("a", "b", "c")
	runOutliers(t, cfg, eps, []ostep{
		{name: "above", at: 0, reports: lreps(0, 5, 5, 20), publish: true, next: 2},
		{name: "1.9 s above", at: 1.9, reports: lreps(1.9, 5, 5, 20), next: 2},
		{name: "a dip", at: 2, reports: lreps(2, 5, 5, 9), next: -1},
		{name: "above again", at: 3, reports: lreps(3, 5, 5, 20), next: 5},
		{name: "2 s above", at: 5, reports: lreps(5, 5, 5, 20), publish: true, outliers: "c", ejections: 1, next: 10},
	})
}
