package lbserver

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/lookaside-lb/lookaside/policy"
)

// ServiceStatus is what the balancer does for one watched service at one
// moment; see Server.Status.
type ServiceStatus struct {
	// Service is the canonical name watched (with its tag filter, if any).
	Service string `json:"service"`
	// Policy is the balancing policy in use; PolicySource where it came
	// from: PolicyFromDefault, PolicyFromConfig or PolicyFromConsul.
	Policy       string `json:"policy"`
	PolicySource string `json:"policy_source"`
	// ChildPolicy is the child policy its clients run (ServiceSettings).
	ChildPolicy string `json:"child_policy"`
	// Streams is the client streams on the service now.
	Streams int `json:"streams"`
	// XDSStreams is the xDS clients' ADS streams that follow the service
	// now (subscribed to a name that maps to it; one per stream, however
	// many of its names do).
	XDSStreams int `json:"xds_streams"`
	// Ready is whether discovery has answered for the service.
	Ready bool `json:"ready"`
	// SnapshotArrived is when the discovery answer in use arrived (zero
	// before the first); SnapshotIndex its source's index (Consul's).
	SnapshotArrived time.Time `json:"snapshot_arrived,omitzero"`
	SnapshotIndex   uint64    `json:"snapshot_index"`
	// Fallback is whether new streams get a FallbackResponse instead of a
	// list, and FallbackReason why (FallbackNoInstances, or
	// FallbackFirstListTimeout while discovery has not answered).
	Fallback       bool   `json:"fallback"`
	FallbackReason string `json:"fallback_reason"`
	// OverloadDropShare and RateLimitDropShare are the shares of calls
	// the lists drop for overload and for the rate limit; DropShare the
	// one in the lists (the larger), DropToken its token.
	OverloadDropShare  float64 `json:"overload_drop_share"`
	RateLimitDropShare float64 `json:"rate_limit_drop_share"`
	DropShare          float64 `json:"drop_share"`
	DropToken          string  `json:"drop_token"`
	// RateLimit is the service's rate limit in calls/s (0: none);
	// OfferedRate the calls/s its clients report offering, as measured
	// for the rate limit (0 without one).
	RateLimit   float64 `json:"rate_limit"`
	OfferedRate float64 `json:"offered_rate"`
	// LoadReports is whether the balancer collects ORCA reports for it.
	LoadReports bool `json:"load_reports"`
	// LatencyOutliers is whether latency outliers are detected (under
	// least_load, ServiceSettings.LatencyOutliers); Outliers how many
	// endpoints are ejected now; MedianLatency the median of the
	// endpoints' latencies the decision compares with (0 when fewer than
	// the minimum are known); OutlierEjections the ejections since the
	// service was watched.
	LatencyOutliers  bool          `json:"latency_outliers"`
	Outliers         int           `json:"outliers"`
	MedianLatency    time.Duration `json:"median_latency_ns"`
	OutlierEjections uint64        `json:"outlier_ejections"`
	// Endpoints are the usable endpoints, sorted by ID.
	Endpoints []EndpointStatus `json:"endpoints"`
	// RoundRobinList is the list a new client would get now (drop entries
	// included), computed without counting it; a round_robin client
	// spreads its calls over it. PickFirst is the endpoint a new
	// pick_first client would use: the list's first endpoint entry (zero
	// when there is none).
	RoundRobinList []ListEntry `json:"round_robin_list"`
	PickFirst      ListEntry   `json:"pick_first"`
}

// EndpointStatus is one endpoint of a ServiceStatus.
type EndpointStatus struct {
	// ID is the balancer's key of the instance (its Consul service ID, or
	// node/ID when two nodes register the same ID); InstanceID the Consul
	// service ID its lb-token derives from; Node the node part of ID, when
	// it has one.
	ID         string `json:"id"`
	InstanceID string `json:"instance_id"`
	Node       string `json:"node"`
	// Address is what clients dial.
	Address string `json:"address"`
	// Weight is the discovery weight (Consul's, or lb-weight meta).
	Weight int `json:"weight"`
	// Health is "passing": discovery hands the balancer usable instances
	// only (instances in warning, when discovery includes them, too).
	Health string `json:"health"`
	// LoadWeight is the weight derived from load reports in use,
	// relative to the others (mean 1); 0 when there is none.
	LoadWeight float64 `json:"load_weight"`
	// HasReport is whether the endpoint has a fresh ORCA report;
	// Utilization (application_utilization, else cpu_utilization), QPS
	// and ReportAge are of that report, zero without one.
	HasReport   bool          `json:"has_report"`
	Utilization float64       `json:"utilization"`
	QPS         float64       `json:"qps"`
	ReportAge   time.Duration `json:"report_age_ns"`
	// Latency is the endpoint's smoothed mean latency from its load
	// reports (mean calls in flight / QPS; 0 when unknown), as of the
	// planner's last look at the reports; Outlier whether it is ejected as
	// a latency outlier (as of the load weights in force): it gets a probe
	// share of the calls instead of its load weight.
	Latency time.Duration `json:"latency_ns"`
	Outlier bool          `json:"outlier"`
	// LoadStream is the state of the ORCA stream to the endpoint:
	// "connected", "unimplemented" (it serves no ORCA), "failing",
	// "connecting", or "" without load reports.
	LoadStream string `json:"load_stream"`
	// CallsAttributed estimates the calls clients started on this
	// endpoint since the service was watched (or the endpoint appeared):
	// the calls each stream reports starting in ClientStats, spread over
	// the list that stream was last sent by its child policy (round_robin:
	// by entries, drop entries' share unattributed; pick_first: to the
	// first entry). An estimate: lists change between reports, and
	// clients report calls, not where they went.
	CallsAttributed float64 `json:"calls_attributed"`
	// FirstOf is how many streams have this endpoint first in their list.
	FirstOf int `json:"first_of"`
}

