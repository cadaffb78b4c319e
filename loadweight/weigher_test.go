package loadweight_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// at returns t0 plus s seconds.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// rep is a report received at s seconds with qps calls per second at CPU
// utilization cpu.
func rep(s, qps, cpu float64) loadreport.Report {
	return loadreport.Report{QPS: qps, CPU: cpu, At: at(s)}
}

// norm scales raw weights to a mean of 1, as a Result holds them.
func norm(raw ...float64) []float64 {
	sum := 0.0
	for _, w := range raw {
		sum += w
	}
	out := make([]float64, len(raw))
	for i, w := range raw {
		out[i] = w * float64(len(raw)) / sum
	}
	return out
}

var approx = cmpopts.EquateApprox(1e-12, 1e-12)

func TestWeight(t *testing.T) {
	tests := []struct {
		name    string
		r       loadreport.Report
		penalty float64
		want    float64
	}{
		{"qps over CPU", loadreport.Report{QPS: 100, CPU: 0.5}, 1, 200},
		{"application utilization first", loadreport.Report{QPS: 100, CPU: 0.5, AppUtil: 0.25}, 1, 400},
		{"application utilization above 1", loadreport.Report{QPS: 100, CPU: 0.5, AppUtil: 2}, 1, 50},
		// 100 / (0.5 + 10/100 × 1)
		{"errors", loadreport.Report{QPS: 100, EPS: 10, CPU: 0.5}, 1, 100 / 0.6},
		// 100 / (0.5 + 10/100 × 2)
		{"errors, penalty 2", loadreport.Report{QPS: 100, EPS: 10, CPU: 0.5}, 2, 100 / 0.7},
		{"errors, no penalty", loadreport.Report{QPS: 100, EPS: 10, CPU: 0.5}, 0, 200},
		// Every call failing: 100 / (0.5 + 1).
		{"all errors", loadreport.Report{QPS: 100, EPS: 100, CPU: 0.5}, 1, 100 / 1.5},
		{"no calls", loadreport.Report{CPU: 0.5}, 1, 0},
		{"no utilization", loadreport.Report{QPS: 100}, 1, 0},
		{"NaN QPS", loadreport.Report{QPS: math.NaN(), CPU: 0.5}, 1, 0},
		{"infinite QPS", loadreport.Report{QPS: math.Inf(1), CPU: 0.5}, 1, 0},
		{"NaN errors count as none", loadreport.Report{QPS: 100, EPS: math.NaN(), CPU: 0.5}, 1, 200},
	}
	for _, tc := range tests {
		if got := loadweight.Weight(tc.r, tc.penalty); !cmp.Equal(got, tc.want, approx) {
			t.Errorf("%s: Weight(%+v, %v) = %v, want %v", tc.name, tc.r, tc.penalty, got, tc.want)
		}
	}
}

// step is one Update of a scenario and what it must return.
type step struct {
	name    string
	at      float64 // seconds after t0
	eps     []discovery.Endpoint
	reports map[string]loadreport.Report
	publish bool
	weights []float64
	known   int
	drop    float64
	next    float64 // seconds after t0; 0 for none
}

func run(t *testing.T, cfg loadweight.Config, steps []step) {
	t.Helper()
	w, err := loadweight.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		res, pub := w.Update(at(s.at), s.eps, s.reports)
		var next time.Time
		if s.next != 0 {
			next = at(s.next)
		}
		if pub != s.publish {
			t.Errorf("%s: published %v, want %v", s.name, pub, s.publish)
		}
		if diff := cmp.Diff(s.weights, res.Weights, approx); diff != "" {
			t.Errorf("%s: weights mismatch (-want +got):\n%s", s.name, diff)
		}
		if res.Known != s.known {
			t.Errorf("%s: known %d, want %d", s.name, res.Known, s.known)
		}
		if !cmp.Equal(res.DropShare, s.drop, approx) {
			t.Errorf("%s: drop share %v, want %v", s.name, res.DropShare, s.drop)
		}
		if !res.NextUpdate.Equal(next) {
			t.Errorf("%s: next update %v, want %v", s.name, res.NextUpdate.Sub(t0), next.Sub(t0))
		}
	}
}

