package admin

import (
	"time"
)

// serviceViewOf formats one service for the page.
func serviceViewOf(s serviceStatus, now time.Time) serviceView {
	v := serviceView{
		Name:           s.Name,
		Policy:         s.Policy,
		PolicySource:   s.PolicySource,
		ChildPolicy:    s.ChildPolicy,
		Clients:        s.Streams,
		Fallback:       s.Fallback,
		FallbackReason: s.FallbackReason,
		PickFirst:      s.PickFirst,
		RoundRobinLen:  len(s.RoundRobin),
	}
	if s.OverloadDrop > 0 {
		v.Drops = append(v.Drops, dropView{"overload", formatPct(s.OverloadDrop)})
	}
	if s.RateLimitDrop > 0 {
		v.Drops = append(v.Drops, dropView{"rate limit", formatPct(s.RateLimitDrop)})
	}
	if s.RateLimit > 0 {
		v.RateLimit = formatRate(s.RateLimit)
		v.Offered = formatRate(s.OfferedRate)
	} else if s.OfferedRate > 0 {
		v.Offered = formatRate(s.OfferedRate)
	}
	if !s.SnapshotAt.IsZero() {
		v.SnapshotAge = ago(now, s.SnapshotAt)
	}
	v.RoundRobin = s.RoundRobin[:min(len(s.RoundRobin), maxListShown)]
	v.RoundRobinMore = len(s.RoundRobin) - len(v.RoundRobin)
	// The target share of an endpoint is its share of the entries in the
	// list a round_robin client gets.
	entries := map[string]int{}
	for _, a := range s.RoundRobin {
		entries[a]++
	}
	targets := make([]float64, len(s.Endpoints))
	for i, e := range s.Endpoints {
		ev := endpointView{
			Address:     e.Address,
			ID:          e.ID,
			Node:        e.Node,
			Health:      e.Health,
			HealthClass: healthClass(e.Health),
			Weight:      formatNum(float64(e.Weight)),
			LoadWeight:  "–",
			Utilization: "–",
			QPS:         "–",
			ReportAge:   "–",
			Calls:       e.Calls,
			First:       e.First,
		}
		if e.LoadWeight > 0 {
			ev.LoadWeight = formatNum(e.LoadWeight)
		}
		if e.FreshReport {
			ev.Utilization = formatPct(e.Utilization)
			ev.QPS = formatNum(e.QPS)
		}
		if e.ReportAge > 0 {
			ev.ReportAge = formatDuration(e.ReportAge)
		}
		targets[i] = float64(entries[e.Address])
		v.TotalCalls += e.Calls
		v.Endpoints = append(v.Endpoints, ev)
	}
	shareViews(v.Endpoints, targets)
	return v
}
