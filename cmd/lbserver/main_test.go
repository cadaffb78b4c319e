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

	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/lbserver"
)

func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-policy", "fastest"}, `unknown policy "fastest"`},
		{[]string{"-static", "svc=localhost:80"}, "-static"},
		{[]string{"-static", "a=127.0.0.1:1", "-static-file", "x.json"}, "exclusive"},
		{[]string{"-static-file", "/nonexistent/lookaside.json"}, "-static-file"},
		{[]string{"-alias", "users"}, "-alias"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"-log-format", "xml"}, "-log-format"},
		{[]string{"-shutdown-timeout", "0s"}, "-shutdown-timeout"},
		{[]string{"-initial-request-timeout", "1ms", "-static", "a=127.0.0.1:1"}, "initial request timeout"},
		{[]string{"-no-such-flag"}, "not defined"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-register", "-listen", ":0", "-static", "a=127.0.0.1:1"}, "-advertise"},
		{[]string{"-register", "-listen", "127.0.0.1:0", "-register-service", "a b", "-static", "a=127.0.0.1:1"}, "service"},
		{[]string{"-drain-delay", "-1s"}, "-drain-delay"},
		{[]string{"-max-stream-age", "1s", "-static", "a=127.0.0.1:1"}, "max stream age"},
		{[]string{"-rate-limit", "svc=fast", "-static", "a=127.0.0.1:1"}, "-rate-limit"},
		{[]string{"-rate-limit", "svc=-3", "-static", "a=127.0.0.1:1"}, "-rate-limit"},
		{[]string{"-overload-threshold", "0", "-static", "a=127.0.0.1:1"}, "overload"},
		{[]string{"-max-drop-share", "1.5", "-static", "a=127.0.0.1:1"}, "drop"},
		{[]string{"-max-rate-limit-drop-share", "0", "-static", "a=127.0.0.1:1"}, "max rate-limit drop share 0"},
		{[]string{"-max-client-rate-share", "0", "-static", "a=127.0.0.1:1"}, "max client rate share 0"},
		{[]string{"-max-client-call-rate", "-1", "-static", "a=127.0.0.1:1"}, "max client call rate -1"},
		{[]string{"-rate-limit", "svc=5", "-client-stats-interval", "0", "-static", "a=127.0.0.1:1"}, "rate limits need client stats"},
		{[]string{"-service-policy", "svc=fastest", "-static", "a=127.0.0.1:1"}, `service "svc": policy: unknown policy "fastest"`},
		{[]string{"-service-policy", "svc", "-static", "a=127.0.0.1:1"}, "-service-policy"},
		{[]string{"-max-list-entries", "0", "-static", "a=127.0.0.1:1"}, "max entries"},
		{[]string{"-hash-subset", "0", "-static", "a=127.0.0.1:1"}, "hash subset"},
		{[]string{"-zone", "lb..internal/", "-static", "a=127.0.0.1:1"}, "zone"},
		{[]string{"-listen", "256.0.0.1:99999", "-static", "a=127.0.0.1:1"}, "listen"},
		{[]string{"-max-streams", "0", "-static", "a=127.0.0.1:1"}, "max streams 0"},
		{[]string{"-max-streams-per-ip", "60000", "-static", "a=127.0.0.1:1"}, "max streams per IP 60000"},
		{[]string{"-max-streams-per-conn", "0", "-static", "a=127.0.0.1:1"}, "max streams per connection 0"},
		{[]string{"-max-conns", "0", "-static", "a=127.0.0.1:1"}, "max connections 0"},
		{[]string{"-max-conns-per-ip", "30000", "-static", "a=127.0.0.1:1"}, "max connections per IP 30000"},
		{[]string{"-send-timeout", "10ms", "-static", "a=127.0.0.1:1"}, "send timeout 10ms"},
		{[]string{"-max-request-size", "100", "-static", "a=127.0.0.1:1"}, "max request size 100"},
		{[]string{"-max-stream-rate-per-ip", "-1", "-static", "a=127.0.0.1:1"}, "max stream rate per IP -1"},
		{[]string{"-max-stream-rate-per-ip", "fast", "-static", "a=127.0.0.1:1"}, "-max-stream-rate-per-ip"},
		{[]string{"-stream-burst-per-ip", "0", "-static", "a=127.0.0.1:1"}, "stream burst per IP 0"},
		{[]string{"-max-ignored-messages", "-1", "-static", "a=127.0.0.1:1"}, "max ignored messages -1"},
		{[]string{"-service-policy", "svc=random,SVC=round_robin", "-static", "a=127.0.0.1:1"}, "case-insensitively"},
		{[]string{"-rate-limit", "svc=1,SVC=2", "-static", "a=127.0.0.1:1"}, "case-insensitively"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestRateLimitFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseFlags(nil, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.lb.MaxStreamRatePerIP != lbserver.DefaultMaxStreamRatePerIP || o.lb.StreamBurstPerIP != lbserver.DefaultStreamBurstPerIP ||
		o.lb.MaxIgnoredMessages != lbserver.DefaultMaxIgnoredMessages {
		t.Errorf("defaults: rate %v, burst %d, ignored %d", o.lb.MaxStreamRatePerIP, o.lb.StreamBurstPerIP, o.lb.MaxIgnoredMessages)
	}
	o, err = parseFlags([]string{"-max-stream-rate-per-ip", "2.5", "-stream-burst-per-ip", "7", "-max-ignored-messages", "0"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.lb.MaxStreamRatePerIP != 2.5 || o.lb.StreamBurstPerIP != 7 || o.lb.MaxIgnoredMessages != 0 {
		t.Errorf("parsed: rate %v, burst %d, ignored %d; want 2.5, 7, 0", o.lb.MaxStreamRatePerIP, o.lb.StreamBurstPerIP, o.lb.MaxIgnoredMessages)
	}
	// 0 turns the rate off: the burst is not checked then.
	if code := run(context.Background(), []string{"-max-stream-rate-per-ip", "0", "-stream-burst-per-ip", "0", "-static", "a=127.0.0.1:1", "-listen", "256.0.0.1:1"}, io.Discard, &stderr); code == 0 || strings.Contains(stderr.String(), "burst") {
		t.Errorf("exit %d, stderr %q; want only the bad -listen refused", code, stderr.String())
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
		{[]string{"-dns-child-policy", "fastest"}, "-dns-child-policy"},
		{[]string{"-dns-child-policy", "a=pick_first,a=round_robin"}, "-dns-child-policy"},
		{[]string{"-dns-balancers", "lb.internal:7000"}, "-dns-balancers"},
		{[]string{"-dns-ttl", "0s"}, "TTL"},
		{[]string{"-dns-ttl", "1500ms"}, "TTL"},
		{[]string{"-dns-zone", "lb internal"}, "zone"},
		{[]string{"-listen", ":0"}, "-dns-balancers or -advertise"},
		{[]string{"-dns-listen", "256.0.0.1:53"}, "-dns-listen"},
		{[]string{"-dns-allow", "10.0.0.1/8"}, "-dns-allow"},
		{[]string{"-dns-allow", ""}, "-dns-allow"},
		{[]string{"-dns-rate-limit", "0"}, "-dns-rate-limit"},
		{[]string{"-dns-rate-burst", "0"}, "-dns-rate-burst"},
		{[]string{"-dns-max-inflight", "0"}, "-dns-max-inflight"},
		{[]string{"-dns-max-tcp-conns", "0"}, "-dns-max-tcp-conns"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append(slices.Clone(st), tc.args...), &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestDNSFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseFlags([]string{"-zone", "corp.example", "-dns-listen", "127.0.0.1:0", "-dns-zone", "LB.internal.",
		"-dns-ttl", "7s", "-dns-child-policy", "pick_first,orders=round_robin", "-register-service", "lb-replicas"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"corp.example", "LB.internal"}; !slices.Equal(o.lb.Zones, want) {
		t.Errorf("zones %q, want %q", o.lb.Zones, want)
	}
	if o.dns.cfg.TTL != 7*time.Second || o.dns.cfg.ChildPolicy != dnsserver.PickFirst || o.dns.cfg.ServiceChildPolicies["orders"] != dnsserver.RoundRobin {
		t.Errorf("DNS config %+v", o.dns.cfg)
	}
	if o.dns.lbService != "lb-replicas" {
		t.Errorf("-dns-lb-service defaults to %q, want -register-service's lb-replicas", o.dns.lbService)
	}
	if def := dnsserver.DefaultConfig(); !slices.Equal(o.dns.cfg.Allow, def.Allow) || o.dns.cfg.RateLimit != def.RateLimit ||
		o.dns.cfg.MaxInflight != def.MaxInflight || o.dns.cfg.MaxTCPConns != def.MaxTCPConns {
		t.Errorf("DNS guard config %+v, want the defaults", o.dns.cfg)
	}
	o, err = parseFlags([]string{"-dns-listen", "127.0.0.1:0", "-dns-allow", "192.0.2.0/24, 2001:db8::1", "-dns-rate-limit", "50",
		"-dns-rate-burst", "60", "-dns-max-inflight", "8", "-dns-max-tcp-conns", "4"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if c := o.dns.cfg; fmt.Sprint(c.Allow) != "[192.0.2.0/24 2001:db8::1/128]" || c.RateLimit != 50 || c.RateBurst != 60 ||
		c.MaxInflight != 8 || c.MaxTCPConns != 4 || c.MaxTCPConnsPerSource != 4 {
		t.Errorf("DNS guard config %+v", c)
	}
	// Without -dns-listen the zone is not added.
	o, err = parseFlags([]string{"-dns-zone", "lb.internal"}, &stderr)
	if err != nil || len(o.lb.Zones) != 0 {
		t.Errorf("zones %q, %v; want none without -dns-listen", o.lb.Zones, err)
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
