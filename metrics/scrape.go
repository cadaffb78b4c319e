package metrics

import (
	"maps"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// Descriptions of the metrics read at scrape time.
var (
	descConnsOpen = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "connections_open"),
		"Client connections open now.", nil, nil)
	descOwnConns = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "own_transport_connections"),
		"Client connections the balancer's own transport serves now (their first stream was BalanceLoad).", nil, nil)
	descHandedOff = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "connections_handed_off_total"),
		"Connections the balancer's own transport gave grpc-go's server (health, reflection, xDS, compressed BalanceLoad).", nil, nil)
	descProtocolErrors = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "http2_protocol_errors_total"),
		"Connections the balancer's own transport closed for breaking HTTP/2.", nil, nil)
	descServicesWatched = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "services_watched"),
		"Services watched now (bounded by max services).", nil, nil)
	descWatchesStarted = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "watches_started_total"),
		"Service watches started.", nil, nil)
	descBadClientStats = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "lb", "client_stats_rejected_total"),
		"ClientStats messages clamped or ignored as implausible.", nil, nil)
	descXDSNACKs = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "xds", "nacks_total"),
		"xDS responses clients rejected (NACK), by resource type: listener, route, cluster, endpoint.", []string{"type"}, nil)
	descConsulReachable = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "consul", "reachable"),
		"1 when the latest Consul request that completed was answered, else 0.", nil, nil)
	descConsulReady = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "consul", "catalog_ready"),
		"1 once the Consul catalog's service list was read (the replica can answer), else 0.", nil, nil)
	descConsulContactAge = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "consul", "last_contact_age_seconds"),
		"Seconds since Consul last answered a request (absent before the first answer).", nil, nil)
	descConsulAnswerAge = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "consul", "answer_age_seconds"),
		"Seconds since the service's endpoints were last known to match Consul (since the watch began if never), by watched service.",
		[]string{"service"}, nil)
	descCertExpiry = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "tls", "certificate_expiry_timestamp_seconds"),
		"When the TLS certificate in force expires (Unix time), by role: balancer (the listener's), orca (the load-report client's).",
		[]string{"role"}, nil)
)

// collector is the Metrics as a prometheus.Collector: it reads the
// sources, then reports every metric, so that one scrape is consistent.
type collector Metrics

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	m := (*Metrics)(c)
	for _, v := range m.vecs() {
		v.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{descConnsOpen, descOwnConns, descHandedOff, descProtocolErrors, descServicesWatched, descWatchesStarted, descBadClientStats, descXDSNACKs,
		descConsulReachable, descConsulReady, descConsulContactAge, descConsulAnswerAge, descCertExpiry} {
		ch <- d
	}
	describeStatus(ch)
}

// vecs are the metrics kept between scrapes.
func (m *Metrics) vecs() []prometheus.Collector {
	return []prometheus.Collector{m.streamsOpen, m.streamsStarted, m.streamsEnded, m.listsSent, m.listEntries, m.listDrops,
		m.changeToList, m.fallbacksSent, m.refused, m.consulRequests, m.consulErrors, m.consulDuration,
		m.dnsAnswers, m.dnsTruncated, m.dnsGuard,
		m.csStarted, m.csFinished, m.csFailed, m.csKnownReceived, m.csDropped}
}

// serviceVecs are the kept metrics with a service label.
func (m *Metrics) serviceVecs() []interface {
	DeletePartialMatch(prometheus.Labels) int
} {
	return []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.streamsOpen, m.streamsStarted, m.streamsEnded, m.listsSent, m.listEntries, m.listDrops, m.changeToList,
		m.fallbacksSent, m.csStarted, m.csFinished, m.csFailed, m.csKnownReceived, m.csDropped}
}