type reports = map[string]loadreport.Report

func TestNoLoadUsesConsulWeights(t *testing.T) {
	eps := policytest.Endpoints("a", "b", "c")
	eps[1].Weight, eps[2].Weight = 3, 0 // 0 counts as 1
	run(t, loadweight.DefaultConfig(), []step{
		{name: "first", at: 0, eps: eps, publish: true, weights: norm(1, 3, 1)},
		{name: "again", at: 1, eps: eps, weights: norm(1, 3, 1)},
		// Reports without calls carry no weight.
		{name: "idle reports", at: 2, eps: eps, reports: reports{"a": rep(2, 0, 0.1), "b": rep(2, 10, 0)}, weights: norm(1, 3, 1)},
		{name: "no endpoints", at: 3, publish: true},
		{name: "no endpoints again", at: 4},
	})
}

// TestBlackout: load counts once an endpoint has reported for 10 s, and a
// gap in its reports starts that again.
func TestBlackout(t *testing.T) {
	eps := policytest.Endpoints("a", "b")
	both := func(s float64) reports { // a: weight 200, b: weight 400
		return reports{"a": rep(s, 100, 0.5), "b": rep(s, 100, 0.25)}
	}
	cfg := loadweight.DefaultConfig()
	cfg.Smoothing = 1
	run(t, cfg, []step{
		{name: "first reports", at: 0, eps: eps, reports: both(0), publish: true, weights: norm(1, 1), next: 10},
		{name: "9.9 s", at: 9.9, eps: eps, reports: both(9.9), weights: norm(1, 1), next: 10},
		{name: "10 s", at: 10, eps: eps, reports: both(10), publish: true, weights: norm(200, 400), known: 2, next: 190},
		// b has no report (the collector expired it): its run ends, and it
		// is weighted by Consul weight at a's 200 per unit.
		{name: "b missing", at: 11, eps: eps, reports: reports{"a": rep(11, 100, 0.5)}, publish: true, weights: norm(200, 200), known: 1, next: 191},
		{name: "b back", at: 12, eps: eps, reports: both(12), weights: norm(200, 200), known: 1, next: 22},
		{name: "b in blackout", at: 21.9, eps: eps, reports: both(21.9), weights: norm(200, 200), known: 1, next: 22},
		{name: "b known again", at: 22, eps: eps, reports: both(22), publish: true, weights: norm(200, 400), known: 2, next: 202},
	})
}

// TestBlackoutTimeDriven: blackout ends without a new report, when the
// caller comes back at NextUpdate.
func TestBlackoutTimeDriven(t *testing.T) {
	eps := policytest.Endpoints("a", "b")
	r := reports{"a": rep(0, 100, 0.5), "b": rep(0, 300, 0.5)}
	run(t, loadweight.DefaultConfig(), []step{
		{name: "first", at: 0, eps: eps, reports: r, publish: true, weights: norm(1, 1), next: 10},
		{name: "blackout over", at: 10, eps: eps, reports: r, publish: true, weights: norm(200, 600), known: 2, next: 180},
	})
}

func TestZeroBlackout(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	eps := policytest.Endpoints("a", "b")
	run(t, cfg, []step{
		{name: "first", at: 0, eps: eps, reports: reports{"a": rep(0, 100, 0.5), "b": rep(0, 300, 0.5)},
			publish: true, weights: norm(200, 600), known: 2, next: 180},
	})
}

