package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/replica"
)

// scrape fetches the text exposition at url and returns every sample by
// its series ("name{label=\"value\",...}", labels in the order Prometheus
// writes them: sorted by name).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", url, resp.StatusCode, err, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("GET %s: bad line %q", url, line)
		}
		out[line[:i]] = v
	}
	return out
}

// series names a sample: name{k1="v1",...} with the labels sorted.
func series(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	var kv []string
	for i := 0; i+1 < len(labels); i += 2 {
		kv = append(kv, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	sort.Strings(kv)
	return name + "{" + strings.Join(kv, ",") + "}"
}

// TestMetricsAfterKnownTraffic runs the real lbserver command with its
// admin listener and DNS responder, three backend processes and a grpclb
// client, and reads /metrics as Prometheus would (see checkMetrics), then
// the DNS answers counted by type and rcode.
func TestMetricsAfterKnownTraffic(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbBin, beBin := buildCmds(t)
	var backends []*process
	for range 3 {
		backends = append(backends, startProcess(t, beBin, "-consul", agent.HTTPAddr(), "-service", svc,
			"-check-interval", "1s", "-drain-delay", "300ms", "-log-level", "warn"))
	}
	waitPassing(t, svc, 3)
	pc, lis, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr := pc.LocalAddr().String()
	pc.Close()
	lis.Close()
	lbp := startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(),
		"-client-stats-interval", "1s", "-admin-listen", "127.0.0.1:0", "-log-level", "warn",
		"-dns-listen", dnsAddr, "-dns-zone", "lb.internal", "-dns-balancers", "127.0.0.1:7000")
	admin := strings.TrimSuffix(lbp.waitLine(t, "lbserver admin on ", 10*time.Second), "/")
	checkMetrics(t, admin+"/metrics", svc, lbp.addr, func() { backends[0].terminate(t, 15*time.Second) })

	// DNS answers are counted by type and rcode.
	dc := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	for _, q := range []struct {
		name  string
		qtype uint16
		n     int
	}{
		{svc + ".lb.internal.", dns.TypeA, 1}, // every backend is on 127.0.0.1
		{"_grpclb._tcp." + svc + ".lb.internal.", dns.TypeSRV, 1},
		{"nope.nope.lb.internal.", dns.TypeA, 0},
	} {
		msg := new(dns.Msg)
		msg.SetQuestion(q.name, q.qtype)
		r, _, err := dc.Exchange(msg, dnsAddr)
		if err != nil || len(r.Answer) != q.n {
			t.Fatalf("DNS %s %s: %v, %v; want %d records", q.name, dns.TypeToString[q.qtype], r, err, q.n)
		}
	}
	m := scrape(t, admin+"/metrics")
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{series("lookaside_dns_answers_total", "qtype", "A", "rcode", "NOERROR"), 1},
		{series("lookaside_dns_answers_total", "qtype", "SRV", "rcode", "NOERROR"), 1},
		{series("lookaside_dns_answers_total", "qtype", "A", "rcode", "NXDOMAIN"), 1},
		{series("lookaside_dns_guard_total", "reason", "denied"), 0},
	} {
		if got, ok := m[tc.series]; !ok || got != tc.want {
			t.Errorf("%s = %v (present: %v), want %v", tc.series, got, ok, tc.want)
		}
	}
}

// TestMetricsInProcess runs a replica (package replica, as lbserver does)
// in this process against the real Consul agent, with three backends and a
// grpclb client, and reads its admin listener's /metrics as Prometheus
// would (see checkMetrics).
func TestMetricsInProcess(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	backends := startBackends(t, svc, 3)
	cfg := config.Default()
	cfg.Listen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Consul.Address = agent.HTTPAddr()
	cfg.Balancer.ClientStatsInterval = config.Duration(time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	_, a, done, err := replica.Start(ctx, cfg, replica.Options{Logger: quietLogger()})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("replica: %v", err)
		}
	})
	checkMetrics(t, "http://"+a.Admin.String()+"/metrics", svc, a.Balancer.String(), func() {
		if err := backends[0].Deregister(); err != nil {
			t.Fatal(err)
		}
	})
}