// Collect implements prometheus.Collector: it reads the sources, updates
// the ClientStats counters, deletes the series of services gone for
// Retention, and reports everything. Observer calls wait for it only
// while it marks the services it saw and prunes, never while it reads a
// source.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	m.scrapeMu.Lock()
	defer m.scrapeMu.Unlock()
	src := m.src.Load()
	now := m.now()
	var consts []prometheus.Metric
	watched := map[string]bool{}
	if b := src.Balancer; b != nil {
		st := b.Stats()
		consts = append(consts,
			prometheus.MustNewConstMetric(descConnsOpen, prometheus.GaugeValue, float64(st.ConnsOpen)),
			prometheus.MustNewConstMetric(descOwnConns, prometheus.GaugeValue, float64(st.OwnConns)),
			prometheus.MustNewConstMetric(descHandedOff, prometheus.CounterValue, float64(st.HandedOff)),
			prometheus.MustNewConstMetric(descProtocolErrors, prometheus.CounterValue, float64(st.ProtocolErrors)),
			prometheus.MustNewConstMetric(descServicesWatched, prometheus.GaugeValue, float64(st.ServicesWatched)),
			prometheus.MustNewConstMetric(descWatchesStarted, prometheus.CounterValue, float64(st.WatchesStarted)),
			prometheus.MustNewConstMetric(descBadClientStats, prometheus.CounterValue, float64(st.BadClientStats)))
		for typ, n := range st.XDSNACKs {
			consts = append(consts, prometheus.MustNewConstMetric(descXDSNACKs, prometheus.CounterValue, float64(n), typ))
		}
		m.readClientStats(src, b.ClientStats(), watched)
		consts = append(consts, m.statusMetrics(src, now, watched)...)
	}
	if cs := src.Consul; cs != nil {
		h := cs.Health()
		consts = append(consts,
			prometheus.MustNewConstMetric(descConsulReachable, prometheus.GaugeValue, bool01(h.Reachable)),
			prometheus.MustNewConstMetric(descConsulReady, prometheus.GaugeValue, bool01(h.Ready)))
		if !h.LastContact.IsZero() {
			consts = append(consts, prometheus.MustNewConstMetric(descConsulContactAge, prometheus.GaugeValue, max(now.Sub(h.LastContact), 0).Seconds()))
		}
		for svc, age := range cs.Staleness() {
			if label := labelOf(src.Directory, svc); label != lbserver.UnknownServiceLabel {
				watched[label] = true
				consts = append(consts, prometheus.MustNewConstMetric(descConsulAnswerAge, prometheus.GaugeValue, age.Seconds(), label))
			}
		}
	}
	for role, notAfter := range src.Certificates {
		if t := notAfter(); !t.IsZero() {
			consts = append(consts, prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, float64(t.Unix()), role))
		}
	}
	m.mu.Lock()
	for svc := range watched {
		m.lastSeen[svc] = now
	}
	m.pruneLocked(now)
	m.mu.Unlock()
	for _, v := range m.vecs() {
		v.Collect(ch)
	}
	for _, c := range consts {
		ch <- c
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// labelOf returns the service label of a service name (a canonical name,
// perhaps with a tag filter): its name without tag filter when dir lists
// it, lbserver.UnknownServiceLabel otherwise, as the balancer labels its
// events.
func labelOf(dir discovery.Directory, name string) string {
	if dir == nil {
		return lbserver.UnknownServiceLabel
	}
	base, _ := discovery.SplitName(name)
	if exists, _, _ := dir.Lookup(base); exists {
		return base
	}
	return lbserver.UnknownServiceLabel
}

// pruneLocked deletes the series of services not seen for Retention,
// but never those with streams open, nor "_unknown" and "_none". m.mu
// must be held: an event cannot create a series between the check and the
// deletion.
func (m *Metrics) pruneLocked(now time.Time) {
	for svc, t := range m.lastSeen {
		if svc == lbserver.UnknownServiceLabel || svc == NoServiceLabel || m.open[svc] > 0 || now.Sub(t) <= Retention {
			continue
		}
		delete(m.lastSeen, svc)
		for _, v := range m.serviceVecs() {
			v.DeletePartialMatch(prometheus.Labels{"service": svc})
		}
	}
}

// readClientStats adds to the ClientStats counters what reg's
// totals grew by since the last scrape. The registry forgets a service's
// totals when it stops being watched (and they start again from zero if
// it comes back): a total that went down started again, and counts whole.
// Keys with a tag filter count under their service. m.scrapeMu must be
// held.
func (m *Metrics) readClientStats(src *Sources, reg *clientstats.Registry, watched map[string]bool) {
	if reg == nil {
		return
	}
	seen := map[string]bool{}
	for _, key := range reg.Services() {
		cur := reg.Service(key)
		label := labelOf(src.Directory, key)
		prev, ok := m.csLast[key]
		if !ok || m.csLabel[key] != label || restarted(prev, cur) {
			prev = clientstats.Counters{}
		}
		add := func(v *prometheus.CounterVec, d int64, labels ...string) {
			if d > 0 {
				v.WithLabelValues(labels...).Add(float64(d))
			} else {
				v.WithLabelValues(labels...) // the series exists from the first report
			}
		}
		add(m.csStarted, cur.Started-prev.Started, label)
		add(m.csFinished, cur.Finished-prev.Finished, label)
		add(m.csFailed, cur.FailedToSend-prev.FailedToSend, label)
		add(m.csKnownReceived, cur.KnownReceived-prev.KnownReceived, label)
		for _, token := range clientstatsTokens() {
			add(m.csDropped, cur.Dropped[token]-prev.Dropped[token], label, token)
		}
		m.csLast[key], m.csLabel[key] = cur, label
		seen[key] = true
		if label != lbserver.UnknownServiceLabel {
			watched[label] = true
		}
	}
	maps.DeleteFunc(m.csLast, func(k string, _ clientstats.Counters) bool { return !seen[k] })
	maps.DeleteFunc(m.csLabel, func(k string, _ string) bool { return !seen[k] })
}

// clientstatsTokens are the token label values of calls_dropped_total.
func clientstatsTokens() []string {
	return append(append([]string(nil), clientstats.KnownDropTokens...), clientstats.OtherDropToken)
}

// restarted reports whether cur went below prev anywhere: the registry
// forgot the totals and started again.
func restarted(prev, cur clientstats.Counters) bool {
	if cur.Reports < prev.Reports || cur.Started < prev.Started || cur.Finished < prev.Finished ||
		cur.FailedToSend < prev.FailedToSend || cur.KnownReceived < prev.KnownReceived {
		return true
	}
	for k, n := range prev.Dropped {
		if cur.Dropped[k] < n {
			return true
		}
	}
	return false
}
