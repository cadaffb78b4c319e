package metrics

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// Namespace prefixes every metric name.
const Namespace = "lookaside"

// Retention is how long the counters and histograms of a service are
// kept after it was last watched or last seen in an event; then they are
// deleted (and start again from zero if it comes back, which Prometheus
// reads as a counter reset).
const Retention = 10 * time.Minute

// NoServiceLabel is the service label of streams that ended before naming
// a valid service (lbserver.NoServiceLabel, which is empty).
const NoServiceLabel = "_none"

// Balancer is what the metrics read from the balancer at each scrape.
// *lbserver.Server is one.
type Balancer interface {
	Stats() lbserver.Stats
	ClientStats() *clientstats.Registry
}

// Consul is what the metrics read from the Consul discovery source at
// each scrape. *consul.Source is one.
type Consul interface {
	Health() consul.Health
	Staleness() map[string]time.Duration
}

// Sources are what a Metrics reads at scrape time. Every field is
// optional: the metrics of a missing one are not exported.
type Sources struct {
	// Balancer gives the balancer's gauges, ClientStats and (when it has
	// a Status method) per-service and per-endpoint gauges.
	Balancer Balancer
	// Consul gives Consul's reachability and the freshness of each
	// watched service.
	Consul Consul
	// Directory tells which services exist: per-service series read at
	// scrape time (ClientStats) are kept only for the services it lists,
	// the others counted under "_unknown", like the balancer's own
	// labels. Usually the same *consul.Source. Nil: every service is
	// "_unknown" (as the balancer labels them without a Directory).
	Directory discovery.Directory
	// Certificates give the expiry of the TLS certificates in force, by
	// role ("balancer": the listener's; "orca": the client certificate of
	// load-report streams); a zero time is left out (a role without a
	// certificate).
	Certificates map[string]func() time.Time
}

// Metrics holds the registry and the metrics of one replica. Create it
// with New. Safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry
	now func() time.Time // the clock of Retention and ages; a seam for tests

	src atomic.Pointer[Sources]

	// Told by observers.
	streamsOpen    *prometheus.GaugeVec     // service
	streamsStarted *prometheus.CounterVec   // service
	streamsEnded   *prometheus.CounterVec   // service, outcome
	listsSent      *prometheus.CounterVec   // service
	listEntries    *prometheus.HistogramVec // service
	listDrops      *prometheus.CounterVec   // service: drop entries sent
	changeToList   *prometheus.HistogramVec // service
	fallbacksSent  *prometheus.CounterVec   // service, reason
	refused        *prometheus.CounterVec   // limit
	consulRequests *prometheus.CounterVec   // kind
	consulErrors   *prometheus.CounterVec   // kind, error
	consulDuration *prometheus.HistogramVec // kind
	dnsAnswers     *prometheus.CounterVec   // qtype, rcode
	dnsTruncated   prometheus.Counter
	dnsGuard       *prometheus.CounterVec // reason

	// ClientStats totals, read at scrape time and kept as counters (see
	// scrape.go).
	csStarted, csFinished, csFailed, csKnownReceived *prometheus.CounterVec // service
	csDropped                                        *prometheus.CounterVec // service, token

	// mu is taken by observer calls, briefly: never while a source is read.
	mu       sync.Mutex
	lastSeen map[string]time.Time // guarded by mu: service label → last event, or last scrape while watched
	open     map[string]int       // guarded by mu: streams open per service label

	// scrapeMu makes scrapes read the sources and update what they keep
	// one at a time, so that the ClientStats deltas are taken in order.
	scrapeMu sync.Mutex
	csLast   map[string]clientstats.Counters // guarded by scrapeMu: the clientstats totals read at the last scrape, by registry key
	csLabel  map[string]string               // guarded by scrapeMu: the service label of each csLast key
}

