package dnsserver

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	_ Catalog = (*lbserver.Server)(nil)
	_ Mapper  = lbserver.NameMapper{}
)

// fakeCatalog knows the services in services; a question about any other
// blocks until its context ends and gets no answer.
type fakeCatalog struct {
	mu       sync.Mutex
	services map[string][]netip.AddrPort // guarded by mu
	asked    map[string]int              // guarded by mu
}

func newCatalog(services map[string][]string) *fakeCatalog {
	c := &fakeCatalog{services: map[string][]netip.AddrPort{}, asked: map[string]int{}}
	for svc, addrs := range services {
		c.services[svc] = []netip.AddrPort{}
		for _, a := range addrs {
			c.services[svc] = append(c.services[svc], netip.MustParseAddrPort(a))
		}
	}
	return c
}

func (c *fakeCatalog) Endpoints(ctx context.Context, service string) (discovery.Snapshot, bool) {
	c.mu.Lock()
	addrs, ok := c.services[service]
	c.asked[service]++
	c.mu.Unlock()
	if !ok {
		<-ctx.Done()
		return discovery.Snapshot{}, false
	}
	snap := discovery.Snapshot{Service: service}
	for i, a := range addrs {
		snap.Endpoints = append(snap.Endpoints, discovery.Endpoint{ID: fmt.Sprintf("%s-%d", service, i), Addr: a, Weight: 1})
	}
	return snap, true
}

// noBalancers never has a first answer.
type noBalancers struct{}

func (noBalancers) Balancers(ctx context.Context) ([]netip.AddrPort, bool) {
	<-ctx.Done()
	return nil, false
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Zone = "lb.internal."
	cfg.Catalog = newCatalog(map[string][]string{
		"user-srv": {"10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.2:50052", "[2001:db8::7]:50051"},
		"orders":   {"10.0.1.1:50051"},
		"empty":    {},
	})
	cfg.Balancers = StaticBalancers{netip.MustParseAddrPort("127.0.0.1:7000"), netip.MustParseAddrPort("[2001:db8::5]:7001")}
	cfg.Names = lbserver.NameMapper{Aliases: map[string]string{"users": "user-srv"}, Zones: []string{"lb.internal"}, MaxLength: 255}
	cfg.ServiceChildPolicies = map[string]string{"orders": PickFirst}
	cfg.LookupTimeout = 300 * time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

// startServer serves cfg on loopback until the test ends and returns the
// address (the same port for UDP and TCP).
func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, lis, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return 10 s after its context ended")
		}
	})
	return s, pc.LocalAddr().String()
}

// query asks addr over network ("udp" or "tcp"); edns > 0 adds an OPT
// record with that buffer size.
func query(t *testing.T, network, addr, name string, qtype uint16, edns int) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(uint16(edns), false)
	}
	return exchange(t, network, addr, m)
}

func exchange(t *testing.T, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: dns.DefaultMsgSize}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], err)
	}
	return r
}

// rrs returns the records' text, sorted, without OPT records.
func rrs(rs []dns.RR) []string {
	var out []string
	for _, r := range rs {
		if r.Header().Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, strings.ReplaceAll(r.String(), "\t", " "))
	}
	slices.Sort(out)
	return out
}

const (
	soaRR  = "lb.internal. 5 IN SOA lb.internal. hostmaster.lb.internal. %d 3600 600 86400 5"
	rrTXT  = `_grpc_config.%s.lb.internal. 5 IN TXT "grpc_config=[{\"serviceConfig\":{\"loadBalancingConfig\":[{\"grpclb\":{\"childPolicy\":[{\"%s\":{}}]}}]}}]"`
	lb4    = "127-0-0-1.balancer.lb.internal."
	lb6    = "2001-0db8-0000-0000-0000-0000-0000-0005.balancer.lb.internal."
	srvFmt = "_grpclb._tcp.%s.lb.internal. 5 IN SRV 0 0 %d %s"
)

