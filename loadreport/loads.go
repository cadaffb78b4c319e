package loadreport

import (
	"maps"
	"net/netip"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
)

// Report is the freshest load report of one endpoint, as the Collector
// received it. Values are what the endpoint sent, with NaN and negative
// values read as 0 and +Inf as the largest float64; proto3 cannot tell an
// unset field from 0, so 0 also means "not reported".
type Report struct {
	// CPU is cpu_utilization: the share of the endpoint's CPU in use,
	// usually [0, 1].
	CPU float64
	// Mem is mem_utilization, [0, 1].
	Mem float64
	// AppUtil is application_utilization, [0, ∞): the endpoint's own
	// measure of how busy it is. Balancers prefer it to CPU when it is
	// not 0.
	AppUtil float64
	// QPS is rps_fractional: calls per second the endpoint finished.
	QPS float64
	// EPS is eps: failed calls per second.
	EPS float64
	// InFlight is named_metrics["inflight"] (InFlightMetric): calls
	// running on the endpoint when it sent the report.
	InFlight float64
	// Concurrency is named_metrics["concurrency"] (ConcurrencyMetric):
	// the mean number of calls in flight over the endpoint's load window,
	// the window of QPS. 0 when not reported.
	Concurrency float64
	// Utilization is the utilization map, Named the named_metrics map
	// (with "inflight" and "concurrency"). Shared: they must not be modified. Nil when empty.
	Utilization map[string]float64
	Named       map[string]float64

	// At is when the Collector received the report (its clock).
	At time.Time
	// Expires is when the report goes stale and the endpoint is dropped
	// from Loads.Reports: At plus the TTL (see Config.TTL).
	Expires time.Time
}

// Age returns how old the report is at now (never negative).
func (r Report) Age(now time.Time) time.Duration { return max(now.Sub(r.At), 0) }

// Fresh reports whether the report has not expired at now.
func (r Report) Fresh(now time.Time) bool { return now.Before(r.Expires) }

// sameValues reports whether r and o carry the same measurements, whatever
// their times.
func (r Report) sameValues(o Report) bool {
	return r.CPU == o.CPU && r.Mem == o.Mem && r.AppUtil == o.AppUtil && r.QPS == o.QPS &&
		r.EPS == o.EPS && r.InFlight == o.InFlight && r.Concurrency == o.Concurrency &&
		maps.Equal(r.Utilization, o.Utilization) && maps.Equal(r.Named, o.Named)
}

// fromProto converts a received report. It does not set Expires.
func fromProto(p *orcapb.OrcaLoadReport, at time.Time) Report {
	named := sanitizeMap(p.GetNamedMetrics())
	return Report{
		CPU:         sanitize(p.GetCpuUtilization()),
		Mem:         sanitize(p.GetMemUtilization()),
		AppUtil:     sanitize(p.GetApplicationUtilization()),
		QPS:         sanitize(p.GetRpsFractional()),
		EPS:         sanitize(p.GetEps()),
		InFlight:    named[InFlightMetric],
		Concurrency: named[ConcurrencyMetric],
		Utilization: sanitizeMap(p.GetUtilization()),
		Named:       named,
		At:          at,
	}
}

// sanitizeMap returns a sanitized copy of m, or nil when m is empty.
func sanitizeMap(m map[string]float64) map[string]float64 {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[k] = sanitize(v)
	}
	return out
}

// StreamState is the liveness of one endpoint's load report stream.
type StreamState struct {
	// Addr is the address the stream dials.
	Addr netip.AddrPort
	// Connected is true from the first report of a stream until the stream
	// fails.
	Connected bool
	// Unimplemented is true when the endpoint answered Unimplemented: it
	// serves no ORCA. The stream is retried only after
	// Config.UnimplementedRetry, or at once if the endpoint's address
	// changes.
	Unimplemented bool
	// LastError is why the last stream attempt failed; nil once a report
	// has arrived since.
	LastError error
	// Failures counts consecutive failed attempts (0 once a report
	// arrives; Unimplemented answers do not count).
	Failures int
	// Since is when Connected or Unimplemented last changed, or when the
	// endpoint started to be tracked.
	Since time.Time
}

// Loads is an immutable snapshot of what a Collector knows. Its maps are
// shared between goroutines and must not be modified.
type Loads struct {
	// Reports holds the fresh report of each endpoint, by endpoint ID. An
	// endpoint that never reported, whose report expired, or that serves no
	// ORCA is absent: balance it by its discovery weight.
	Reports map[string]Report
	// Streams holds the stream state of every tracked endpoint, by ID.
	Streams map[string]StreamState
	// Changed is closed when the Collector's loads change meaningfully
	// after this snapshot: an endpoint's report appears, changes value or
	// disappears, an endpoint is tracked or untracked, or a stream
	// connects, fails after being connected, or turns out Unimplemented.
	// Reports that repeat the same values only refresh At and Expires
	// without closing it.
	Changed <-chan struct{}
}

// Report returns the fresh report of endpoint id, if there is one.
func (l Loads) Report(id string) (Report, bool) {
	r, ok := l.Reports[id]
	return r, ok
}
