package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/lbserver"
)

func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-policy", "fastest"}, `balancer.policy: "fastest" is not a policy`},
		{[]string{"-static", "svc=localhost:80"}, `static.services.svc[0]: "localhost:80" is not ip:port`},
		{[]string{"-static", "a=127.0.0.1:1", "-static-file", "x.json"}, "static.file: \"x.json\" and static.services are both set"},
		{[]string{"-static-file", "/nonexistent/lookaside.json"}, `static.file: "/nonexistent/lookaside.json" cannot be read`},
		{[]string{"-alias", "users"}, `invalid value "users" for flag -alias`},
		{[]string{"-log-level", "loud"}, `log.level: "loud" is not a level`},
		{[]string{"-log-format", "xml"}, `log.format: "xml" is not a format`},
		{[]string{"-shutdown-timeout", "0s"}, "shutdown_timeout: 0s must be positive"},
		{[]string{"-initial-request-timeout", "1ms", "-static", "a=127.0.0.1:1"}, "balancer.initial_request_timeout: 1ms is under 100ms"},
		{[]string{"-no-such-flag"}, "not defined"},
		{[]string{"-service-policy", "svc=random,svc=round_robin"}, `"svc=random,svc=round_robin" for flag -service-policy: "svc=round_robin": service "svc" is given twice`},
		{[]string{"-rate-limit", "svc=1", "-rate-limit", "SVC=2"}, `service "SVC" is given twice`},
		{[]string{"-dns-child-policy", "a=pick_first,a=round_robin"}, `service "a" is given twice`},
		{[]string{"-static", "a=127.0.0.1:1;a=127.0.0.1:2"}, `service "a" is given twice`},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-register", "-listen", ":0", "-static", "a=127.0.0.1:1"}, "register.advertise"},
		{[]string{"-register", "-listen", "127.0.0.1:0", "-register-service", "a b", "-static", "a=127.0.0.1:1"}, "register.service"},
		{[]string{"-drain-delay", "-1s"}, "register.drain_delay: -1s is negative"},
		{[]string{"-max-stream-age", "1s", "-static", "a=127.0.0.1:1"}, "balancer.max_stream_age: 1s"},
		{[]string{"-rate-limit", "svc=fast", "-static", "a=127.0.0.1:1"}, `invalid value "svc=fast" for flag -rate-limit`},
		{[]string{"-rate-limit", "svc=-3", "-static", "a=127.0.0.1:1"}, "services.svc.rate_limit: -3"},
		{[]string{"-overload-threshold", "0", "-static", "a=127.0.0.1:1"}, "load_reports.overload_threshold: 0"},
		{[]string{"-max-drop-share", "1.5", "-static", "a=127.0.0.1:1"}, "load_reports.max_drop_share: 1.5"},
		{[]string{"-outlier-factor", "1", "-static", "a=127.0.0.1:1"}, "load_reports.latency_outliers.factor: 1"},
		{[]string{"-outlier-readmit-factor", "3", "-static", "a=127.0.0.1:1"}, "load_reports.latency_outliers.readmit_factor: 3 is not in (1, factor 2]"},
		{[]string{"-outlier-probe-share", "0.5", "-static", "a=127.0.0.1:1"}, "load_reports.latency_outliers.probe_share: 0.5"},
		{[]string{"-outlier-max-ejection-time", "1s", "-static", "a=127.0.0.1:1"}, "load_reports.latency_outliers.max_ejection_time: 1s is under base_ejection_time 5s"},
		{[]string{"-service-latency-outliers", "svc=maybe"}, `invalid value "svc=maybe" for flag -service-latency-outliers`},
		{[]string{"-max-rate-limit-drop-share", "0", "-static", "a=127.0.0.1:1"}, "rate_limits.max_drop_share: 0"},
		{[]string{"-max-client-rate-share", "0", "-static", "a=127.0.0.1:1"}, "rate_limits.max_client_rate_share: 0"},
		{[]string{"-max-client-call-rate", "-1", "-static", "a=127.0.0.1:1"}, "rate_limits.max_client_call_rate: -1"},
		{[]string{"-rate-limit", "svc=5", "-client-stats-interval", "0", "-static", "a=127.0.0.1:1"}, "services.svc.rate_limit: 5 needs client stats"},
		{[]string{"-service-policy", "svc=fastest", "-static", "a=127.0.0.1:1"}, `services.svc.policy: "fastest" is not a policy`},
		{[]string{"-service-policy", "svc", "-static", "a=127.0.0.1:1"}, `invalid value "svc" for flag -service-policy`},
		{[]string{"-max-list-entries", "0", "-static", "a=127.0.0.1:1"}, "balancer.max_list_entries: 0"},
		{[]string{"-hash-subset", "0", "-static", "a=127.0.0.1:1"}, "balancer.hash_subset: 0"},
		{[]string{"-zone", "lb..internal/", "-static", "a=127.0.0.1:1"}, "balancer.zones[0]"},
		{[]string{"-listen", "256.0.0.1:99999", "-static", "a=127.0.0.1:1"}, "listen: \"256.0.0.1:99999\""},
		{[]string{"-max-streams", "0", "-static", "a=127.0.0.1:1"}, "limits.max_streams: 0"},
		{[]string{"-max-streams-per-ip", "60000", "-static", "a=127.0.0.1:1"}, "limits.max_streams_per_ip: 60000"},
		{[]string{"-max-streams-per-conn", "0", "-static", "a=127.0.0.1:1"}, "limits.max_streams_per_conn: 0"},
		{[]string{"-max-conns", "0", "-static", "a=127.0.0.1:1"}, "limits.max_conns: 0"},
		{[]string{"-max-conns-per-ip", "30000", "-static", "a=127.0.0.1:1"}, "limits.max_conns_per_ip: 30000"},
		{[]string{"-send-timeout", "10ms", "-static", "a=127.0.0.1:1"}, "limits.send_timeout: 10ms"},
		{[]string{"-max-request-size", "100", "-static", "a=127.0.0.1:1"}, "limits.max_request_size: 100"},
		{[]string{"-max-stream-rate-per-ip", "-1", "-static", "a=127.0.0.1:1"}, "limits.max_stream_rate_per_ip: -1"},
		{[]string{"-max-stream-rate-per-ip", "fast", "-static", "a=127.0.0.1:1"}, `invalid value "fast" for flag -max-stream-rate-per-ip`},
		{[]string{"-stream-burst-per-ip", "0", "-static", "a=127.0.0.1:1"}, "limits.stream_burst_per_ip: 0"},
		{[]string{"-max-ignored-messages", "-1", "-static", "a=127.0.0.1:1"}, "limits.max_ignored_messages: -1"},
		{[]string{"-service-policy", "svc=random,SVC=round_robin", "-static", "a=127.0.0.1:1"}, `service "SVC" is given twice`},
		{[]string{"-rate-limit", "svc=1,SVC=2", "-static", "a=127.0.0.1:1"}, `service "SVC" is given twice`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			code := run(ctx, tc.args, &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestRateLimitFlags(t *testing.T) {
	cfg, _, err := load(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Limits; l.MaxStreamRatePerIP != lbserver.DefaultMaxStreamRatePerIP || l.StreamBurstPerIP != lbserver.DefaultStreamBurstPerIP ||
		l.MaxIgnoredMessages != lbserver.DefaultMaxIgnoredMessages {
		t.Errorf("defaults: rate %v, burst %d, ignored %d", l.MaxStreamRatePerIP, l.StreamBurstPerIP, l.MaxIgnoredMessages)
	}
	cfg, _, err = load([]string{"-max-stream-rate-per-ip", "2.5", "-stream-burst-per-ip", "7", "-max-ignored-messages", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Limits; l.MaxStreamRatePerIP != 2.5 || l.StreamBurstPerIP != 7 || l.MaxIgnoredMessages != 0 {
		t.Errorf("parsed: rate %v, burst %d, ignored %d; want 2.5, 7, 0", l.MaxStreamRatePerIP, l.StreamBurstPerIP, l.MaxIgnoredMessages)
	}
	// 0 turns the rate off: the burst is not checked then.
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-max-stream-rate-per-ip", "0", "-stream-burst-per-ip", "0", "-static", "a=127.0.0.1:1", "-listen", "256.0.0.1:1"}, io.Discard, &stderr); code == 0 || strings.Contains(stderr.String(), "burst") {
		t.Errorf("exit %d, stderr %q; want only the bad -listen refused", code, stderr.String())
	}
}

// TestLatencyOutlierFlags: the flags set load_reports.latency_outliers and
// the per-service switch.
func TestLatencyOutlierFlags(t *testing.T) {
	cfg, _, err := load(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if lo := cfg.LoadReports.LatencyOutliers; !lo.Enabled || lo.Factor != 2 || lo.ProbeShare != 0.005 {
		t.Errorf("defaults: %+v; want on, factor 2, probe share 0.005", lo)
	}
	cfg, _, err = load([]string{"-latency-outliers=false", "-service-latency-outliers", "a=true,b=false", "-outlier-factor", "3",
		"-outlier-readmit-factor", "2", "-outlier-min-excess", "2ms", "-outlier-eject-after", "3s", "-outlier-min-endpoints", "4", "-outlier-max-ejected-fraction", "0.25",
		"-outlier-base-ejection-time", "10s", "-outlier-max-ejection-time", "1m", "-outlier-probe-share", "0.01"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := config.LatencyOutliers{Factor: 3, ReadmitFactor: 2, MinExcess: config.Duration(2 * time.Millisecond), EjectAfter: config.Duration(3 * time.Second), MinEndpoints: 4,
		MaxEjectedFraction: 0.25, BaseEjectionTime: config.Duration(10 * time.Second), MaxEjectionTime: config.Duration(time.Minute), ProbeShare: 0.01}
	if got := cfg.LoadReports.LatencyOutliers; got != want {
		t.Errorf("parsed: %+v\nwant %+v", got, want)
	}
	a, b := cfg.Services["a"].LatencyOutliers, cfg.Services["b"].LatencyOutliers
	if a == nil || !*a || b == nil || *b {
		t.Errorf("-service-latency-outliers a=true,b=false: a %v, b %v", a, b)
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	for _, want := range []string{"-consul", "-static", "-policy", "round_robin", "weighted_round_robin", "source_hash", "least_connections", "-alias", "CONSUL_HTTP_ADDR", "lb-policy"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("help does not mention %s", want)
		}
	}
}

func TestServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-static", "svc=127.0.0.1:50051"}, &stdout, &stderr)
	}()
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after cancel; stderr:\n%s", code, stderr.String())
	}
}

func TestDNSBadFlags(t *testing.T) {
	st := []string{"-listen", "127.0.0.1:0", "-static", "a=127.0.0.1:1", "-dns-listen", "127.0.0.1:0"}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-dns-child-policy", "fastest"}, `balancer.child_policy: "fastest"`},
		{[]string{"-dns-child-policy", "a=pick_first,a=", "-static", "a=127.0.0.1:1"}, `invalid value "a=pick_first,a=" for flag -dns-child-policy`},
		{[]string{"-dns-balancers", "lb.internal:7000"}, `dns.balancers[0]: "lb.internal:7000"`},
		{[]string{"-dns-ttl", "0s"}, "dns.ttl: 0s"},
		{[]string{"-dns-ttl", "1500ms"}, "dns.ttl: 1.5s"},
		{[]string{"-dns-zone", "lb internal"}, `dns.zone: "lb internal"`},
		{[]string{"-listen", ":0"}, "dns.balancers"},
		{[]string{"-dns-listen", "256.0.0.1:53"}, "dns.listen: dnsserver: listen"},
		{[]string{"-dns-allow", "10.0.0.1/8"}, `dns.allow[0]: "10.0.0.1/8"`},
		{[]string{"-dns-allow", ""}, "dns.allow"},
		{[]string{"-dns-rate-limit", "0"}, "dns.rate_limit: 0"},
		{[]string{"-dns-rate-burst", "0"}, "dns.rate_burst: 0"},
		{[]string{"-dns-max-inflight", "0"}, "dns.max_inflight: 0"},
		{[]string{"-dns-max-tcp-conns", "0"}, "dns.max_tcp_conns: 0"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			code := run(ctx, append(slices.Clone(st), tc.args...), &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestDNSFlags(t *testing.T) {
	cfg, _, err := load([]string{"-zone", "corp.example", "-dns-listen", "127.0.0.1:0", "-dns-zone", "LB.internal",
		"-dns-ttl", "7s", "-dns-child-policy", "pick_first,orders=round_robin", "-register-service", "lb-replicas"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"corp.example", "LB.internal"}; !slices.Equal(cfg.Zones(), want) {
		t.Errorf("zones %q, want %q", cfg.Zones(), want)
	}
	if cfg.DNS.TTL.D() != 7*time.Second || cfg.Balancer.ChildPolicy != dnsserver.PickFirst || cfg.ChildPolicies()["orders"] != dnsserver.RoundRobin {
		t.Errorf("DNS config %+v, child policies %v", cfg.DNS, cfg.ChildPolicies())
	}
	if cfg.Register.Service != "lb-replicas" || cfg.DNS.LBService != "" {
		t.Errorf("register.service %q, dns.lb_service %q; want lb-replicas and empty (the SRV records then list register.service)", cfg.Register.Service, cfg.DNS.LBService)
	}
	cfg, _, err = load([]string{"-dns-listen", "127.0.0.1:0", "-dns-allow", "192.0.2.0/24, 2001:db8::1", "-dns-rate-limit", "50",
		"-dns-rate-burst", "60", "-dns-max-inflight", "8", "-dns-max-tcp-conns", "4"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.DNS; fmt.Sprint(d.Allow) != "[192.0.2.0/24 2001:db8::1]" || d.RateLimit != 50 || d.RateBurst != 60 ||
		d.MaxInflight != 8 || d.MaxTCPConns != 4 {
		t.Errorf("DNS config %+v", d)
	}
	// Without -dns-listen the zone is not added.
	cfg, _, err = load([]string{"-dns-zone", "lb.internal"}, io.Discard)
	if err != nil || len(cfg.Zones()) != 0 {
		t.Errorf("zones %q, %v; want none without -dns-listen", cfg.Zones(), err)
	}
}

func TestHelpMentionsDNS(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	for _, want := range []string{"-dns-listen", "-dns-zone", "-dns-ttl", "-dns-lb-service", "-dns-balancers", "-dns-child-policy"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("help does not mention %s", want)
		}
	}
}

// freeDNSAddr returns a loopback address whose UDP and TCP ports were both
// free a moment ago.
func freeDNSAddr(t *testing.T) string {
	t.Helper()
	pc, lis, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	lis.Close()
	return addr
}

// TestDNSServes runs the balancer with -static and -dns-listen: the
// responder answers for the zone, lists this replica in SRV records, maps
// aliases like the balancer, and stops with the balancer.
func TestDNSServes(t *testing.T) {
	dnsAddr := freeDNSAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout := &syncbuf.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-static", "user-srv=10.0.0.1:50051,10.0.0.2:50051",
			"-alias", "users=user-srv", "-dns-listen", dnsAddr, "-dns-ttl", "7s", "-dns-child-policy", "pick_first",
			"-log-level", "error"}, stdout, io.Discard)
	}()
	var lbAddr string
	deadline := time.Now().Add(10 * time.Second)
	for lbAddr == "" {
		if _, a, ok := strings.Cut(stdout.String(), "lbserver listening on "); ok {
			lbAddr = strings.TrimSpace(a)
			break
		}
		select {
		case code := <-done:
			t.Fatalf("exited %d before listening", code)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("not listening after 10 s")
		}
	}

	ask := func(network, name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, dnsAddr)
		if err != nil {
			t.Fatalf("%s %s: %v", network, name, err)
		}
		return r
	}
	for _, network := range []string{"udp", "tcp"} {
		r := ask(network, "_grpclb._tcp.users.lb.internal.", dns.TypeSRV)
		if len(r.Answer) != 1 {
			t.Fatalf("%s SRV: %v", network, r)
		}
		srv := r.Answer[0].(*dns.SRV)
		_, port, _ := strings.Cut(lbAddr, ":")
		if srv.Target != "127-0-0-1.balancer.lb.internal." || fmt.Sprint(srv.Port) != port || srv.Hdr.Ttl != 7 {
			t.Errorf("%s SRV %v; want this replica (%s), TTL 7", network, srv, lbAddr)
		}
		if got := ask(network, "users.lb.internal.", dns.TypeA); len(got.Answer) != 2 {
			t.Errorf("%s A users: %v, want the 2 backends of user-srv", network, got)
		}
		txt := ask(network, "_grpc_config.user-srv.lb.internal.", dns.TypeTXT)
		if len(txt.Answer) != 1 || !strings.Contains(txt.Answer[0].String(), "pick_first") {
			t.Errorf("%s TXT: %v, want pick_first", network, txt)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("still running 20 s after cancel")
	}
	// The DNS ports are free again.
	pc, lis, err := dnsserver.Listen(dnsAddr)
	if err != nil {
		t.Fatalf("DNS address still in use after exit: %v", err)
	}
	pc.Close()
	lis.Close()
}