func TestRecords(t *testing.T) {
	cfg := testConfig()
	s, addr := startServer(t, cfg)
	soa := fmt.Sprintf(soaRR, s.serial)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		ns     []string
		extra  []string
	}{
		{name: "SRV lists every balancer", qname: "_grpclb._tcp.user-srv.lb.internal.", qtype: dns.TypeSRV,
			answer: []string{fmt.Sprintf(srvFmt, "user-srv", 7000, lb4), fmt.Sprintf(srvFmt, "user-srv", 7001, lb6)},
			extra:  []string{lb4 + " 5 IN A 127.0.0.1", lb6 + " 5 IN AAAA 2001:db8::5"}},
		{name: "SRV of a service without instances", qname: "_grpclb._tcp.empty.lb.internal.", qtype: dns.TypeSRV,
			answer: []string{fmt.Sprintf(srvFmt, "empty", 7000, lb4), fmt.Sprintf(srvFmt, "empty", 7001, lb6)},
			extra:  []string{lb4 + " 5 IN A 127.0.0.1", lb6 + " 5 IN AAAA 2001:db8::5"}},
		{name: "A: one record per IP", qname: "user-srv.lb.internal.", qtype: dns.TypeA,
			answer: []string{"user-srv.lb.internal. 5 IN A 10.0.0.1", "user-srv.lb.internal. 5 IN A 10.0.0.2"}},
		{name: "AAAA", qname: "user-srv.lb.internal.", qtype: dns.TypeAAAA,
			answer: []string{"user-srv.lb.internal. 5 IN AAAA 2001:db8::7"}},
		{name: "ANY is RFC 8482's HINFO", qname: "user-srv.lb.internal.", qtype: dns.TypeANY,
			answer: []string{`user-srv.lb.internal. 5 IN HINFO "RFC8482" ""`}},
		{name: "mixed case keeps the question's spelling", qname: "User-Srv.LB.internal.", qtype: dns.TypeA,
			answer: []string{"User-Srv.LB.internal. 5 IN A 10.0.0.1", "User-Srv.LB.internal. 5 IN A 10.0.0.2"}},
		{name: "alias maps to its service", qname: "users.lb.internal.", qtype: dns.TypeA,
			answer: []string{"users.lb.internal. 5 IN A 10.0.0.1", "users.lb.internal. 5 IN A 10.0.0.2"}},
		{name: "AAAA of an IPv4-only service is NODATA", qname: "orders.lb.internal.", qtype: dns.TypeAAAA, ns: []string{soa}},
		{name: "no instances is NODATA", qname: "empty.lb.internal.", qtype: dns.TypeA, ns: []string{soa}},
		{name: "other types are NODATA", qname: "user-srv.lb.internal.", qtype: dns.TypeMX, ns: []string{soa}},
		{name: "TXT round_robin", qname: "_grpc_config.user-srv.lb.internal.", qtype: dns.TypeTXT,
			answer: []string{fmt.Sprintf(rrTXT, "user-srv", RoundRobin)}},
		{name: "TXT pick_first for one service", qname: "_grpc_config.orders.lb.internal.", qtype: dns.TypeTXT,
			answer: []string{fmt.Sprintf(rrTXT, "orders", PickFirst)}},
		{name: "TXT name, A question", qname: "_grpc_config.orders.lb.internal.", qtype: dns.TypeA, ns: []string{soa}},
		{name: "_tcp.<svc> exists, empty", qname: "_tcp.user-srv.lb.internal.", qtype: dns.TypeA, ns: []string{soa}},
		{name: "apex SOA", qname: "lb.internal.", qtype: dns.TypeSOA, answer: []string{soa}},
		{name: "apex NS is NODATA", qname: "lb.internal.", qtype: dns.TypeNS, ns: []string{soa}},
		{name: "balancer target A", qname: lb4, qtype: dns.TypeA, answer: []string{lb4 + " 5 IN A 127.0.0.1"}},
		{name: "balancer target AAAA", qname: lb6, qtype: dns.TypeAAAA, answer: []string{lb6 + " 5 IN AAAA 2001:db8::5"}},
		{name: "balancer target, other family", qname: lb4, qtype: dns.TypeAAAA, ns: []string{soa}},
		{name: "not a balancer", qname: "10-9-9-9.balancer.lb.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "not canonical", qname: "127-0-0-01.balancer.lb.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "unknown record label", qname: "_grpclb._udp.user-srv.lb.internal.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "too deep", qname: "a.b.c.lb.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "not a service label", qname: "_x.lb.internal.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "SRV without service", qname: "_grpclb._tcp.lb.internal.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError, ns: []string{soa}},
		{name: "outside the zone", qname: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "a zone that ends like ours", qname: "user-srv.xlb.internal.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "unknown to the catalog", qname: "slow.lb.internal.", qtype: dns.TypeA, rcode: dns.RcodeServerFailure},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tc := range tests {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				r := query(t, network, addr, tc.qname, tc.qtype, 0)
				if r.Rcode != tc.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
				}
				if want := tc.rcode != dns.RcodeRefused && tc.rcode != dns.RcodeServerFailure; r.Authoritative != want {
					t.Errorf("AA = %v, want %v", r.Authoritative, want)
				}
				if r.RecursionAvailable || r.Truncated {
					t.Errorf("RA %v TC %v, want neither", r.RecursionAvailable, r.Truncated)
				}
				if diff := cmp.Diff(tc.answer, rrs(r.Answer)); diff != "" {
					t.Errorf("answer (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tc.ns, rrs(r.Ns)); diff != "" {
					t.Errorf("authority (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tc.extra, rrs(r.Extra)); diff != "" {
					t.Errorf("additional (-want +got):\n%s", diff)
				}
			})
		}
	}
	if st := s.Stats(); st.Queries != int64(2*len(tests)) || st.Truncated != 0 {
		t.Errorf("stats %+v: want %d queries, none truncated", st, 2*len(tests))
	}
}

