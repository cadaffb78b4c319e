package lbserver

import (
	"time"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
)

// clientStatsConfig derives the bounds on ClientStats from cfg: see
// Config.MaxClientCallRate and Config.MaxClientRateShare. A stream may send
// two reports per ClientStatsInterval on average (one per second when
// clients are asked to send none), three at once.
func clientStatsConfig(cfg Config) clientstats.Config {
	interval := cfg.ClientStatsInterval
	reportRate := 1.0
	if interval > 0 {
		reportRate = 2 / interval.Seconds()
	}
	return clientstats.Config{
		MaxCallRate:   cfg.MaxClientCallRate,
		Burst:         max(2*interval, 10*time.Second),
		MaxReportRate: reportRate,
		ReportBurst:   3,
		ShareRate: func(service string) float64 {
			return cfg.MaxClientRateShare * rateLimitOf(cfg, service)
		},
		ShareBurst: max(interval, time.Second),
	}
}

// rateLimitOf returns the rate limit of service (of its name without tag
// filter), 0 for none.
func rateLimitOf(cfg Config, service string) float64 {
	base, _ := discovery.SplitName(service)
	return cfg.RateLimits[base]
}