// TestExpiry: reports without calls keep the last weight until Expiry
// after the last report with one; then the load is unknown, and the next
// report starts a new blackout.
func TestExpiry(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	cfg.Expiry = 30 * time.Second
	eps := policytest.Endpoints("a", "b")
	eps[1].Weight = 2
	run(t, cfg, []step{
		// a weighs 200 per unit of Consul weight: b 400.
		{name: "a reports", at: 0, eps: eps, reports: reports{"a": rep(0, 100, 0.5)}, publish: true, weights: norm(200, 400), known: 1, next: 30},
		{name: "a idle", at: 29.9, eps: eps, reports: reports{"a": rep(29.9, 0, 0.01)}, weights: norm(200, 400), known: 1, next: 30},
		// Back to the Consul weights 1, 2: the same shares, so nothing to
		// publish.
		{name: "a expired", at: 30, eps: eps, reports: reports{"a": rep(30, 0, 0.01)}, weights: norm(200, 400), known: 1},
	})

	// A report Expiry after the previous one starts a new run, even when
	// no Update saw the gap.
	cfg.BlackoutPeriod = 10 * time.Second
	cfg.Smoothing = 1
	eps = policytest.Endpoints("a", "b")
	run(t, cfg, []step{
		{name: "first", at: 0, eps: eps, reports: reports{"a": rep(0, 100, 0.5), "b": rep(0, 100, 0.5)}, publish: true, weights: norm(1, 1), next: 10},
		{name: "known", at: 10, eps: eps, reports: reports{"a": rep(10, 100, 0.5), "b": rep(10, 300, 0.5)}, publish: true, weights: norm(200, 600), known: 2, next: 40},
		{name: "gap", at: 45, eps: eps, reports: reports{"a": rep(40, 100, 0.5), "b": rep(45, 300, 0.5)}, publish: true, weights: norm(1, 1), next: 50},
	})
}

// TestSmoothing: each new report moves the average by α of the way; the
// same report seen twice counts once; a new run starts from its first
// report.
func TestSmoothing(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	cfg.Smoothing = 0.25
	cfg.ChangeThreshold = 0
	cfg.MinUpdateInterval = 0
	eps := policytest.Endpoints("a", "b")
	b := rep(0, 50, 0.5) // b: weight 100 throughout
	with := func(ra loadreport.Report) reports { return reports{"a": ra, "b": b} }
	run(t, cfg, []step{
		{name: "first", at: 0, eps: eps, reports: with(rep(0, 50, 0.5)), publish: true, weights: norm(100, 100), known: 2, next: 180},
		// a reports weight 500: 100 + 0.25 × 400.
		{name: "step up", at: 1, eps: eps, reports: with(rep(1, 250, 0.5)), publish: true, weights: norm(200, 100), known: 2, next: 180},
		{name: "same report again", at: 1.5, eps: eps, reports: with(rep(1, 250, 0.5)), weights: norm(200, 100), known: 2, next: 180},
		// 200 + 0.25 × 300.
		{name: "repeated value", at: 2, eps: eps, reports: with(rep(2, 250, 0.5)), publish: true, weights: norm(275, 100), known: 2, next: 180},
		{name: "run ends", at: 3, eps: eps, reports: reports{"b": b}, publish: true, weights: norm(100, 100), known: 1, next: 180},
		{name: "new run", at: 4, eps: eps, reports: with(rep(4, 25, 0.5)), publish: true, weights: norm(50, 100), known: 2, next: 180},
	})
}

// TestUtilizationSmoothed: the drop share follows smoothed utilization.
func TestUtilizationSmoothed(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	cfg.Smoothing = 0.5
	eps := policytest.Endpoints("a")
	w, err := loadweight.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.Update(at(0), eps, reports{"a": rep(0, 100, 0.8)})
	res, _ := w.Update(at(1), eps, reports{"a": rep(1, 100, 1.2)})
	// Utilization 0.8 + 0.5 × 0.4 = 1: drop 1 − 0.9/1.
	if !cmp.Equal(res.Utilization, 1.0, approx) || !cmp.Equal(res.DropShare, 0.1, approx) {
		t.Errorf("utilization %v, drop share %v; want 1, 0.1", res.Utilization, res.DropShare)
	}
}