func TestRefusedAndErrors(t *testing.T) {
	_, addr := startServer(t, testConfig())
	tests := []struct {
		name    string
		network string
		edit    func(*dns.Msg)
		rcode   int
	}{
		{"AXFR", "tcp", func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAXFR }, dns.RcodeRefused},
		{"IXFR", "udp", func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeIXFR }, dns.RcodeRefused},
		{"CHAOS class", "udp", func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }, dns.RcodeRefused},
		{"EDNS version 1", "udp", func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }, dns.RcodeBadVers},
		{"NOTIFY", "udp", func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }, dns.RcodeNotImplemented},
		{"UPDATE", "udp", func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate }, dns.RcodeNotImplemented},
		{"two questions", "udp", func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }, dns.RcodeFormatError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion("user-srv.lb.internal.", dns.TypeA)
			tc.edit(m)
			r := exchange(t, tc.network, addr, m)
			if r.Rcode != tc.rcode || len(r.Answer) != 0 {
				t.Fatalf("rcode %s with %d answers, want %s and none", dns.RcodeToString[r.Rcode], len(r.Answer), dns.RcodeToString[tc.rcode])
			}
		})
	}
}

func TestSRVRotates(t *testing.T) {
	cfg := testConfig()
	var lbs StaticBalancers
	for i := range 3 {
		lbs = append(lbs, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(7000+i)))
	}
	cfg.Balancers = lbs
	_, addr := startServer(t, cfg)
	firsts := map[uint16]int{}
	for range 6 {
		r := query(t, "udp", addr, "_grpclb._tcp.user-srv.lb.internal.", dns.TypeSRV, 0)
		if len(r.Answer) != 3 || len(r.Extra) != 1 {
			t.Fatalf("%d SRV records and %d additional, want 3 and 1 (one target)", len(r.Answer), len(r.Extra))
		}
		firsts[r.Answer[0].(*dns.SRV).Port]++
	}
	if diff := cmp.Diff(map[uint16]int{7000: 2, 7001: 2, 7002: 2}, firsts); diff != "" {
		t.Errorf("first SRV record over 6 answers (-want +got):\n%s", diff)
	}
}