// ListEntry is one entry of a list: an endpoint (by ID and address) or a
// drop entry with its token.
type ListEntry struct {
	ID        string `json:"id"`
	Address   string `json:"address"`
	Drop      bool   `json:"drop"`
	DropToken string `json:"drop_token"`
}

// Status returns the status of every watched service, sorted by name: a
// copy, built from each service's current plan, its load reports and
// counters, with one policy run per service for the lists of a new
// client. Cheap enough to call every second while streams run (its cost
// grows with the endpoints, not the streams); it takes each service's
// assignment lock briefly, as a new stream does, and holds no lock while
// running the policy. Safe for concurrent use; does not block.
func (s *Server) Status() []ServiceStatus {
	svcs := s.reg.all()
	slices.SortFunc(svcs, func(a, b *service) int { return strings.Compare(a.name, b.name) })
	out := make([]ServiceStatus, 0, len(svcs))
	now := time.Now()
	set := s.live()
	for _, svc := range svcs {
		out = append(out, svc.status(now, set.childPolicy(svc.name)))
	}
	return out
}

// status builds the ServiceStatus of svc at now.
func (svc *service) status(now time.Time, child string) ServiceStatus {
	p := svc.cur.Load()
	collector := svc.collector.Load()
	st := ServiceStatus{
		Service:            svc.name,
		Policy:             p.policyName,
		PolicySource:       p.policySource,
		ChildPolicy:        child,
		Streams:            int(svc.streams.Load()),
		XDSStreams:         svc.xdsStreams(),
		Ready:              p.ready,
		SnapshotArrived:    p.arrived,
		SnapshotIndex:      p.snap.Index,
		OverloadDropShare:  p.overloadDrop,
		RateLimitDropShare: p.rateDrop,
		DropShare:          p.dropShare,
		RateLimit:          p.rateLimit,
		OfferedRate:        math.Float64frombits(svc.offered.Load()),
		LoadReports:        collector != nil,
	}
	if p.dropShare > 0 {
		st.DropToken = p.dropToken
	}
	switch {
	case !p.ready:
		st.Fallback, st.FallbackReason = true, FallbackFirstListTimeout
	case len(p.snap.Endpoints) == 0:
		st.Fallback, st.FallbackReason = true, FallbackNoInstances
	}
	eps := p.snap.Endpoints
	st.Endpoints = make([]EndpointStatus, len(eps))
	assigned := make([]int, len(eps))
	svc.assignMu.Lock()
	for i, ep := range eps {
		assigned[i] = svc.assigned[ep.ID]
		st.Endpoints[i].CallsAttributed = svc.attributed[ep.ID]
	}
	svc.assignMu.Unlock()
	for i, ep := range eps {
		e := &st.Endpoints[i]
		e.ID, e.InstanceID, e.Address, e.Weight, e.Health = ep.ID, ep.TokenID(), ep.Addr.String(), ep.Weight, "passing"
		if node, _, ok := strings.Cut(ep.ID, "/"); ok && ep.Instance != "" {
			e.Node = node
		}
		e.FirstOf = assigned[i]
		if i < len(p.loadWeights) {
			e.LoadWeight = p.loadWeights[i]
		}
	}
	if v := loadViewOf(svc); v != nil && collector != nil {
		st.OutlierEjections = v.ejections
		st.MedianLatency = v.median
		st.LatencyOutliers = v.enabled
		// The outliers the plan's weights (and so its lists) come from.
		if len(p.load.Outliers) == len(eps) {
			st.Outliers = p.load.Ejected
			for i := range eps {
				st.Endpoints[i].Outlier = p.load.Outliers[i]
			}
		}
		if len(v.lat) == len(eps) {
			for i := range eps {
				st.Endpoints[i].Latency = v.lat[i]
			}
		}
	}
	if collector != nil {
		loads := collector.Loads()
		for i, ep := range eps {
			e := &st.Endpoints[i]
			if r, ok := loads.Reports[ep.ID]; ok {
				e.HasReport, e.QPS, e.ReportAge = true, r.QPS, r.Age(now)
				e.Utilization = r.AppUtil
				if !(e.Utilization > 0) {
					e.Utilization = r.CPU
				}
			}
			if ss, ok := loads.Streams[ep.ID]; ok {
				switch {
				case ss.Unimplemented:
					e.LoadStream = "unimplemented"
				case ss.Connected:
					e.LoadStream = "connected"
				case ss.Failures > 0:
					e.LoadStream = "failing"
				default:
					e.LoadStream = "connecting"
				}
			}
		}
	}
	if pr := p.prepare(); p.ready && len(eps) > 0 && pr != nil {
		entries := pr.List(policy.StreamInput{Assigned: assigned})
		if p.dropShare > 0 {
			entries = policy.AddDrops(entries, p.dropShare, p.dropToken, p.maxEntries)
		}
		st.RoundRobinList = make([]ListEntry, len(entries))
		first := -1
		for i, e := range entries {
			if e.Drop {
				st.RoundRobinList[i] = ListEntry{Drop: true, DropToken: e.DropToken}
				continue
			}
			st.RoundRobinList[i] = ListEntry{ID: eps[e.Index].ID, Address: eps[e.Index].Addr.String()}
			if first < 0 {
				first = i
			}
		}
		if first >= 0 {
			st.PickFirst = st.RoundRobinList[first]
		}
	}
	return st
}