func TestUnknownLoad(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	eps := policytest.Weighted(1, 2, 4, 1)
	run(t, cfg, []step{
		// Known: e00 weight 300, e01 weight 100, for Consul weights 1 and
		// 2: 400 / 3 per unit. e02 and e03 serve no ORCA: 4 × 400/3 and
		// 1 × 400/3.
		{name: "half known", at: 0, eps: eps, reports: reports{"e00": rep(0, 300, 1), "e01": rep(0, 100, 1)},
			publish: true, weights: norm(300, 100, 1600.0/3, 400.0/3), known: 2, next: 180},
	})
}

func TestMinWeight(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	eps := policytest.Endpoints("a", "b", "c", "d")
	run(t, cfg, []step{
		// Known weights 20, 980, 1000 (mean 2000/3, floor 200/3); d has no
		// ORCA: 2000/3 per unit of Consul weight. The floor does not count
		// in that rate.
		{name: "floor", at: 0, eps: eps, reports: reports{"a": rep(0, 20, 1), "b": rep(0, 980, 1), "c": rep(0, 1000, 1)},
			publish: true, weights: norm(200.0/3, 980, 1000, 2000.0/3), known: 3, next: 180},
	})
	cfg.MinWeightFraction = 0
	run(t, cfg, []step{
		{name: "no floor", at: 0, eps: eps, reports: reports{"a": rep(0, 20, 1), "b": rep(0, 980, 1), "c": rep(0, 1000, 1)},
			publish: true, weights: norm(20, 980, 1000, 2000.0/3), known: 3, next: 180},
	})
}

// TestHysteresis: weights are published when one moves by more than 10 %
// of its published value; drifts add up against the published value.
func TestHysteresis(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	cfg.Smoothing = 1
	eps := policytest.Endpoints("a", "b")
	ab := func(s, qa, qb float64) reports { return reports{"a": rep(s, qa, 0.5), "b": rep(s, qb, 0.5)} }
	run(t, cfg, []step{
		{name: "first", at: 0, eps: eps, reports: ab(0, 100, 100), publish: true, weights: norm(100, 100), known: 2, next: 180},
		// 1.09 and 0.91: 9 % each.
		{name: "small change", at: 10, eps: eps, reports: ab(10, 109, 91), weights: norm(100, 100), known: 2, next: 190},
		// Total traffic doubles, shares stay.
		{name: "same shares", at: 20, eps: eps, reports: ab(20, 200, 200), weights: norm(100, 100), known: 2, next: 200},
		{name: "big change", at: 30, eps: eps, reports: ab(30, 111, 89), publish: true, weights: norm(111, 89), known: 2, next: 210},
		// Against 1.11: 1.2 is 8.1 % more, 0.8 is 10.1 % less.
		{name: "one endpoint over", at: 40, eps: eps, reports: ab(40, 120, 80), publish: true, weights: norm(120, 80), known: 2, next: 220},
	})

	cfg.ChangeThreshold = 0.5
	run(t, cfg, []step{
		{name: "first", at: 0, eps: eps, reports: ab(0, 100, 100), publish: true, weights: norm(100, 100), known: 2, next: 180},
		// 1.4, 0.6: 40 %.
		{name: "under 50 %", at: 10, eps: eps, reports: ab(10, 140, 60), weights: norm(100, 100), known: 2, next: 190},
		{name: "over 50 %", at: 20, eps: eps, reports: ab(20, 152, 48), publish: true, weights: norm(152, 48), known: 2, next: 200},
	})
}