func TestNoFirstAnswerIsServFail(t *testing.T) {
	cfg := testConfig()
	cfg.Balancers = noBalancers{}
	s, addr := startServer(t, cfg)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"_grpclb._tcp.user-srv.lb.internal.", dns.TypeSRV}, {lb4, dns.TypeA}} {
		start := time.Now()
		r := query(t, "udp", addr, q.name, q.qtype, 1232)
		if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 || r.IsEdns0() == nil {
			t.Errorf("%s: rcode %s, %d answers, OPT %v; want SERVFAIL, none, an OPT", q.name, dns.RcodeToString[r.Rcode], len(r.Answer), r.IsEdns0() != nil)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: answered after %v, want about the lookup timeout (%v)", q.name, d, cfg.LookupTimeout)
		}
	}
	// TXT and A/AAAA do not need the balancers.
	if r := query(t, "udp", addr, "_grpc_config.user-srv.lb.internal.", dns.TypeTXT, 0); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("TXT: rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	if st := s.Stats(); st.ServFail != 2 {
		t.Errorf("ServFail = %d, want 2", st.ServFail)
	}
}

// goResolver resolves through addr like grpc-go's DNS resolver with an
// authority (dns://addr/...), counting the connections per network.
func goResolver(addr string, dials map[string]int, mu *sync.Mutex) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		mu.Lock()
		dials[network]++
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
}

func TestTruncationAndTCPRetry(t *testing.T) {
	cfg := testConfig()
	var big []string
	for i := range 100 {
		big = append(big, fmt.Sprintf("10.1.%d.%d:50051", i/250, i%250+1))
	}
	var sixty []string
	for i := range 60 {
		sixty = append(sixty, fmt.Sprintf("10.2.0.%d:50051", i+1))
	}
	cfg.Catalog = newCatalog(map[string][]string{"big": big, "sixty": sixty})
	cfg.MaxUDPRatio = 100 // the bound on the size of a question is TestSizeBounds's
	s, addr := startServer(t, cfg)

	tests := []struct {
		name, network, qname string
		edns                 int
		wantTC               bool
		wantN                int
	}{
		{"no EDNS0: 512 bytes", "udp", "sixty.lb.internal.", 0, true, -1},
		{"EDNS0 1232 fits 60", "udp", "sixty.lb.internal.", 1232, false, 60},
		{"EDNS0 4096 is capped at 1232", "udp", "big.lb.internal.", 4096, true, -1},
		{"TCP has no limit", "tcp", "big.lb.internal.", 0, false, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := query(t, tc.network, addr, tc.qname, dns.TypeA, tc.edns)
			if r.Truncated != tc.wantTC {
				t.Errorf("TC = %v, want %v", r.Truncated, tc.wantTC)
			}
			if tc.wantN >= 0 && len(r.Answer) != tc.wantN {
				t.Errorf("%d answers, want %d", len(r.Answer), tc.wantN)
			}
			limit := 512
			if tc.edns > 0 {
				limit = 1232
			}
			r.Compress = true // as sent
			if n := r.Len(); tc.network == "udp" && n > limit {
				t.Errorf("UDP answer of %d bytes, over %d", n, limit)
			}
		})
	}
	if st := s.Stats(); st.Truncated != 2 {
		t.Errorf("Truncated = %d, want 2", st.Truncated)
	}

	// A stub resolver retries over TCP and gets every address.
	var mu sync.Mutex
	dials := map[string]int{}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	got, err := goResolver(addr, dials, &mu).LookupHost(ctx, "big.lb.internal.")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 100 || dials["tcp"] == 0 {
		t.Errorf("Go resolver got %d addresses with dials %v; want 100, over TCP after a truncated UDP answer", len(got), dials)
	}
}