// checkMetrics makes exactly 300 calls with a grpclb client of svc
// through the balancer at lbAddr (which asks for ClientStats every second)
// and checks what metricsURL says: the calls clients reported, the lists
// and the one stream, Consul's requests and freshness; then it has a
// backend leave (leave) and checks the time from the Consul change to the
// list it caused.
func checkMetrics(t *testing.T, metricsURL, svc, lbAddr string, leave func()) {
	t.Helper()
	// Clients find a replica once it is ready (its health is SERVING, it
	// is registered): wait for that, as they would.
	waitFor(t, 10*time.Second, "the replica to read Consul's catalog", func() bool {
		return scrape(t, metricsURL)[series("lookaside_consul_catalog_ready")] == 1
	})
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbAddr}})
	counts := spread(t, c, 300) // fails the test on any failed call
	t.Logf("300 calls: %v", counts)

	// Clients report every second: wait for the 300th call to be reported.
	started := series("lookaside_clientstats_calls_started_total", "service", svc)
	var m map[string]float64
	waitFor(t, 15*time.Second, "ClientStats of 300 calls in /metrics", func() bool {
		m = scrape(t, metricsURL)
		return m[started] >= 300
	})
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{started, 300},
		{series("lookaside_clientstats_calls_finished_total", "service", svc), 300},
		{series("lookaside_clientstats_calls_known_received_total", "service", svc), 300},
		{series("lookaside_clientstats_calls_failed_to_send_total", "service", svc), 0},
		{series("lookaside_clientstats_calls_dropped_total", "service", svc, "token", "drop-overload"), 0},
		{series("lookaside_lb_streams_open", "service", svc), 1},
		{series("lookaside_lb_streams_started_total", "service", svc), 1},
		{series("lookaside_lb_service_endpoints", "service", svc), 3},
		{series("lookaside_lb_service_fallback", "service", svc), 0},
		{series("lookaside_consul_catalog_ready"), 1},
		{series("lookaside_consul_reachable"), 1},
	} {
		if got, ok := m[tc.series]; !ok || got != tc.want {
			t.Errorf("%s = %v (present: %v), want %v", tc.series, got, ok, tc.want)
		}
	}
	for _, s := range []string{
		series("lookaside_lb_lists_sent_total", "service", svc),
		series("lookaside_consul_requests_total", "kind", "catalog_services"),
		series("lookaside_consul_requests_total", "kind", "health_state"),
		series("lookaside_consul_requests_total", "kind", "health_service"),
	} {
		if m[s] < 1 {
			t.Errorf("%s = %v, want at least 1", s, m[s])
		}
	}
	if age, ok := m[series("lookaside_consul_answer_age_seconds", "service", svc)]; !ok || age > 5 {
		t.Errorf("Consul answer age of %s = %v (present: %v), want a few seconds at most", svc, age, ok)
	}
	for _, s := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := m[s]; !ok {
			t.Errorf("/metrics lacks %s", s)
		}
	}

	// A backend leaves: the change reaches the stream as a new list, timed
	// from the Consul answer that brought it.
	pushes := series("lookaside_lb_change_to_list_seconds_count", "service", svc)
	before := m[pushes]
	leave()
	waitFor(t, 15*time.Second, "a change-to-list sample after a backend left", func() bool {
		m = scrape(t, metricsURL)
		return m[pushes] > before
	})
	sum := m[series("lookaside_lb_change_to_list_seconds_sum", "service", svc)]
	t.Logf("change to list: %v samples, %.6f s in all", m[pushes], sum)
	if got := m[series("lookaside_lb_service_endpoints", "service", svc)]; got != 2 {
		t.Errorf("endpoints after a backend left = %v, want 2", got)
	}
	if sum/m[pushes] > 1 {
		t.Errorf("a change took %.3f s on average to reach the stream, want well under 1 s", sum/m[pushes])
	}
}