// TestRateLimit: two big changes within MinUpdateInterval: the second waits
// for NextUpdate; endpoint changes do not wait.
func TestRateLimit(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	cfg.Smoothing = 1
	cfg.MinUpdateInterval = 2 * time.Second
	eps := policytest.Endpoints("a", "b")
	three := policytest.Endpoints("a", "b", "c")
	reweighted := policytest.Endpoints("a", "b")
	reweighted[1].Weight = 5
	ab := func(s, qa, qb float64) reports { return reports{"a": rep(s, qa, 0.5), "b": rep(s, qb, 0.5)} }
	run(t, cfg, []step{
		{name: "first", at: 0, eps: eps, reports: ab(0, 100, 100), publish: true, weights: norm(100, 100), known: 2, next: 180},
		{name: "big change held", at: 1, eps: eps, reports: ab(1, 300, 100), weights: norm(100, 100), known: 2, next: 2},
		{name: "still held", at: 1.5, eps: eps, reports: ab(1.5, 300, 100), weights: norm(100, 100), known: 2, next: 2},
		{name: "released", at: 2, eps: eps, reports: ab(2, 300, 100), publish: true, weights: norm(300, 100), known: 2, next: 182},
		// c has no ORCA: 200 per unit.
		{name: "endpoint joins at once", at: 2.5, eps: three, reports: ab(2.5, 300, 100), publish: true, weights: norm(300, 100, 200), known: 2, next: 182.5},
		{name: "Consul weight change at once", at: 3, eps: reweighted, reports: ab(3, 300, 100), publish: true, weights: norm(300, 100), known: 2, next: 183},
		// Held back changes that fade are not published.
		{name: "held", at: 4, eps: reweighted, reports: ab(4, 100, 100), weights: norm(300, 100), known: 2, next: 5},
		{name: "faded", at: 5, eps: reweighted, reports: ab(5, 290, 100), weights: norm(300, 100), known: 2, next: 185},
	})
}

// TestDropShare: drops only when every endpoint is known and over the
// threshold, 1 − threshold / mean utilization, capped.
func TestDropShare(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	cfg.Smoothing = 1
	cfg.MinUpdateInterval = 0
	eps := policytest.Endpoints("a", "b")
	// QPS in proportion to utilization: the weights stay equal, and only
	// the drop share changes.
	u := func(s, ua, ub float64) reports { return reports{"a": rep(s, 100*ua, ua), "b": rep(s, 100*ub, ub)} }
	even := norm(1, 1)
	run(t, cfg, []step{
		{name: "busy", at: 0, eps: eps, reports: u(0, 0.5, 0.5), publish: true, weights: even, known: 2, next: 180},
		{name: "one not over", at: 1, eps: eps, reports: u(1, 0.95, 0.9), weights: even, known: 2, next: 181},
		// Mean 1.1: 1 − 0.9/1.1 = 0.1818.
		{name: "all over", at: 2, eps: eps, reports: u(2, 0.95, 1.25), publish: true, weights: even, known: 2, drop: 1 - 0.9/1.1, next: 182},
		// Mean 1.115: 0.1928, 6 % more than 0.1818: not enough.
		{name: "small drop change", at: 3, eps: eps, reports: u(3, 0.98, 1.25), weights: even, known: 2, drop: 1 - 0.9/1.1, next: 183},
		// 1 − 0.9/2.5 = 0.64, capped.
		{name: "capped", at: 4, eps: eps, reports: u(4, 2.5, 2.5), publish: true, weights: even, known: 2, drop: 0.5, next: 184},
		{name: "recovered", at: 5, eps: eps, reports: u(5, 2.5, 0.7), publish: true, weights: even, known: 2, next: 185},
		// c serves no ORCA: it may have room, so no drops.
		{name: "unknown blocks", at: 6, eps: policytest.Endpoints("a", "b", "c"), reports: u(6, 2.5, 2.5), publish: true,
			weights: norm(1, 1, 1), known: 2, next: 186},
	})

	cfg.MaxDropShare = 0
	run(t, cfg, []step{
		{name: "drops off", at: 0, eps: eps, reports: u(0, 2, 2), publish: true, weights: even, known: 2, next: 180},
	})

	// Application utilization stands for CPU when set.
	cfg = loadweight.DefaultConfig()
	cfg.BlackoutPeriod = 0
	run(t, cfg, []step{
		{name: "application utilization", at: 0, eps: eps, reports: reports{
			"a": {QPS: 100, CPU: 0.2, AppUtil: 1.2, At: at(0)},
			"b": {QPS: 100, CPU: 0.2, AppUtil: 1.2, At: at(0)},
		}, publish: true, weights: norm(1, 1), known: 2, drop: 0.25, next: 180},
	})
}