// TestGoResolver reads the records the way grpc-go's DNS resolver does
// (net.Resolver with PreferGo, all queries to the server).
func TestGoResolver(t *testing.T) {
	_, addr := startServer(t, testConfig())
	var mu sync.Mutex
	r := goResolver(addr, map[string]int{}, &mu)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	_, srvs, err := r.LookupSRV(ctx, "grpclb", "tcp", "user-srv.lb.internal.")
	if err != nil {
		t.Fatalf("LookupSRV: %v", err)
	}
	var lbs []string
	for _, s := range srvs {
		addrs, err := r.LookupHost(ctx, s.Target)
		if err != nil {
			t.Fatalf("LookupHost(%s): %v", s.Target, err)
		}
		for _, a := range addrs {
			lbs = append(lbs, net.JoinHostPort(a, fmt.Sprint(s.Port)))
		}
	}
	slices.Sort(lbs)
	if diff := cmp.Diff([]string{"127.0.0.1:7000", "[2001:db8::5]:7001"}, lbs); diff != "" {
		t.Errorf("balancers (-want +got):\n%s", diff)
	}
	addrs, err := r.LookupHost(ctx, "user-srv.lb.internal.")
	slices.Sort(addrs)
	if diff := cmp.Diff([]string{"10.0.0.1", "10.0.0.2", "2001:db8::7"}, addrs); err != nil || diff != "" {
		t.Errorf("LookupHost: %v (-want +got):\n%s", err, diff)
	}
	txt, err := r.LookupTXT(ctx, "_grpc_config.user-srv.lb.internal.")
	want := `grpc_config=[{"serviceConfig":{"loadBalancingConfig":[{"grpclb":{"childPolicy":[{"round_robin":{}}]}}]}}]`
	if err != nil || strings.Join(txt, "") != want {
		t.Errorf("LookupTXT = %q, %v; want %q", txt, err, want)
	}
	if _, err := r.LookupHost(ctx, "empty.lb.internal."); !isNotFound(err) {
		t.Errorf("LookupHost(empty) error %v, want not found", err)
	}
	if _, err := r.LookupHost(ctx, "x.y.lb.internal."); !isNotFound(err) {
		t.Errorf("LookupHost(x.y) error %v, want not found", err)
	}
}

func isNotFound(err error) bool {
	var dnsErr *net.DNSError
	return err != nil && asDNSError(err, &dnsErr) && dnsErr.IsNotFound && !dnsErr.IsTemporary
}

func asDNSError(err error, target **net.DNSError) bool {
	e, ok := err.(*net.DNSError)
	*target = e
	return ok
}

func TestLongTXTIsSplit(t *testing.T) {
	text := strings.Repeat("x", 600)
	parts := splitTXT(text)
	if len(parts) != 3 || len(parts[0]) != 255 || len(parts[1]) != 255 || strings.Join(parts, "") != text {
		t.Fatalf("split into %d parts of %d, %d bytes", len(parts), len(parts[0]), len(parts[1]))
	}
	// And it packs: a record of 600 bytes of text is valid.
	rr := &dns.TXT{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: parts}
	m := new(dns.Msg)
	m.Answer = []dns.RR{rr}
	if _, err := m.Pack(); err != nil {
		t.Fatal(err)
	}
}

