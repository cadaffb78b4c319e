package replica

import (
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/loadweight"
)

// TestLBSettingsLatencyOutliers: load_reports.latency_outliers and
// services.<name>.latency_outliers reach the balancer's settings.
func TestLBSettingsLatencyOutliers(t *testing.T) {
	cfg := config.Default()
	if got := lbSettings(cfg).LoadWeight.Outliers; got != loadweight.DefaultOutlierConfig() {
		t.Errorf("defaults: %+v, want loadweight.DefaultOutlierConfig()", got)
	}
	on, off := true, false
	lo := &cfg.LoadReports.LatencyOutliers
	lo.Enabled, lo.Factor, lo.ReadmitFactor, lo.MinExcess = false, 3, 2, config.Duration(2*time.Millisecond)
	lo.MinEndpoints, lo.MaxEjectedFraction, lo.ProbeShare, lo.EjectAfter = 4, 0.25, 0.01, config.Duration(3*time.Second)
	lo.BaseEjectionTime, lo.MaxEjectionTime = config.Duration(10*time.Second), config.Duration(time.Minute)
	cfg.Services = map[string]config.Service{"a": {LatencyOutliers: &on}, "b": {LatencyOutliers: &off}, "c": {}}
	ls := lbSettings(cfg)
	want := loadweight.OutlierConfig{Factor: 3, ReadmitFactor: 2, MinExcess: 2 * time.Millisecond, EjectAfter: 3 * time.Second, MinEndpoints: 4,
		MaxEjectedFraction: 0.25, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: time.Minute, ProbeShare: 0.01}
	if got := ls.LoadWeight.Outliers; got != want {
		t.Errorf("outliers %+v\nwant %+v", got, want)
	}
	for svc, mode := range map[string]lbserver.OutlierMode{"a": lbserver.OutliersOn, "b": lbserver.OutliersOff, "c": lbserver.OutliersDefault} {
		if got := ls.Services[svc].LatencyOutliers; got != mode {
			t.Errorf("service %s: mode %v, want %v", svc, got, mode)
		}
	}
}
