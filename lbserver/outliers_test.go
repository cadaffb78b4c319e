package lbserver

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/policy/leastload"
)

// latencyLoad reports 100 calls/s at CPU 0.5 and a mean latency it can be
// told (Concurrency = QPS × latency).
type latencyLoad struct{ ns atomic.Int64 }

func (l *latencyLoad) Metrics() loadreport.Metrics {
	return loadreport.Metrics{CPU: 0.5, QPS: 100, Concurrency: 100 * time.Duration(l.ns.Load()).Seconds()}
}

// serveLatency serves ORCA reports of latency d on a loopback port until
// the test ends; the returned load changes it.
func serveLatency(t *testing.T, d time.Duration) (string, *latencyLoad) {
	t.Helper()
	load := &latencyLoad{}
	load.ns.Store(int64(d))
	rep, err := loadreport.NewReporter(load, loadreport.ReporterConfig{MinInterval: 20 * time.Millisecond, Logger: testConfig(nil).Logger})
	if err != nil {
		t.Fatal(err)
	}
	return serveReporter(t, rep), load
}

// TestLatencyOutliersStatus: a least_load service whose endpoint reports
// four times the latency of its three peers ejects it: Status shows each
// endpoint's latency and the outlier, which gets under 1 % of a new
// client's list; it is readmitted when its latency is back. A service that
// turns outliers off, and a round_robin service collecting load for its
// drop bound, eject nothing.
func TestLatencyOutliersStatus(t *testing.T) {
	mk := func(svc string) (discovery.Snapshot, *latencyLoad) {
		var eps []discovery.Endpoint
		var slow *latencyLoad
		for i, d := range []time.Duration{20 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond, 5 * time.Millisecond} {
			addr, load := serveLatency(t, d)
			if i == 0 {
				slow = load
			}
			eps = append(eps, ep(svc+"-"+string(rune('a'+i)), addr))
		}
		return snap(svc, eps...), slow
	}
	ll, slow := mk("ll")
	off, _ := mk("off")
	shed, _ := mk("shed")
	cfg := testConfig(newFakeSource(ll, off, shed))
	cfg.LoadReport.Interval = 20 * time.Millisecond
	cfg.LoadWeight.BlackoutPeriod = 0
	cfg.LoadWeight.MinUpdateInterval = 0
	cfg.LoadWeight.Outliers.BaseEjectionTime = 100 * time.Millisecond
	cfg.LoadWeight.Outliers.EjectAfter = 100 * time.Millisecond
	cfg.Services = map[string]ServiceSettings{
		"ll":   {Policy: leastload.Name},
		"off":  {Policy: leastload.Name, LatencyOutliers: OutliersOff},
		"shed": {MaxDropShare: 0.3},
	}
	s, c := startServer(t, cfg)
	for _, svc := range []string{"ll", "off", "shed"} {
		recvList(t, openOK(t, c, svc))
	}
	status := func(svc string) ServiceStatus {
		for _, st := range s.Status() {
			if st.Service == svc {
				return st
			}
		}
		t.Fatalf("no status for %s", svc)
		return ServiceStatus{}
	}
	wait := func(what, svc string, ok func(ServiceStatus) bool) ServiceStatus {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			st := status(svc)
			if ok(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %+v", what, st)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	near := func(got, want time.Duration) bool { return (got - want).Abs() < want/100 }

	st := wait("ll's slow endpoint ejected", "ll", func(st ServiceStatus) bool {
		return st.Outliers == 1 && st.Endpoints[0].Outlier && near(st.Endpoints[0].Latency, 20*time.Millisecond)
	})
	if !st.LatencyOutliers || st.OutlierEjections != 1 || !near(st.MedianLatency, 5*time.Millisecond) {
		t.Errorf("ll: detection %v, %d ejections, median %v; want on, 1, 5ms", st.LatencyOutliers, st.OutlierEjections, st.MedianLatency)
	}
	for _, e := range st.Endpoints[1:] {
		if e.Outlier || !near(e.Latency, 5*time.Millisecond) {
			t.Errorf("ll: endpoint %s outlier %v, latency %v; want a 5ms peer", e.ID, e.Outlier, e.Latency)
		}
	}
	slowEntries := 0
	for _, e := range st.RoundRobinList {
		if e.ID == "ll-a" {
			slowEntries++
		}
	}
	if share := float64(slowEntries) / float64(len(st.RoundRobinList)); slowEntries < 1 || share >= 0.01 {
		t.Errorf("ll: the outlier has %d of %d entries, want at least one and under 1 %%", slowEntries, len(st.RoundRobinList))
	}

	for _, svc := range []string{"off", "shed"} {
		st := wait(svc+"'s latencies known", svc, func(st ServiceStatus) bool { return near(st.Endpoints[0].Latency, 20*time.Millisecond) })
		if st.LatencyOutliers || st.Outliers != 0 || st.Endpoints[0].Outlier || st.OutlierEjections != 0 {
			t.Errorf("%s: detection %v, %d outliers, %d ejections; want off and none", svc, st.LatencyOutliers, st.Outliers, st.OutlierEjections)
		}
	}

	// Recovered: readmitted after the ejection time, at its fair share.
	slow.ns.Store(int64(5 * time.Millisecond))
	st = wait("ll's endpoint readmitted", "ll", func(st ServiceStatus) bool { return st.Outliers == 0 })
	if st.Endpoints[0].Outlier || st.OutlierEjections != 1 {
		t.Errorf("ll after recovery: outlier %v, %d ejections", st.Endpoints[0].Outlier, st.OutlierEjections)
	}

	// Slow again, then a reconfiguration turns detection off: readmitted.
	slow.ns.Store(int64(20 * time.Millisecond))
	wait("ll's endpoint ejected again", "ll", func(st ServiceStatus) bool { return st.Outliers == 1 && st.OutlierEjections == 2 })
	set := s.Settings()
	set.Services = map[string]ServiceSettings{"ll": {Policy: leastload.Name, LatencyOutliers: OutliersOff}}
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	wait("ll's detection off", "ll", func(st ServiceStatus) bool { return !st.LatencyOutliers && st.Outliers == 0 })
}

// TestWeightConfigOutliers: detection follows the server's default and
// the service's mode, under least_load only.
func TestWeightConfigOutliers(t *testing.T) {
	set := DefaultSettings()
	set.Services = map[string]ServiceSettings{
		"on":  {LatencyOutliers: OutliersOn},
		"off": {LatencyOutliers: OutliersOff},
	}
	offByDefault := set
	offByDefault.LoadWeight.Outliers.Enabled = false
	for _, tc := range []struct {
		set      Settings
		svc, pol string
		want     bool
	}{
		{set, "any", leastload.Name, true},
		{set, "any", "round_robin", false},
		{set, "off", leastload.Name, false},
		{set, "on", leastload.Name, true},
		{set, "on", "round_robin", false},
		{offByDefault, "any", leastload.Name, false},
		{offByDefault, "on", leastload.Name, true},
	} {
		l, err := newLive(tc.set, 255)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.weightConfig(tc.svc, tc.pol).Outliers.Enabled; got != tc.want {
			t.Errorf("default %v, service %s under %s: detection %v, want %v", tc.set.LoadWeight.Outliers.Enabled, tc.svc, tc.pol, got, tc.want)
		}
	}
	bad := DefaultSettings()
	bad.Services = map[string]ServiceSettings{"x": {LatencyOutliers: 7}}
	if errs := bad.validate(255, true); len(errs) != 1 {
		t.Errorf("latency outliers mode 7: errors %v, want one", errs)
	}
}
