package metrics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/discovery/static"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time // guarded by mu
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestMetrics(src Sources) (*Metrics, *fakeClock) {
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	m := New(src)
	m.now = clk.Now
	return m, clk
}

// directory lists a fixed set of services.
type directory map[string]bool

func (d directory) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	return d[service], true, nil
}

// fakeBalancer returns fixed Stats and a real clientstats registry.
type fakeBalancer struct {
	stats lbserver.Stats
	reg   *clientstats.Registry
}

func (b *fakeBalancer) Stats() lbserver.Stats              { return b.stats }
func (b *fakeBalancer) ClientStats() *clientstats.Registry { return b.reg }

// fakeConsul returns fixed Health and Staleness.
type fakeConsul struct {
	health    consul.Health
	staleness map[string]time.Duration
}

func (c *fakeConsul) Health() consul.Health               { return c.health }
func (c *fakeConsul) Staleness() map[string]time.Duration { return c.staleness }

func compare(t *testing.T, m *Metrics, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestBalancerEvents(t *testing.T) {
	m, _ := newTestMetrics(Sources{})
	m.StreamStarted("user-srv")
	m.StreamStarted("user-srv")
	m.StreamStarted(lbserver.UnknownServiceLabel)
	m.StreamStarted(lbserver.NoServiceLabel)
	m.StreamEnded(lbserver.NoServiceLabel, lbserver.OutcomeInvalid)
	m.StreamEnded("user-srv", lbserver.OutcomeOK)
	m.FallbackSent(lbserver.UnknownServiceLabel, lbserver.FallbackUnknownService)
	m.ListSent("user-srv", 3, 0, -1)
	m.ListSent("user-srv", 3, 0, -1)
	m.ListSent("user-srv", 4, 1, 20*time.Millisecond)
	m.Refused("max_streams_per_ip")
	m.Refused("max_streams_per_ip")

	compare(t, m, `
# HELP lookaside_lb_streams_open BalanceLoad streams open now, by service.
# TYPE lookaside_lb_streams_open gauge
lookaside_lb_streams_open{service="_none"} 0
lookaside_lb_streams_open{service="_unknown"} 1
lookaside_lb_streams_open{service="user-srv"} 1
# HELP lookaside_lb_streams_started_total BalanceLoad streams started (past the stream limits), by service.
# TYPE lookaside_lb_streams_started_total counter
lookaside_lb_streams_started_total{service="_none"} 1
lookaside_lb_streams_started_total{service="_unknown"} 1
lookaside_lb_streams_started_total{service="user-srv"} 2
# HELP lookaside_lb_streams_ended_total BalanceLoad streams ended, by service and outcome.
# TYPE lookaside_lb_streams_ended_total counter
lookaside_lb_streams_ended_total{outcome="invalid",service="_none"} 1
lookaside_lb_streams_ended_total{outcome="ok",service="user-srv"} 1
# HELP lookaside_lb_fallbacks_sent_total FallbackResponses sent to clients, by service and reason.
# TYPE lookaside_lb_fallbacks_sent_total counter
lookaside_lb_fallbacks_sent_total{reason="unknown_service",service="_unknown"} 1
# HELP lookaside_lb_lists_sent_total Server lists sent to clients, by service.
# TYPE lookaside_lb_lists_sent_total counter
lookaside_lb_lists_sent_total{service="user-srv"} 3
# HELP lookaside_lb_list_drop_entries_total Drop entries in the server lists sent, by service.
# TYPE lookaside_lb_list_drop_entries_total counter
lookaside_lb_list_drop_entries_total{service="user-srv"} 1
# HELP lookaside_lb_list_entries Entries (drop entries included) of each server list sent, by service.
# TYPE lookaside_lb_list_entries histogram
lookaside_lb_list_entries_bucket{service="user-srv",le="1"} 0
lookaside_lb_list_entries_bucket{service="user-srv",le="2"} 0
lookaside_lb_list_entries_bucket{service="user-srv",le="3"} 2
lookaside_lb_list_entries_bucket{service="user-srv",le="5"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="8"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="16"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="32"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="64"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="128"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="256"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="512"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="1024"} 3
lookaside_lb_list_entries_bucket{service="user-srv",le="+Inf"} 3
lookaside_lb_list_entries_sum{service="user-srv"} 10
lookaside_lb_list_entries_count{service="user-srv"} 3
# HELP lookaside_lb_change_to_list_seconds Time from the arrival of a discovery change (a Consul answer) to each list it caused, by service.
# TYPE lookaside_lb_change_to_list_seconds histogram
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.0005"} 0
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.001"} 0
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.0025"} 0
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.005"} 0
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.01"} 0
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.025"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.05"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.1"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.25"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="0.5"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="1"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="2.5"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="5"} 1
lookaside_lb_change_to_list_seconds_bucket{service="user-srv",le="10"} 1
lookaside_lb_change_to_list_seconds_sum{service="user-srv"} 0.02
lookaside_lb_change_to_list_seconds_count{service="user-srv"} 1
# HELP lookaside_lb_refused_total Streams and connections refused, by limit.
# TYPE lookaside_lb_refused_total counter
lookaside_lb_refused_total{limit="max_conns"} 0
lookaside_lb_refused_total{limit="max_conns_per_ip"} 0
lookaside_lb_refused_total{limit="max_stream_rate_per_ip"} 0
lookaside_lb_refused_total{limit="max_streams"} 0
lookaside_lb_refused_total{limit="max_streams_per_conn"} 0
lookaside_lb_refused_total{limit="max_streams_per_ip"} 2
`, "lookaside_lb_streams_open", "lookaside_lb_streams_started_total", "lookaside_lb_streams_ended_total",
		"lookaside_lb_fallbacks_sent_total", "lookaside_lb_lists_sent_total", "lookaside_lb_list_drop_entries_total",
		"lookaside_lb_list_entries", "lookaside_lb_change_to_list_seconds", "lookaside_lb_refused_total")
}

func TestConsulAndDNSEvents(t *testing.T) {
	m, _ := newTestMetrics(Sources{})
	m.ConsulRequest(consul.RequestCatalog, consul.OutcomeOK, time.Second)
	m.ConsulRequest(consul.RequestService, consul.OutcomeOK, 2*time.Millisecond)
	m.ConsulRequest(consul.RequestService, consul.ErrorForbidden, 2*time.Millisecond)
	m.ConsulRequest(consul.RequestHealthState, consul.OutcomeCanceled, 3*time.Second)
	m.DNSAnswer("SRV", "NOERROR", false)
	m.DNSAnswer("SRV", "NOERROR", true)
	m.DNSAnswer("A", "NXDOMAIN", false)
	m.DNSGuard("rate_limited")

	// Every kind and error kind exists from the start, at 0.
	var errs strings.Builder
	for _, k := range consul.RequestKinds {
		for _, e := range consul.ErrorKinds {
			n := 0
			if k == consul.RequestService && e == consul.ErrorForbidden {
				n = 1
			}
			errs.WriteString("lookaside_consul_request_errors_total{error=\"" + e + "\",kind=\"" + k + "\"} " + string(rune('0'+n)) + "\n")
		}
	}
	compare(t, m, `
# HELP lookaside_consul_requests_total Requests sent to Consul, by kind.
# TYPE lookaside_consul_requests_total counter
lookaside_consul_requests_total{kind="catalog_services"} 1
lookaside_consul_requests_total{kind="health_service"} 2
lookaside_consul_requests_total{kind="health_state"} 1
lookaside_consul_requests_total{kind="leader_probe"} 0
# HELP lookaside_consul_request_errors_total Failed Consul requests, by kind and error.
# TYPE lookaside_consul_request_errors_total counter
`+errs.String()+`# HELP lookaside_dns_answers_total DNS answers sent, by question type and rcode.
# TYPE lookaside_dns_answers_total counter
lookaside_dns_answers_total{qtype="A",rcode="NXDOMAIN"} 1
lookaside_dns_answers_total{qtype="SRV",rcode="NOERROR"} 2
# HELP lookaside_dns_answers_truncated_total DNS answers sent over UDP with the TC bit.
# TYPE lookaside_dns_answers_truncated_total counter
lookaside_dns_answers_truncated_total 1
# HELP lookaside_dns_guard_total DNS questions dropped or slipped, and TCP connections closed, by the guard, by reason.
# TYPE lookaside_dns_guard_total counter
lookaside_dns_guard_total{reason="denied"} 0
lookaside_dns_guard_total{reason="overloaded"} 0
lookaside_dns_guard_total{reason="rate_limited"} 1
lookaside_dns_guard_total{reason="slipped"} 0
lookaside_dns_guard_total{reason="tcp_rejected"} 0
`, "lookaside_consul_requests_total", "lookaside_consul_request_errors_total", "lookaside_dns_answers_total",
		"lookaside_dns_answers_truncated_total", "lookaside_dns_guard_total")
	if n := testutil.CollectAndCount(m.consulDuration); n != 3 {
		t.Errorf("%d request duration series, want 3 (one per kind seen)", n)
	}
}

// report sends one ClientStats message of a stream of key.
func report(reg *clientstats.Registry, key clientstats.ClientKey, started, finished int64, drops map[string]int64) {
	cs := &lbpb.ClientStats{NumCallsStarted: started, NumCallsFinished: finished, NumCallsFinishedKnownReceived: finished}
	for tok, n := range drops {
		cs.CallsFinishedWithDrop = append(cs.CallsFinishedWithDrop, &lbpb.ClientStatsPerToken{LoadBalanceToken: tok, NumCalls: n})
	}
	reg.Add(key, cs, time.Now())
}

func TestClientStatsCounters(t *testing.T) {
	reg := clientstats.New(clientstats.Config{})
	b := &fakeBalancer{reg: reg, stats: lbserver.Stats{ConnsOpen: 2, ServicesWatched: 1, WatchesStarted: 3, BadClientStats: 4,
		OwnConns: 1, HandedOff: 5, ProtocolErrors: 6}}
	m, _ := newTestMetrics(Sources{Balancer: b, Directory: directory{"user-srv": true}})
	k1 := clientstats.ClientKey{Service: "user-srv", Stream: 1, Peer: "127.0.0.1:1"}
	k2 := clientstats.ClientKey{Service: "user-srv@v2", Stream: 2, Peer: "127.0.0.1:2"}
	kx := clientstats.ClientKey{Service: "made-up", Stream: 3, Peer: "127.0.0.1:3"}
	report(reg, k1, 100, 90, map[string]int64{policy.DropTokenRateLimit: 5})
	report(reg, k2, 50, 50, nil)
	report(reg, kx, 7, 7, map[string]int64{"forged": 1})
	want := func(started, finished, known, drops string) string {
		return `
# HELP lookaside_clientstats_calls_started_total Calls clients reported starting (grpclb ClientStats and xDS LRS, as accepted), by service.
# TYPE lookaside_clientstats_calls_started_total counter
lookaside_clientstats_calls_started_total{service="_unknown"} 7
lookaside_clientstats_calls_started_total{service="user-srv"} ` + started + `
# HELP lookaside_clientstats_calls_finished_total Calls clients reported finished, by service.
# TYPE lookaside_clientstats_calls_finished_total counter
lookaside_clientstats_calls_finished_total{service="_unknown"} 7
lookaside_clientstats_calls_finished_total{service="user-srv"} ` + finished + `
# HELP lookaside_clientstats_calls_known_received_total Calls clients reported a backend received, by service.
# TYPE lookaside_clientstats_calls_known_received_total counter
lookaside_clientstats_calls_known_received_total{service="_unknown"} 7
lookaside_clientstats_calls_known_received_total{service="user-srv"} ` + known + `
# HELP lookaside_clientstats_calls_dropped_total Calls clients reported dropped by the drop entries or drop_overloads, by service and drop token.
# TYPE lookaside_clientstats_calls_dropped_total counter
lookaside_clientstats_calls_dropped_total{service="_unknown",token="drop-overload"} 0
lookaside_clientstats_calls_dropped_total{service="_unknown",token="drop-ratelimit"} 0
lookaside_clientstats_calls_dropped_total{service="_unknown",token="other"} 1
lookaside_clientstats_calls_dropped_total{service="user-srv",token="drop-overload"} 0
lookaside_clientstats_calls_dropped_total{service="user-srv",token="drop-ratelimit"} ` + drops + `
lookaside_clientstats_calls_dropped_total{service="user-srv",token="other"} 0
# HELP lookaside_lb_connections_open Client connections open now.
# TYPE lookaside_lb_connections_open gauge
lookaside_lb_connections_open 2
# HELP lookaside_lb_own_transport_connections Client connections the balancer's own transport serves now (their first stream was BalanceLoad).
# TYPE lookaside_lb_own_transport_connections gauge
lookaside_lb_own_transport_connections 1
# HELP lookaside_lb_connections_handed_off_total Connections the balancer's own transport gave grpc-go's server (health, reflection, xDS, compressed BalanceLoad).
# TYPE lookaside_lb_connections_handed_off_total counter
lookaside_lb_connections_handed_off_total 5
# HELP lookaside_lb_http2_protocol_errors_total Connections the balancer's own transport closed for breaking HTTP/2.
# TYPE lookaside_lb_http2_protocol_errors_total counter
lookaside_lb_http2_protocol_errors_total 6
# HELP lookaside_lb_services_watched Services watched now (bounded by max services).
# TYPE lookaside_lb_services_watched gauge
lookaside_lb_services_watched 1
# HELP lookaside_lb_watches_started_total Service watches started.
# TYPE lookaside_lb_watches_started_total counter
lookaside_lb_watches_started_total 3
# HELP lookaside_lb_client_stats_rejected_total ClientStats messages clamped or ignored as implausible.
# TYPE lookaside_lb_client_stats_rejected_total counter
lookaside_lb_client_stats_rejected_total 4
`
	}
	names := []string{"lookaside_clientstats_calls_started_total", "lookaside_clientstats_calls_finished_total",
		"lookaside_clientstats_calls_known_received_total", "lookaside_clientstats_calls_dropped_total",
		"lookaside_lb_connections_open", "lookaside_lb_own_transport_connections", "lookaside_lb_connections_handed_off_total",
		"lookaside_lb_http2_protocol_errors_total", "lookaside_lb_services_watched", "lookaside_lb_watches_started_total",
		"lookaside_lb_client_stats_rejected_total"}
	// The tag-filtered name counts under its service.
	compare(t, m, want("150", "140", "140", "5"), names...)
	// A second scrape with nothing new counts nothing twice.
	compare(t, m, want("150", "140", "140", "5"), names...)

	// The registry forgets the totals (the service stopped being
	// watched) and a new stream reports: the counters go on from where
	// they were.
	reg.Forget(k1)
	reg.ForgetService("user-srv")
	report(reg, clientstats.ClientKey{Service: "user-srv", Stream: 4, Peer: "127.0.0.1:4"}, 10, 10, nil)
	compare(t, m, want("160", "150", "150", "5"), names...)
	report(reg, k2, 40, 30, nil)
	compare(t, m, want("200", "180", "180", "5"), names...)
}

func TestConsulGauges(t *testing.T) {
	c := &fakeConsul{staleness: map[string]time.Duration{"user-srv": 1500 * time.Millisecond, "not-listed": time.Hour}}
	m, clk := newTestMetrics(Sources{Consul: c, Directory: directory{"user-srv": true}})
	c.health = consul.Health{Ready: true, Reachable: true, LastContact: clk.Now().Add(-250 * time.Millisecond)}
	compare(t, m, `
# HELP lookaside_consul_answer_age_seconds Seconds since the service's endpoints were last known to match Consul (since the watch began if never), by watched service.
# TYPE lookaside_consul_answer_age_seconds gauge
lookaside_consul_answer_age_seconds{service="user-srv"} 1.5
# HELP lookaside_consul_catalog_ready 1 once the Consul catalog's service list was read (the replica can answer), else 0.
# TYPE lookaside_consul_catalog_ready gauge
lookaside_consul_catalog_ready 1
# HELP lookaside_consul_last_contact_age_seconds Seconds since Consul last answered a request (absent before the first answer).
# TYPE lookaside_consul_last_contact_age_seconds gauge
lookaside_consul_last_contact_age_seconds 0.25
# HELP lookaside_consul_reachable 1 when the latest Consul request that completed was answered, else 0.
# TYPE lookaside_consul_reachable gauge
lookaside_consul_reachable 1
`, "lookaside_consul_answer_age_seconds", "lookaside_consul_catalog_ready", "lookaside_consul_last_contact_age_seconds", "lookaside_consul_reachable")

	c.health = consul.Health{Ready: false}
	c.staleness = nil
	compare(t, m, `
# HELP lookaside_consul_catalog_ready 1 once the Consul catalog's service list was read (the replica can answer), else 0.
# TYPE lookaside_consul_catalog_ready gauge
lookaside_consul_catalog_ready 0
# HELP lookaside_consul_reachable 1 when the latest Consul request that completed was answered, else 0.
# TYPE lookaside_consul_reachable gauge
lookaside_consul_reachable 0
`, "lookaside_consul_answer_age_seconds", "lookaside_consul_catalog_ready", "lookaside_consul_last_contact_age_seconds", "lookaside_consul_reachable")
}

// TestCertificateExpiry: each role with a certificate has its expiry; a
// role without one is left out.
func TestCertificateExpiry(t *testing.T) {
	expiry := time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	m, _ := newTestMetrics(Sources{Certificates: map[string]func() time.Time{
		"balancer": func() time.Time { return expiry },
		"orca":     func() time.Time { return time.Time{} },
	}})
	compare(t, m, fmt.Sprintf(`
# HELP lookaside_tls_certificate_expiry_timestamp_seconds When the TLS certificate in force expires (Unix time), by role: balancer (the listener's), orca (the load-report client's).
# TYPE lookaside_tls_certificate_expiry_timestamp_seconds gauge
lookaside_tls_certificate_expiry_timestamp_seconds{role="balancer"} %d
`, expiry.Unix()), "lookaside_tls_certificate_expiry_timestamp_seconds")
}

// TestSeriesOfGoneServicesPruned: a service neither watched nor seen in an
// event for Retention loses its series; one with a stream open, one still
// watched, and the _unknown and _none labels keep theirs.
func TestSeriesOfGoneServicesPruned(t *testing.T) {
	c := &fakeConsul{staleness: map[string]time.Duration{"watched": time.Second}}
	m, clk := newTestMetrics(Sources{Consul: c, Directory: directory{"watched": true, "gone": true, "open": true}})
	for _, svc := range []string{"watched", "gone", "open", lbserver.UnknownServiceLabel, lbserver.NoServiceLabel} {
		m.StreamStarted(svc)
		if svc != "open" {
			m.StreamEnded(svc, lbserver.OutcomeOK)
		}
	}
	count := func() int { return testutil.CollectAndCount(m.streamsStarted) }
	testutil.GatherAndCount(m.Registry()) // a scrape
	if n := count(); n != 5 {
		t.Fatalf("%d series, want 5", n)
	}
	clk.Advance(Retention - time.Second)
	testutil.GatherAndCount(m.Registry())
	if n := count(); n != 5 {
		t.Fatalf("%d series before Retention, want 5", n)
	}
	clk.Advance(2 * time.Second)
	testutil.GatherAndCount(m.Registry())
	compare(t, m, `
# HELP lookaside_lb_streams_started_total BalanceLoad streams started (past the stream limits), by service.
# TYPE lookaside_lb_streams_started_total counter
lookaside_lb_streams_started_total{service="_none"} 1
lookaside_lb_streams_started_total{service="_unknown"} 1
lookaside_lb_streams_started_total{service="open"} 1
lookaside_lb_streams_started_total{service="watched"} 1
`, "lookaside_lb_streams_started_total")
	// Once its stream ends, "open" goes too, Retention later.
	m.StreamEnded("open", lbserver.OutcomeOK)
	clk.Advance(Retention + time.Second)
	compare(t, m, `
# HELP lookaside_lb_streams_ended_total BalanceLoad streams ended, by service and outcome.
# TYPE lookaside_lb_streams_ended_total counter
lookaside_lb_streams_ended_total{outcome="ok",service="_none"} 1
lookaside_lb_streams_ended_total{outcome="ok",service="_unknown"} 1
lookaside_lb_streams_ended_total{outcome="ok",service="watched"} 1
`, "lookaside_lb_streams_ended_total")
}

func TestHandler(t *testing.T) {
	m, _ := newTestMetrics(Sources{})
	m.StreamStarted("user-srv")
	m.Handler() // a second handler on the same registry is fine
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	for _, want := range []string{
		"\nlookaside_lb_streams_open{service=\"user-srv\"} 1\n",
		"\ngo_goroutines ",
		"\nprocess_resident_memory_bytes ",
		"\nlookaside_lb_refused_total{limit=\"max_streams\"} 0\n",
	} {
		if !strings.Contains("\n"+string(body), want) {
			t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
		}
	}
	// The registry is the Metrics' own: nothing in the global one.
	if n, err := testutil.GatherAndCount(prometheusDefaultGatherer(), "lookaside_lb_streams_open"); err != nil || n != 0 {
		t.Errorf("the global registry has %d lookaside series (%v), want 0", n, err)
	}
}

func prometheusDefaultGatherer() prometheus.Gatherer { return prometheus.DefaultGatherer }

// statusBalancer is a fakeBalancer with a Status.
type statusBalancer struct {
	fakeBalancer
	status []lbserver.ServiceStatus
}

func (b *statusBalancer) Status() []lbserver.ServiceStatus { return b.status }

func TestStatusGauges(t *testing.T) {
	b := &statusBalancer{fakeBalancer: fakeBalancer{reg: clientstats.New(clientstats.Config{})}}
	b.status = []lbserver.ServiceStatus{
		{Service: "made-up", Endpoints: []lbserver.EndpointStatus{{ID: "x", HasReport: true, Utilization: 1}}},
		{Service: "orders", Fallback: true, FallbackReason: lbserver.FallbackNoInstances},
		{Service: "user-srv", OverloadDropShare: 0.25, LoadReports: true, Outliers: 1, OutlierEjections: 3, Endpoints: []lbserver.EndpointStatus{
			{ID: "a", HasReport: true, Utilization: 0.5, ReportAge: 1500 * time.Millisecond, LoadWeight: 1.2, Latency: 5 * time.Millisecond},
			{ID: "n2/b", HasReport: true, Utilization: 0.9, ReportAge: 250 * time.Millisecond, LoadWeight: 0.8, Latency: 20 * time.Millisecond, Outlier: true},
			{ID: "c"}, // no report yet
		}},
		// Another tag filter of user-srv: the unfiltered name speaks for it.
		{Service: "user-srv@v2", RateLimitDropShare: 0.5, Endpoints: []lbserver.EndpointStatus{{ID: "a", HasReport: true, Utilization: 0.7}}},
	}
	m, _ := newTestMetrics(Sources{Balancer: b, Directory: directory{"user-srv": true, "orders": true}})
	compare(t, m, `
# HELP lookaside_lb_drop_share Share of calls the service's lists drop, by cause (overload, rate_limit).
# TYPE lookaside_lb_drop_share gauge
lookaside_lb_drop_share{cause="overload",service="orders"} 0
lookaside_lb_drop_share{cause="overload",service="user-srv"} 0.25
lookaside_lb_drop_share{cause="rate_limit",service="orders"} 0
lookaside_lb_drop_share{cause="rate_limit",service="user-srv"} 0
# HELP lookaside_lb_latency_outliers Endpoints of the service ejected as latency outliers now (least_load: they get a probe share of the calls).
# TYPE lookaside_lb_latency_outliers gauge
lookaside_lb_latency_outliers{service="user-srv"} 1
# HELP lookaside_lb_outlier_ejections_total Latency outlier ejections of the service's endpoints since the service was watched.
# TYPE lookaside_lb_outlier_ejections_total counter
lookaside_lb_outlier_ejections_total{service="user-srv"} 3
# HELP lookaside_lb_service_endpoints Usable endpoints of the service now (passing instances).
# TYPE lookaside_lb_service_endpoints gauge
lookaside_lb_service_endpoints{service="orders"} 0
lookaside_lb_service_endpoints{service="user-srv"} 3
# HELP lookaside_orca_latency_seconds Endpoint's smoothed mean latency from its load reports: mean calls in flight / calls per second (absent when unknown).
# TYPE lookaside_orca_latency_seconds gauge
lookaside_orca_latency_seconds{endpoint="a",service="user-srv"} 0.005
lookaside_orca_latency_seconds{endpoint="n2/b",service="user-srv"} 0.02
# HELP lookaside_lb_service_fallback 1 when new streams of the service get a FallbackResponse instead of a list, else 0.
# TYPE lookaside_lb_service_fallback gauge
lookaside_lb_service_fallback{service="orders"} 1
lookaside_lb_service_fallback{service="user-srv"} 0
# HELP lookaside_orca_load_weight Weight derived from the endpoint's load reports in use, relative to the service's other endpoints (mean 1; absent without one).
# TYPE lookaside_orca_load_weight gauge
lookaside_orca_load_weight{endpoint="a",service="user-srv"} 1.2
lookaside_orca_load_weight{endpoint="n2/b",service="user-srv"} 0.8
# HELP lookaside_orca_report_age_seconds Age of the endpoint's freshest ORCA load report (absent without a fresh one).
# TYPE lookaside_orca_report_age_seconds gauge
lookaside_orca_report_age_seconds{endpoint="a",service="user-srv"} 1.5
lookaside_orca_report_age_seconds{endpoint="n2/b",service="user-srv"} 0.25
# HELP lookaside_orca_utilization_ratio Utilization the endpoint last reported over ORCA (application utilization, else CPU; absent without a fresh report).
# TYPE lookaside_orca_utilization_ratio gauge
lookaside_orca_utilization_ratio{endpoint="a",service="user-srv"} 0.5
lookaside_orca_utilization_ratio{endpoint="n2/b",service="user-srv"} 0.9
`, "lookaside_lb_drop_share", "lookaside_lb_service_endpoints", "lookaside_lb_service_fallback",
		"lookaside_lb_latency_outliers", "lookaside_lb_outlier_ejections_total", "lookaside_orca_latency_seconds",
		"lookaside_orca_load_weight", "lookaside_orca_report_age_seconds", "lookaside_orca_utilization_ratio")

	// A service no longer watched has no gauge at the next scrape.
	b.status = b.status[1:2]
	compare(t, m, `
# HELP lookaside_lb_service_endpoints Usable endpoints of the service now (passing instances).
# TYPE lookaside_lb_service_endpoints gauge
lookaside_lb_service_endpoints{service="orders"} 0
`, "lookaside_lb_service_endpoints", "lookaside_orca_utilization_ratio")
}

// TestWithServer wires the metrics to a real lbserver.Server over a
// static source (a discovery.Directory) and a real grpclb stream: the
// server's Observer calls and its Stats, Status and ClientStats show in
// the metrics.
func TestWithServer(t *testing.T) {
	src := static.New(map[string][]discovery.Endpoint{"user-srv": {
		{ID: "a", Addr: netip.MustParseAddrPort("127.0.0.1:1001"), Weight: 1},
		{ID: "b", Addr: netip.MustParseAddrPort("127.0.0.1:1002"), Weight: 1},
	}})
	m := New(Sources{})
	cfg := lbserver.DefaultConfig()
	cfg.Source = src
	cfg.LoadReports = false
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Observer = m
	srv, err := lbserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Attach(Sources{Balancer: srv, Directory: src})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go gs.Serve(lis)
	defer func() { gs.Stop(); srv.Close() }()

	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
		InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: "user-srv:50051"}}}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the initial response and the list
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{
		ClientStats: &lbpb.ClientStats{NumCallsStarted: 300, NumCallsFinished: 300}}}); err != nil {
		t.Fatal(err)
	}
	names := []string{"lookaside_lb_streams_open", "lookaside_lb_lists_sent_total", "lookaside_lb_service_endpoints",
		"lookaside_clientstats_calls_started_total", "lookaside_lb_services_watched"}
	want := `
# HELP lookaside_clientstats_calls_started_total Calls clients reported starting (grpclb ClientStats and xDS LRS, as accepted), by service.
# TYPE lookaside_clientstats_calls_started_total counter
lookaside_clientstats_calls_started_total{service="user-srv"} 300
# HELP lookaside_lb_lists_sent_total Server lists sent to clients, by service.
# TYPE lookaside_lb_lists_sent_total counter
lookaside_lb_lists_sent_total{service="user-srv"} 1
# HELP lookaside_lb_service_endpoints Usable endpoints of the service now (passing instances).
# TYPE lookaside_lb_service_endpoints gauge
lookaside_lb_service_endpoints{service="user-srv"} 2
# HELP lookaside_lb_services_watched Services watched now (bounded by max services).
# TYPE lookaside_lb_services_watched gauge
lookaside_lb_services_watched 1
# HELP lookaside_lb_streams_open BalanceLoad streams open now, by service.
# TYPE lookaside_lb_streams_open gauge
lookaside_lb_streams_open{service="user-srv"} 1
`
	// The report is counted as the server reads it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// blockingBalancer's Status blocks until release is closed.
