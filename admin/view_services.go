package admin

import (
	"math"
	"time"

	"github.com/lookaside-lb/lookaside/lbserver"
)

// serviceViewOf formats one service for the page.
func serviceViewOf(s lbserver.ServiceStatus, now time.Time) serviceView {
	v := serviceView{
		Name:           s.Service,
		Policy:         s.Policy,
		PolicySource:   s.PolicySource,
		ChildPolicy:    s.ChildPolicy,
		Clients:        int64(s.Streams),
		XDSClients:     int64(s.XDSStreams),
		Fallback:       s.Fallback,
		FallbackReason: s.FallbackReason,
		PickFirst:      s.PickFirst.Address,
		RoundRobinLen:  len(s.RoundRobinList),
		LoadReports:    s.LoadReports,
		Outliers:       s.LatencyOutliers,
		Ejected:        s.Outliers,
		MedianLatency:  formatLatency(s.MedianLatency),
	}
	if s.OverloadDropShare > 0 {
		v.Drops = append(v.Drops, dropView{"overload", formatPct(s.OverloadDropShare)})
	}
	if s.RateLimitDropShare > 0 {
		v.Drops = append(v.Drops, dropView{"rate limit", formatPct(s.RateLimitDropShare)})
	}
	if s.RateLimit > 0 {
		v.RateLimit = formatRate(s.RateLimit)
		v.Offered = formatRate(s.OfferedRate)
	}
	switch {
	case !s.Ready:
		v.SnapshotAge = "not yet"
	case !s.SnapshotArrived.IsZero():
		v.SnapshotAge = ago(now, s.SnapshotArrived)
	}
	// The target share of an endpoint is its share of the endpoint
	// entries in the list a new round_robin client gets.
	entries := map[string]int{}
	for i, e := range s.RoundRobinList {
		a := e.Address
		if e.Drop {
			a = "drop"
			if e.DropToken != "" {
				a += " (" + e.DropToken + ")"
			}
		} else {
			entries[e.ID]++
		}
		if i < maxListShown {
			v.RoundRobin = append(v.RoundRobin, a)
		}
	}
	v.RoundRobinMore = len(s.RoundRobinList) - len(v.RoundRobin)
	targets := make([]float64, len(s.Endpoints))
	for i, e := range s.Endpoints {
		calls := int64(math.Round(e.CallsAttributed))
		ev := endpointView{
			Address:     e.Address,
			ID:          e.ID,
			InstanceID:  e.InstanceID,
			Node:        e.Node,
			Health:      e.Health,
			HealthClass: healthClass(e.Health),
			Weight:      formatNum(float64(e.Weight)),
			LoadWeight:  "–",
			Utilization: "–",
			QPS:         "–",
			ReportAge:   "–",
			Latency:     formatLatency(e.Latency),
			Outlier:     e.Outlier,
			Calls:       calls,
			First:       int64(e.FirstOf),
		}
		if e.LoadWeight > 0 {
			ev.LoadWeight = formatNum(e.LoadWeight)
		}
		if e.HasReport {
			ev.Utilization = formatPct(e.Utilization)
			ev.QPS = formatNum(e.QPS)
			ev.ReportAge = formatDuration(e.ReportAge)
		} else if e.LoadStream != "" && e.LoadStream != "connected" {
			ev.ReportAge = e.LoadStream
		}
		v.HasNode = v.HasNode || e.Node != ""
		targets[i] = float64(entries[e.ID])
		v.TotalCalls += calls
		v.Endpoints = append(v.Endpoints, ev)
	}
	shareViews(v.Endpoints, targets)
	return v
}