// TestMalformedQueries sends garbage over UDP and TCP; the server answers
// a valid question afterwards.
func TestMalformedQueries(t *testing.T) {
	cfg := testConfig()
	// Every packet of the flood spends a token of the one source, so with
	// the default burst (400) the valid question after it would get the
	// rate limiter's empty truncated answer, as it should; this test is
	// about garbage, so the limit is out of its way (TestRateLimit*).
	cfg.RateLimit, cfg.RateBurst = 1e6, 1_000_000
	s, addr := startServer(t, cfg)
	valid := new(dns.Msg)
	valid.SetQuestion("user-srv.lb.internal.", dns.TypeA)
	packed, err := valid.Pack()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var packets [][]byte
	packets = append(packets, nil, []byte{0}, packed[:12], packed[:len(packed)-3])
	resp := slices.Clone(packed)
	resp[2] |= 0x80 // QR: a response, which must be ignored
	packets = append(packets, resp)
	for range 300 {
		p := make([]byte, rng.IntN(600))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if len(p) > 12 && rng.IntN(2) == 0 {
			copy(p, packed[:12]) // a plausible header, garbage after
		}
		packets = append(packets, p)
	}
	mutated := func() []byte {
		p := slices.Clone(packed)
		for range 3 {
			p[rng.IntN(len(p))] = byte(rng.Uint32())
		}
		return p
	}
	for range 300 {
		packets = append(packets, mutated())
	}

	uc, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, p := range packets {
		if _, err := uc.Write(p); err != nil && len(p) > 0 {
			t.Fatal(err)
		}
	}
	for i, p := range packets[:50] {
		tc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		n := len(p)
		if i%2 == 0 {
			n += 7 // claim more than is sent, then close
		}
		tc.Write(append([]byte{byte(n >> 8), byte(n)}, p...))
		tc.Close()
	}
	for _, network := range []string{"udp", "tcp"} {
		// The flood may have filled the socket's buffer, so that UDP
		// questions are dropped for a moment: ask a few times.
		c := &dns.Client{Net: network, Timeout: time.Second}
		var r *dns.Msg
		for attempt := 0; r == nil && attempt < 5; attempt++ {
			r, _, err = c.Exchange(valid.Copy(), addr)
		}
		if err != nil {
			t.Fatalf("%s after garbage: %v", network, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
			t.Fatalf("%s after garbage: rcode %s, %d answers", network, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	t.Logf("after %d malformed packets: %+v", len(packets), s.Stats())
}

func TestServeStopsWithContext(t *testing.T) {
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	pc, lis, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, lis) }()
	// A TCP client holding an idle connection does not keep Serve running.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// A question that waits for the catalog is cut short too.
	go func() {
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("slow.lb.internal.", dns.TypeA)
		c.Exchange(m, addr)
	}()
	query(t, "udp", addr, "user-srv.lb.internal.", dns.TypeA, 0)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running 10 s after cancel")
	}
	t.Logf("Serve returned %v after cancel", time.Since(start))
	// Both ports are free again.
	pc2, lis2, err := Listen(addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	pc2.Close()
	lis2.Close()
}

func TestServeNeedsAListener(t *testing.T) {
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(t.Context(), nil, nil); err == nil {
		t.Fatal("Serve with no listener: want an error")
	}
}

func TestServeOnlyTCP(t *testing.T) {
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, nil, lis) }()
	if r := query(t, "tcp", lis.Addr().String(), "user-srv.lb.internal.", dns.TypeA, 0); len(r.Answer) != 2 {
		t.Errorf("%d answers, want 2", len(r.Answer))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAnswer(b *testing.B) {
	cfg := testConfig()
	var lbs StaticBalancers
	for i := range 5 {
		lbs = append(lbs, netip.AddrPortFrom(netip.MustParseAddr("10.0.0.5"), uint16(7000+i)))
	}
	cfg.Balancers = lbs
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"_grpclb._tcp.user-srv.lb.internal.", dns.TypeSRV},
		{"user-srv.lb.internal.", dns.TypeA},
		{"_grpc_config.user-srv.lb.internal.", dns.TypeTXT},
		{"nothing.x.lb.internal.", dns.TypeA},
	} {
		b.Run(dns.TypeToString[q.qtype]+"/"+q.name, func(b *testing.B) {
			req := new(dns.Msg)
			req.SetQuestion(q.name, q.qtype)
			req.SetEdns0(1232, false)
			b.ReportAllocs()
			for b.Loop() {
				m := s.answer(context.Background(), req)
				s.fit(m, 1232)
				if _, err := m.Pack(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