type blockingBalancer struct {
	statusBalancer
	entered, release chan struct{}
}

func (b *blockingBalancer) Status() []lbserver.ServiceStatus {
	close(b.entered)
	<-b.release
	return nil
}

// TestObserversDoNotWaitForScrapes: while a scrape reads a slow source,
// streams' observer calls go on.
func TestObserversDoNotWaitForScrapes(t *testing.T) {
	b := &blockingBalancer{statusBalancer: statusBalancer{fakeBalancer: fakeBalancer{reg: clientstats.New(clientstats.Config{})}},
		entered: make(chan struct{}), release: make(chan struct{})}
	m, _ := newTestMetrics(Sources{Balancer: b})
	done := make(chan error, 1)
	go func() {
		_, err := m.Registry().Gather()
		done <- err
	}()
	<-b.entered
	returned := make(chan struct{})
	go func() {
		m.StreamStarted("user-srv")
		m.ListSent("user-srv", 3, 0, time.Millisecond)
		m.StreamEnded("user-srv", lbserver.OutcomeOK)
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Error("observer calls waited for a scrape")
	}
	close(b.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestXDSNACKs(t *testing.T) {
	b := &fakeBalancer{reg: clientstats.New(clientstats.Config{}), stats: lbserver.Stats{
		XDSNACKs: map[string]int64{"listener": 0, "route": 0, "cluster": 2, "endpoint": 1}}}
	m, _ := newTestMetrics(Sources{Balancer: b, Directory: directory{}})
	compare(t, m, `
# HELP lookaside_xds_nacks_total xDS responses clients rejected (NACK), by resource type: listener, route, cluster, endpoint.
# TYPE lookaside_xds_nacks_total counter
lookaside_xds_nacks_total{type="cluster"} 2
lookaside_xds_nacks_total{type="endpoint"} 1
lookaside_xds_nacks_total{type="listener"} 0
lookaside_xds_nacks_total{type="route"} 0
`, "lookaside_xds_nacks_total")
}