func TestForgetsEndpointsThatLeft(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.Smoothing = 1
	ab := policytest.Endpoints("a", "b")
	r := reports{"a": rep(0, 100, 0.5), "b": rep(0, 300, 0.5)}
	run(t, cfg, []step{
		{name: "first", at: 0, eps: ab, reports: r, publish: true, weights: norm(1, 1), next: 10},
		{name: "b leaves", at: 5, eps: ab[:1], reports: r, publish: true, weights: norm(1), next: 10},
		// b's run from 0 was forgotten: a new blackout until 16.
		{name: "b back", at: 6, eps: ab, reports: reports{"a": rep(6, 100, 0.5), "b": rep(6, 300, 0.5)}, publish: true, weights: norm(1, 1), next: 10},
		// a known at 200 per unit of Consul weight: the same shares, so
		// the published Result (with Known 0) stays.
		{name: "a known", at: 10, eps: ab, reports: reports{"a": rep(10, 100, 0.5), "b": rep(10, 300, 0.5)}, weights: norm(1, 1), next: 16},
		{name: "b known", at: 16, eps: ab, reports: reports{"a": rep(16, 100, 0.5), "b": rep(16, 300, 0.5)}, publish: true, weights: norm(200, 600), known: 2, next: 196},
	})
}

func TestPublished(t *testing.T) {
	w, err := loadweight.New(loadweight.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Published(); got.Weights != nil {
		t.Errorf("Published() before Update = %+v, want zero", got)
	}
	res, _ := w.Update(t0, policytest.Endpoints("a"), nil)
	if diff := cmp.Diff(res, w.Published()); diff != "" {
		t.Errorf("Published() mismatch (-Update +Published):\n%s", diff)
	}
}

func TestRateLimitShare(t *testing.T) {
	tests := []struct {
		limit, observed, max, want float64
	}{
		{100, 50, 0.5, 0},
		{100, 100, 0.5, 0},
		{100, 125, 0.5, 0.2},
		{100, 400, 0.5, 0.5},
		{100, 400, 0.9, 0.75},
		{100, 400, 2, 0.75},
		{0, 400, 0.5, 0},
		{-1, 400, 0.5, 0},
		{100, math.NaN(), 0.5, 0},
		{math.NaN(), 400, 0.5, 0},
		{100, 400, math.NaN(), 0},
		{100, math.Inf(1), 0.5, 0.5},
	}
	for _, tc := range tests {
		if got := loadweight.RateLimitShare(tc.limit, tc.observed, tc.max); !cmp.Equal(got, tc.want, approx) {
			t.Errorf("RateLimitShare(%v, %v, %v) = %v, want %v", tc.limit, tc.observed, tc.max, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*loadweight.Config)
		wantErr []string
	}{
		{"defaults", func(*loadweight.Config) {}, nil},
		{"edges", func(c *loadweight.Config) {
			c.BlackoutPeriod, c.ErrorPenalty, c.Smoothing, c.MinWeightFraction, c.ChangeThreshold, c.MinUpdateInterval, c.MaxDropShare = 0, 0, 1, 1, 0, 0, 0.99
		}, nil},
		{"negative blackout", func(c *loadweight.Config) { c.BlackoutPeriod = -1 }, []string{"blackout period"}},
		{"zero expiry", func(c *loadweight.Config) { c.Expiry = 0 }, []string{"expiry"}},
		{"negative penalty", func(c *loadweight.Config) { c.ErrorPenalty = -1 }, []string{"error penalty"}},
		{"infinite penalty", func(c *loadweight.Config) { c.ErrorPenalty = math.Inf(1) }, []string{"error penalty"}},
		{"zero smoothing", func(c *loadweight.Config) { c.Smoothing = 0 }, []string{"smoothing"}},
		{"smoothing over 1", func(c *loadweight.Config) { c.Smoothing = 1.1 }, []string{"smoothing"}},
		{"NaN min weight", func(c *loadweight.Config) { c.MinWeightFraction = math.NaN() }, []string{"min weight"}},
		{"min weight over 1", func(c *loadweight.Config) { c.MinWeightFraction = 2 }, []string{"min weight"}},
		{"negative threshold", func(c *loadweight.Config) { c.ChangeThreshold = -0.1 }, []string{"change threshold"}},
		{"negative interval", func(c *loadweight.Config) { c.MinUpdateInterval = -time.Second }, []string{"min update interval"}},
		{"zero overload", func(c *loadweight.Config) { c.OverloadThreshold = 0 }, []string{"overload threshold"}},
		{"drop share 1", func(c *loadweight.Config) { c.MaxDropShare = 1 }, []string{"max drop share"}},
		{"outlier edges", func(c *loadweight.Config) {
			c.Outliers = loadweight.OutlierConfig{Factor: 1000, ReadmitFactor: 1000, MinEndpoints: 3, MaxEjectedFraction: 1,
				BaseEjectionTime: 1, MaxEjectionTime: 1, ProbeShare: 0.1}
		}, nil},
		{"outlier factor 1", func(c *loadweight.Config) { c.Outliers.Factor = 1 }, []string{"outlier factor"}},
		{"NaN outlier factor", func(c *loadweight.Config) { c.Outliers.Factor = math.NaN() }, []string{"outlier factor"}},
		{"readmit over factor", func(c *loadweight.Config) { c.Outliers.ReadmitFactor = 2.5 }, []string{"readmit factor"}},
		{"readmit factor 1", func(c *loadweight.Config) { c.Outliers.ReadmitFactor = 1 }, []string{"readmit factor"}},
		{"negative min excess", func(c *loadweight.Config) { c.Outliers.MinExcess = -1 }, []string{"min excess"}},
		{"negative eject-after", func(c *loadweight.Config) { c.Outliers.EjectAfter = -1 }, []string{"eject-after"}},
		{"2 min endpoints", func(c *loadweight.Config) { c.Outliers.MinEndpoints = 2 }, []string{"min endpoints"}},
		{"no ejections", func(c *loadweight.Config) { c.Outliers.MaxEjectedFraction = 0 }, []string{"max ejected fraction"}},
		{"zero ejection time", func(c *loadweight.Config) { c.Outliers.BaseEjectionTime = 0 }, []string{"base ejection time"}},
		{"max under base", func(c *loadweight.Config) { c.Outliers.MaxEjectionTime = time.Second }, []string{"max ejection time"}},
		{"zero probe share", func(c *loadweight.Config) { c.Outliers.ProbeShare = 0 }, []string{"probe share"}},
		{"probe share over 0.1", func(c *loadweight.Config) { c.Outliers.ProbeShare = 0.2 }, []string{"probe share"}},
		{"disabled but invalid", func(c *loadweight.Config) { c.Outliers.Enabled, c.Outliers.ProbeShare = false, 1 }, []string{"probe share"}},
		{"zero value", func(c *loadweight.Config) { *c = loadweight.Config{} }, []string{"expiry", "smoothing", "overload threshold", "outlier factor"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := loadweight.DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if _, nerr := loadweight.New(c); (nerr == nil) != (err == nil) {
				t.Errorf("New() = %v, Validate() = %v: want both nil or both errors", nerr, err)
			}
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error about %q", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate() = %v, want it to mention %q", err, want)
				}
			}
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	want := loadweight.Config{
		BlackoutPeriod: 10 * time.Second, Expiry: 3 * time.Minute, ErrorPenalty: 1, Smoothing: 0.3,
		MinWeightFraction: 0.1, ChangeThreshold: 0.1, MinUpdateInterval: time.Second,
		OverloadThreshold: 0.9, MaxDropShare: 0.5,
		Outliers: loadweight.OutlierConfig{
			Enabled: true, Factor: 2, ReadmitFactor: 1.5, MinExcess: time.Millisecond, EjectAfter: 2 * time.Second, MinEndpoints: 3,
			MaxEjectedFraction: 0.5, BaseEjectionTime: 5 * time.Second, MaxEjectionTime: 5 * time.Minute,
			ProbeShare: 0.005,
		},
	}
	if diff := cmp.Diff(want, loadweight.DefaultConfig()); diff != "" {
		t.Errorf("DefaultConfig() mismatch (-want +got):\n%s", diff)
	}
}

// BenchmarkUpdate measures Update for Ramp(10) and Ramp(100) with a fresh
// report per endpoint each call: "steady" when the weights stay within the
// threshold (nothing to publish), "publish" when every call publishes.
func BenchmarkUpdate(b *testing.B) {
	for _, n := range []int{10, 100} {
		eps := policytest.Ramp(n)
		for _, mode := range []string{"steady", "publish"} {
			b.Run(fmt.Sprintf("endpoints=%d/%s", n, mode), func(b *testing.B) {
				cfg := loadweight.DefaultConfig()
				cfg.BlackoutPeriod = 0
				if mode == "publish" {
					cfg.ChangeThreshold, cfg.MinUpdateInterval = 0, 0
				}
				w, err := loadweight.New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				rs := make([]loadreport.Report, n)
				m := make(map[string]loadreport.Report, n)
				b.ReportAllocs()
				step := 0
				for b.Loop() {
					step++
					now := t0.Add(time.Duration(step) * time.Millisecond)
					for i, e := range eps {
						rs[i] = loadreport.Report{QPS: 100 + float64((step+i)%7), CPU: 0.5, At: now}
						m[e.ID] = rs[i]
					}
					w.Update(now, eps, m)
				}
			})
		}
	}
}

// TestSetConfig: a new config applies from the next Update; a bad one is
// refused and changes nothing.
func TestSetConfig(t *testing.T) {
	cfg := loadweight.DefaultConfig()
	cfg.BlackoutPeriod, cfg.Smoothing, cfg.MinUpdateInterval = 0, 1, 0
	w, err := loadweight.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eps := policytest.Endpoints("a", "b")
	busy := func(s float64) map[string]loadreport.Report {
		return map[string]loadreport.Report{"a": rep(s, 250, 2.5), "b": rep(s, 250, 2.5)}
	}
	if res, _ := w.Update(at(0), eps, busy(0)); res.DropShare != 0.5 {
		t.Fatalf("drop share %v, want the cap 0.5", res.DropShare)
	}
	bad := cfg
	bad.MaxDropShare = 2
	if err := w.SetConfig(bad); err == nil || w.Config() != cfg {
		t.Errorf("SetConfig(max drop share 2) = %v, config %+v; want an error and the config kept", err, w.Config())
	}
	lower := cfg
	lower.MaxDropShare = 0.2
	if err := w.SetConfig(lower); err != nil {
		t.Fatal(err)
	}
	if res, _ := w.Update(at(1), eps, busy(1)); res.DropShare != 0.2 {
		t.Errorf("after SetConfig: drop share %v, want the new cap 0.2", res.DropShare)
	}
}
