package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookaside-lb/lookaside/lbserver"
)

// statuser is a Balancer that reports the status of its services;
// *lbserver.Server is one.
type statuser interface {
	Status() []lbserver.ServiceStatus
}

var _ statuser = (*lbserver.Server)(nil)

// Descriptions of the metrics read from the balancer's Status.
var (
	descEndpoints = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "service_endpoints"),
		"Usable endpoints of the service now (passing instances).", []string{"service"}, nil)
	descFallback = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "service_fallback"),
		"1 when new streams of the service get a FallbackResponse instead of a list, else 0.", []string{"service"}, nil)
	descDropShare = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "drop_share"),
		"Share of calls the service's lists drop, by cause (overload, rate_limit).", []string{"service", "cause"}, nil)
	descOutliers = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "latency_outliers"),
		"Endpoints of the service ejected as latency outliers now (least_load: they get a probe share of the calls).", []string{"service"}, nil)
	descEjections = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "outlier_ejections_total"),
		"Latency outlier ejections of the service's endpoints since the service was watched.", []string{"service"}, nil)
	descLatency = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "orca", "latency_seconds"),
		"Endpoint's smoothed mean latency from its load reports: mean calls in flight / calls per second (absent when unknown).", []string{"service", "endpoint"}, nil)
	descReportAge = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "orca", "report_age_seconds"),
		"Age of the endpoint's freshest ORCA load report (absent without a fresh one).", []string{"service", "endpoint"}, nil)
	descUtilization = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "orca", "utilization_ratio"),
		"Utilization the endpoint last reported over ORCA (application utilization, else CPU; absent without a fresh report).", []string{"service", "endpoint"}, nil)
	descLoadWeight = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "orca", "load_weight"),
		"Weight derived from the endpoint's load reports in use, relative to the service's other endpoints (mean 1; absent without one).", []string{"service", "endpoint"}, nil)
)

// describeStatus sends the descriptions of the metrics read from the
// balancer's Status.
func describeStatus(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEndpoints, descFallback, descDropShare, descOutliers, descEjections,
		descReportAge, descUtilization, descLoadWeight, descLatency} {
		ch <- d
	}
}

// statusMetrics reads the balancer's Status: per-service and per-endpoint
// gauges, for services the directory lists (labelled by their name
// without tag filter; when several tag filters of one service are
// watched, the first by name, usually the unfiltered one, speaks for
// it). The services reported are marked in watched.
func (m *Metrics) statusMetrics(src *Sources, _ time.Time, watched map[string]bool) []prometheus.Metric {
	st, ok := src.Balancer.(statuser)
	if !ok {
		return nil
	}
	var out []prometheus.Metric
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		out = append(out, prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	done := map[string]bool{}
	for _, ss := range st.Status() {
		svc := labelOf(src.Directory, ss.Service)
		if svc == lbserver.UnknownServiceLabel || done[svc] {
			continue
		}
		done[svc], watched[svc] = true, true
		gauge(descEndpoints, float64(len(ss.Endpoints)), svc)
		gauge(descFallback, bool01(ss.Fallback), svc)
		gauge(descDropShare, ss.OverloadDropShare, svc, "overload")
		gauge(descDropShare, ss.RateLimitDropShare, svc, "rate_limit")
		if ss.LoadReports {
			gauge(descOutliers, float64(ss.Outliers), svc)
			out = append(out, prometheus.MustNewConstMetric(descEjections, prometheus.CounterValue, float64(ss.OutlierEjections), svc))
		}
		for _, ep := range ss.Endpoints {
			if ep.HasReport {
				gauge(descReportAge, ep.ReportAge.Seconds(), svc, ep.ID)
				gauge(descUtilization, ep.Utilization, svc, ep.ID)
			}
			if ep.LoadWeight > 0 {
				gauge(descLoadWeight, ep.LoadWeight, svc, ep.ID)
			}
			if ep.Latency > 0 {
				gauge(descLatency, ep.Latency.Seconds(), svc, ep.ID)
			}
		}
	}
	return out
}