// New returns a Metrics reading src (see Attach). Attach sources later
// when they are built after the Metrics (the observers must be set in
// their configs first).
func New(src Sources) *Metrics {
	m := &Metrics{
		reg:      prometheus.NewRegistry(),
		now:      time.Now,
		lastSeen: map[string]time.Time{},
		open:     map[string]int{},
		csLast:   map[string]clientstats.Counters{},
		csLabel:  map[string]string{},
	}
	m.Attach(src)
	lb := func(name string) string { return prometheus.BuildFQName(Namespace, "lb", name) }
	m.streamsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: lb("streams_open"),
		Help: "BalanceLoad streams open now, by service."}, []string{"service"})
	m.streamsStarted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: lb("streams_started_total"),
		Help: "BalanceLoad streams started (past the stream limits), by service."}, []string{"service"})
	m.streamsEnded = prometheus.NewCounterVec(prometheus.CounterOpts{Name: lb("streams_ended_total"),
		Help: "BalanceLoad streams ended, by service and outcome."}, []string{"service", "outcome"})
	m.listsSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: lb("lists_sent_total"),
		Help: "Server lists sent to clients, by service."}, []string{"service"})
	m.listEntries = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: lb("list_entries"),
		Help:    "Entries (drop entries included) of each server list sent, by service.",
		Buckets: []float64{1, 2, 3, 5, 8, 16, 32, 64, 128, 256, 512, 1024}}, []string{"service"})
	m.listDrops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: lb("list_drop_entries_total"),
		Help: "Drop entries in the server lists sent, by service."}, []string{"service"})
	m.changeToList = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: lb("change_to_list_seconds"),
		Help:    "Time from the arrival of a discovery change (a Consul answer) to each list it caused, by service.",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}, []string{"service"})
	m.fallbacksSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: lb("fallbacks_sent_total"),
		Help: "FallbackResponses sent to clients, by service and reason."}, []string{"service", "reason"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: lb("refused_total"),
		Help: "Streams and connections refused, by limit."}, []string{"limit"})
	cs := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: prometheus.BuildFQName(Namespace, "clientstats", name), Help: help},
			append([]string{"service"}, labels...))
	}
	m.csStarted = cs("calls_started_total", "Calls clients reported starting (grpclb ClientStats and xDS LRS, as accepted), by service.")
	m.csFinished = cs("calls_finished_total", "Calls clients reported finished, by service.")
	m.csFailed = cs("calls_failed_to_send_total", "Calls clients reported failing to send, by service.")
	m.csKnownReceived = cs("calls_known_received_total", "Calls clients reported a backend received, by service.")
	m.csDropped = cs("calls_dropped_total", "Calls clients reported dropped by the drop entries or drop_overloads, by service and drop token.", "token")
	co := func(name string) string { return prometheus.BuildFQName(Namespace, "consul", name) }
	m.consulRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: co("requests_total"),
		Help: "Requests sent to Consul, by kind."}, []string{"kind"})
	m.consulErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: co("request_errors_total"),
		Help: "Failed Consul requests, by kind and error."}, []string{"kind", "error"})
	m.consulDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: co("request_duration_seconds"),
		Help:    "Duration of Consul requests, by kind (long polls wait up to their wait time).",
		Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}}, []string{"kind"})
	dn := func(name string) string { return prometheus.BuildFQName(Namespace, "dns", name) }
	m.dnsAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: dn("answers_total"),
		Help: "DNS answers sent, by question type and rcode."}, []string{"qtype", "rcode"})
	m.dnsTruncated = prometheus.NewCounter(prometheus.CounterOpts{Name: dn("answers_truncated_total"),
		Help: "DNS answers sent over UDP with the TC bit."})
	m.dnsGuard = prometheus.NewCounterVec(prometheus.CounterOpts{Name: dn("guard_total"),
		Help: "DNS questions dropped or slipped, and TCP connections closed, by the guard, by reason."}, []string{"reason"})

	// Fixed label sets start at zero, so that rates and alerts see them.
	for _, l := range lbserver.LimitNames {
		m.refused.WithLabelValues(l)
	}
	for _, k := range consul.RequestKinds {
		m.consulRequests.WithLabelValues(k)
		for _, e := range consul.ErrorKinds {
			m.consulErrors.WithLabelValues(k, e)
		}
	}
	for _, r := range dnsserver.GuardReasons {
		m.dnsGuard.WithLabelValues(r)
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), (*collector)(m))
	return m
}

