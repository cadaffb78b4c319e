package lbserver

import (
	"time"

	"github.com/lookaside-lb/lookaside/clientstats"
)

// clientStatsConfig derives the bounds on ClientStats from the config and
// the settings in force: see Settings.MaxClientCallRate and
// Settings.MaxClientRateShare. A stream may send two reports per
// ClientStatsInterval on average (one per second when clients are asked to
// send none), three at once. ShareRate reads the settings in force when a
// stream first reports.
func clientStatsConfig(cfg Config, settings func() *live) clientstats.Config {
	interval := cfg.ClientStatsInterval
	reportRate := 1.0
	if interval > 0 {
		reportRate = 2 / interval.Seconds()
	}
	return clientstats.Config{
		MaxCallRate:   settings().MaxClientCallRate,
		Burst:         max(2*interval, 10*time.Second),
		MaxReportRate: reportRate,
		ReportBurst:   3,
		ShareRate: func(service string) float64 {
			l := settings()
			return l.MaxClientRateShare * l.rateLimit(service)
		},
		ShareBurst: max(interval, time.Second),
	}
}