// Attach sets the sources read at scrape time, replacing the previous
// ones. Without a Directory, a Consul that is one (*consul.Source) serves
// as the Directory. Safe for concurrent use.
func (m *Metrics) Attach(src Sources) {
	if d, ok := src.Consul.(discovery.Directory); ok && src.Directory == nil {
		src.Directory = d
	}
	m.src.Store(&src)
}

// Registry returns the registry the metrics are in, for collectors of
// other packages.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format (or another
// the scraper asks for); mount it at /metrics. At most 4 scrapes are
// served at once (more get 503), and their reads of the sources run one
// at a time. A metric that cannot be gathered is left out and counted in
// promhttp_metric_handler_errors_total, not a failed scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg, // counts its own errors
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

// serviceLabel returns the label of an lbserver service label.
func serviceLabel(svc string) string {
	if svc == lbserver.NoServiceLabel {
		return NoServiceLabel
	}
	return svc
}

// touch records that service label svc was seen now.
func (m *Metrics) touch(svc string) {
	now := m.now()
	m.mu.Lock()
	m.lastSeen[svc] = now
	m.mu.Unlock()
}

var (
	_ lbserver.Observer  = (*Metrics)(nil)
	_ consul.Observer    = (*Metrics)(nil)
	_ dnsserver.Observer = (*Metrics)(nil)
)

// StreamStarted implements lbserver.Observer.
func (m *Metrics) StreamStarted(service string) {
	svc := serviceLabel(service)
	now := m.now()
	m.mu.Lock()
	m.lastSeen[svc] = now
	m.open[svc]++
	m.mu.Unlock()
	m.streamsOpen.WithLabelValues(svc).Inc()
	m.streamsStarted.WithLabelValues(svc).Inc()
}

// StreamEnded implements lbserver.Observer.
func (m *Metrics) StreamEnded(service, outcome string) {
	svc := serviceLabel(service)
	now := m.now()
	m.mu.Lock()
	m.lastSeen[svc] = now
	if m.open[svc]--; m.open[svc] <= 0 {
		delete(m.open, svc)
	}
	m.mu.Unlock()
	m.streamsOpen.WithLabelValues(svc).Dec()
	m.streamsEnded.WithLabelValues(svc, outcome).Inc()
}

// ListSent implements lbserver.Observer.
func (m *Metrics) ListSent(service string, entries, drops int, sinceChange time.Duration) {
	svc := serviceLabel(service)
	m.touch(svc)
	m.listsSent.WithLabelValues(svc).Inc()
	m.listEntries.WithLabelValues(svc).Observe(float64(entries))
	if drops > 0 {
		m.listDrops.WithLabelValues(svc).Add(float64(drops))
	}
	if sinceChange >= 0 {
		m.changeToList.WithLabelValues(svc).Observe(sinceChange.Seconds())
	}
}

// FallbackSent implements lbserver.Observer.
func (m *Metrics) FallbackSent(service, reason string) {
	svc := serviceLabel(service)
	m.touch(svc)
	m.fallbacksSent.WithLabelValues(svc, reason).Inc()
}

// Refused implements lbserver.Observer.
func (m *Metrics) Refused(limit string) { m.refused.WithLabelValues(limit).Inc() }

// ConsulRequest implements consul.Observer.
func (m *Metrics) ConsulRequest(kind, outcome string, took time.Duration) {
	m.consulRequests.WithLabelValues(kind).Inc()
	m.consulDuration.WithLabelValues(kind).Observe(took.Seconds())
	if outcome != consul.OutcomeOK && outcome != consul.OutcomeCanceled {
		m.consulErrors.WithLabelValues(kind, outcome).Inc()
	}
}

// DNSAnswer implements dnsserver.Observer.
func (m *Metrics) DNSAnswer(qtype, rcode string, truncated bool) {
	m.dnsAnswers.WithLabelValues(qtype, rcode).Inc()
	if truncated {
		m.dnsTruncated.Inc()
	}
}

// DNSGuard implements dnsserver.Observer.
func (m *Metrics) DNSGuard(reason string) { m.dnsGuard.WithLabelValues(reason).Inc() }
