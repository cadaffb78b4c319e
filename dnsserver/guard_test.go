package dnsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// manualClock is a clock.Clock that moves only when told. Safe for
// concurrent use.
type manualClock struct {
	mu  sync.Mutex
	now time.Time // guarded by mu
}

func newManualClock() *manualClock { return &manualClock{now: time.Unix(1_000_000, 0)} }

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *manualClock) NewTimer(time.Duration) (<-chan time.Time, func() bool) {
	return make(chan time.Time), func() bool { return true }
}

// fromRecorder is a recorder whose questions come from remote.
type fromRecorder struct {
	recorder
	remote netip.AddrPort
}

func (r *fromRecorder) RemoteAddr() net.Addr {
	if r.network == "tcp" {
		return net.TCPAddrFromAddrPort(r.remote)
	}
	return net.UDPAddrFromAddrPort(r.remote)
}

func TestDefaultAllow(t *testing.T) {
	cfg := testConfig()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		src  string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.9.9.9", true},
		{"::1", true},
		{"10.1.2.3", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"172.32.0.1", false},
		{"192.168.7.7", true},
		{"192.169.0.1", false},
		{"fd00::1", true},
		{"fc00::1", true},
		{"::ffff:10.0.0.1", true}, // IPv4-mapped, as a dual-stack socket sees it
		{"fe80::1%eth0", false},   // link-local is not in the default
		{"169.254.1.1", false},
		{"8.8.8.8", false},
		{"2001:db8::1", false},
		{"100.64.0.1", false}, // CGNAT is not private
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			ip := netip.MustParseAddr(tc.src)
			if got := s.allowed(ip); got != tc.want {
				t.Fatalf("allowed(%s) = %v, want %v", ip, got, tc.want)
			}
			// And as the server sees it: answered, or nothing at all.
			w := &fromRecorder{recorder: recorder{network: "udp"}, remote: netip.AddrPortFrom(ip, 5353)}
			req := new(dns.Msg)
			req.SetQuestion("_grpc_config.user-srv.lb.internal.", dns.TypeTXT)
			s.ServeDNS(w, req)
			if answered := len(w.msgs) == 1; answered != tc.want {
				t.Fatalf("%d answers, want answered=%v", len(w.msgs), tc.want)
			}
		})
	}
}

func TestParseAllow(t *testing.T) {
	tests := []struct {
		spec    string
		want    []string
		wantErr string
	}{
		{spec: "10.0.0.0/8, 192.0.2.7,::1", want: []string{"10.0.0.0/8", "192.0.2.7/32", "::1/128"}},
		{spec: "0.0.0.0/0,::/0", want: []string{"0.0.0.0/0", "::/0"}},
		{spec: "::ffff:10.0.0.0/104", want: []string{"10.0.0.0/8"}},
		{spec: "10.0.0.1/8", wantErr: "host bits set (did you mean 10.0.0.0/8?)"},
		{spec: "example.com", wantErr: "neither an address nor a CIDR prefix"},
		{spec: "fe80::1%eth0", wantErr: "neither an address nor a CIDR prefix"},
		{spec: "10.0.0.0/33", wantErr: "source network"},
		{spec: " , ", wantErr: "no source network"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := ParseAllow(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseAllow(%q) error %v, want one containing %q", tc.spec, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if diff := cmp.Diff(tc.want, s); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestAllowOverTheNetwork: with only 127.0.0.1 allowed, a UDP question
// from 127.0.0.2 gets nothing (not even FORMERR for garbage), a TCP
// connection from it is closed at once; both are counted.
func TestAllowOverTheNetwork(t *testing.T) {
	cfg := testConfig()
	cfg.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	s, addr := startServer(t, cfg)

	from := func(network, ip string) *dns.Client {
		d := &net.Dialer{Timeout: time.Second}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(ip)}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
		}
		return &dns.Client{Net: network, Dialer: d, Timeout: 300 * time.Millisecond}
	}
	q := new(dns.Msg)
	q.SetQuestion("_grpc_config.user-srv.lb.internal.", dns.TypeTXT)
	for _, network := range []string{"udp", "tcp"} {
		if r, _, err := from(network, "127.0.0.1").Exchange(q.Copy(), addr); err != nil || len(r.Answer) != 1 {
			t.Fatalf("%s from 127.0.0.1: %v, %v", network, r, err)
		}
		if r, _, err := from(network, "127.0.0.2").Exchange(q.Copy(), addr); err == nil {
			t.Fatalf("%s from 127.0.0.2 answered: %v", network, r)
		}
	}
	// Garbage that miekg/dns would answer with FORMERR.
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad := make([]byte, 12)
	bad[5] = 2 // two questions, none there
	c.Write(bad)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 512)); err == nil {
		t.Fatalf("garbage from a source not allowed got %d bytes back", n)
	}
	st := s.Stats()
	if st.Denied != 3 || st.Queries != 2 {
		t.Errorf("stats %+v: want 3 denied (UDP, TCP, garbage) and 2 questions answered", st)
	}
}

func TestRateLimiter(t *testing.T) {
	type step struct {
		advance time.Duration
		src     string
		n       int
		want    string // one letter per question: a(dmit), s(lip), d(rop)
	}
	letters := map[verdict]string{admit: "a", slip: "s", drop: "d"}
	tests := []struct {
		name        string
		rate        float64
		burst, slip int
		v4, v6      int
		steps       []step
	}{
		{name: "burst then slip every other", rate: 1, burst: 3, slip: 2, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 8, want: "aaasdsds"},
			{advance: time.Second, src: "10.0.0.1", n: 3, want: "asd"},
			{advance: 10 * time.Second, src: "10.0.0.1", n: 4, want: "aaas"}, // refilled to the burst, no more
		}},
		{name: "slip 0 drops all", rate: 1, burst: 1, slip: 0, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 4, want: "addd"},
		}},
		{name: "slip 1 truncates all", rate: 1, burst: 1, slip: 1, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 4, want: "asss"},
		}},
		{name: "fractional refill", rate: 10, burst: 1, slip: 0, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 2, want: "ad"},
			{advance: 50 * time.Millisecond, src: "10.0.0.1", n: 1, want: "d"},
			{advance: 50 * time.Millisecond, src: "10.0.0.1", n: 2, want: "ad"},
		}},
		{name: "IPv4 addresses are separate sources", rate: 1, burst: 1, slip: 0, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 2, want: "ad"},
			{src: "10.0.0.2", n: 2, want: "ad"},
		}},
		{name: "one /24 is one source", rate: 1, burst: 1, slip: 0, v4: 24, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 1, want: "a"},
			{src: "10.0.0.2", n: 1, want: "d"},
			{src: "10.0.1.2", n: 1, want: "a"},
		}},
		{name: "one IPv6 /64 is one source", rate: 1, burst: 1, slip: 0, v4: 32, v6: 64, steps: []step{
			{src: "fd00::1", n: 1, want: "a"},
			{src: "fd00::ffff:1", n: 1, want: "d"},
			{src: "fd00:0:0:1::1", n: 1, want: "a"},
		}},
		{name: "IPv4-mapped is its IPv4", rate: 1, burst: 1, slip: 0, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 1, want: "a"},
			{src: "::ffff:10.0.0.1", n: 1, want: "d"},
		}},
		{name: "a clock going back refills nothing", rate: 1, burst: 1, slip: 0, v4: 32, v6: 64, steps: []step{
			{src: "10.0.0.1", n: 1, want: "a"},
			{advance: -time.Hour, src: "10.0.0.1", n: 1, want: "d"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newManualClock()
			cfg := testConfig()
			cfg.RateLimit, cfg.RateBurst, cfg.RateLimitSlip = tc.rate, tc.burst, tc.slip
			cfg.RateLimitIPv4Bits, cfg.RateLimitIPv6Bits = tc.v4, tc.v6
			cfg.Clock = clk
			r := newRateLimiter(cfg)
			for i, st := range tc.steps {
				clk.Advance(st.advance)
				var got string
				for range st.n {
					v, _ := r.take(netip.MustParseAddr(st.src))
					got += letters[v]
				}
				if got != st.want {
					t.Errorf("step %d (%s ×%d): %s, want %s", i, st.src, st.n, got, st.want)
				}
			}
		})
	}
}

// TestRateLimiterTableBounded: the table never holds more than
// RateLimitSources sources; the one seen longest ago goes first.
func TestRateLimiterTableBounded(t *testing.T) {
	clk := newManualClock()
	cfg := testConfig()
	cfg.RateLimit, cfg.RateBurst, cfg.RateLimitSlip, cfg.RateLimitSources = 1, 1, 0, 3
	cfg.Clock = clk
	r := newRateLimiter(cfg)
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for i := range 3 {
		r.take(ip(i)) // each spends its only token
	}
	r.take(ip(0)) // 10.0.0.0 is now the source seen last; 10.0.0.1 the oldest
	for i := 3; i < 1003; i++ {
		r.take(ip(i % 256))
		if n, _ := r.size(); n > 3 {
			t.Fatalf("%d sources in a table of 3", n)
		}
	}
	if n, ev := r.size(); n != 3 || ev == 0 {
		t.Fatalf("size %d, evicted %d", n, ev)
	}

	r = newRateLimiter(cfg)
	for i := range 3 {
		r.take(ip(i))
	}
	r.take(ip(0))
	r.take(ip(3)) // evicts 10.0.0.1
	if v, _ := r.take(ip(0)); v != drop {
		t.Errorf("10.0.0.0, seen last, was evicted: verdict %v", v)
	}
	if v, _ := r.take(ip(1)); v != admit {
		t.Errorf("10.0.0.1, the oldest, kept its empty bucket: verdict %v", v)
	}
}

// TestRateLimitOverTheNetwork: past its burst, a source gets empty TC
// answers (every other question) or nothing; a real client retries over
// TCP, which is not rate limited, and resolves.
func TestRateLimitOverTheNetwork(t *testing.T) {
	cfg := testConfig()
	clk := newManualClock() // no refill during the test
	cfg.Clock = clk
	cfg.RateLimit, cfg.RateBurst, cfg.RateLimitSlip = 1, 3, 2
	s, addr := startServer(t, cfg)

	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	var got string
	for range 7 {
		q := new(dns.Msg)
		q.SetQuestion("_grpc_config.user-srv.lb.internal.", dns.TypeTXT)
		q.SetEdns0(1232, false)
		r, _, err := c.Exchange(q, addr)
		switch {
		case err != nil:
			got += "-"
		case r.Truncated && len(r.Answer) == 0 && r.IsEdns0() != nil:
			got += "T"
		case len(r.Answer) == 1:
			got += "A"
		default:
			t.Fatalf("unexpected answer %v", r)
		}
	}
	if got != "AAAT-T-" {
		t.Errorf("answers %s, want AAAT-T- (A answer, T truncated, - none)", got)
	}
	st := s.Stats()
	if st.Slipped != 2 || st.RateLimited != 2 || st.Queries != 3 {
		t.Errorf("stats %+v: want 2 slipped, 2 rate limited, 3 answered", st)
	}

	// A stub resolver: over the limit, it is told to use TCP and gets its
	// answer there. (With slip 2 one question in two is dropped, and the
	// resolver would wait its timeout: slip 1 shows the TCP retry alone.)
	cfg.RateLimitSlip = 1
	_, addr = startServer(t, cfg)
	for range 3 {
		query(t, "udp", addr, "_grpc_config.user-srv.lb.internal.", dns.TypeTXT, 0)
	}
	var mu sync.Mutex
	dials := map[string]int{}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	txt, err := goResolver(addr, dials, &mu).LookupTXT(ctx, "_grpc_config.user-srv.lb.internal.")
	mu.Lock()
	defer mu.Unlock()
	if err != nil || len(txt) != 1 || dials["tcp"] == 0 {
		t.Errorf("over the limit, LookupTXT = %q, %v with dials %v; want the record, over TCP", txt, err, dials)
	}
}

func TestMinimalANY(t *testing.T) {
	cfg := testConfig()
	cat := cfg.Catalog.(*fakeCatalog)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hinfo := func(name string) []string { return []string{name + ` 5 IN HINFO "RFC8482" ""`} }
	tests := []struct {
		qname  string
		rcode  int
		answer []string
	}{
		{"user-srv.lb.internal.", dns.RcodeSuccess, hinfo("user-srv.lb.internal.")},
		{"slow.lb.internal.", dns.RcodeSuccess, hinfo("slow.lb.internal.")}, // the catalog does not know it: not asked
		{"_grpclb._tcp.user-srv.lb.internal.", dns.RcodeSuccess, hinfo("_grpclb._tcp.user-srv.lb.internal.")},
		{"_grpc_config.user-srv.lb.internal.", dns.RcodeSuccess, hinfo("_grpc_config.user-srv.lb.internal.")},
		{"lb.internal.", dns.RcodeSuccess, hinfo("lb.internal.")},
		{lb4, dns.RcodeSuccess, hinfo(lb4)},
		{"10-9-9-9.balancer.lb.internal.", dns.RcodeNameError, nil},
		{"_tcp.user-srv.lb.internal.", dns.RcodeSuccess, nil},
		{"a.b.c.lb.internal.", dns.RcodeNameError, nil},
		{"example.com.", dns.RcodeRefused, nil},
	}
	for _, tc := range tests {
		t.Run(tc.qname, func(t *testing.T) {
			for _, network := range []string{"udp", "tcp"} {
				w := &recorder{network: network}
				req := new(dns.Msg)
				req.SetQuestion(tc.qname, dns.TypeANY)
				req.SetEdns0(4096, false)
				start := time.Now()
				s.ServeDNS(w, req)
				if d := time.Since(start); d > 100*time.Millisecond {
					t.Errorf("%s: answered after %v", network, d)
				}
				r := w.msgs[0]
				if r.Rcode != tc.rcode || r.Truncated {
					t.Errorf("%s: rcode %s TC %v, want %s", network, dns.RcodeToString[r.Rcode], r.Truncated, dns.RcodeToString[tc.rcode])
				}
				if diff := cmp.Diff(tc.answer, rrs(r.Answer)); diff != "" {
					t.Errorf("%s: answer (-want +got):\n%s", network, diff)
				}
			}
		})
	}
	cat.mu.Lock()
	defer cat.mu.Unlock()
	if len(cat.asked) != 0 {
		t.Errorf("ANY questions asked the catalog about %v", cat.asked)
	}
	if st := s.Stats(); st.MinimalANY != 2*6 {
		t.Errorf("MinimalANY = %d, want 12", st.MinimalANY)
	}
}

// amplification sends each question over UDP (with an EDNS0 buffer of
// 4096, the attacker's choice) and returns the largest ratio of answer to
// question bytes.
func amplification(t *testing.T, addr string, qs []*dns.Msg) (worst float64, which string) {
	t.Helper()
	for _, q := range qs {
		qb, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(qb)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 65536)
		n, err := c.Read(buf)
		c.Close()
		if err != nil {
			t.Fatalf("%s: %v", q.Question[0].Name, err)
		}
		if ratio := float64(n) / float64(len(qb)); ratio > worst {
			worst, which = ratio, fmt.Sprintf("%s %s: %d bytes for %d", q.Question[0].Name, dns.TypeToString[q.Question[0].Qtype], n, len(qb))
		}
	}
	return worst, which
}

// TestSizeBounds: a UDP answer is at most the client's EDNS0 buffer, at
// most 1232 bytes, and at most MaxUDPRatio times the question; the
// amplification factor with the bounds of before (no ratio, full ANY) is
// compared with today's.
func TestSizeBounds(t *testing.T) {
	cfg := testConfig()
	var big []string
	for i := range 100 {
		big = append(big, fmt.Sprintf("10.1.%d.%d:50051", i/250, i%250+1))
	}
	var lbs StaticBalancers
	for i := range 8 {
		lbs = append(lbs, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(5 + i)}), 7000))
	}
	cfg.Balancers = lbs
	cfg.Catalog = newCatalog(map[string][]string{"b": big, "user-srv": {"10.0.0.1:50051"}})
	var qs []*dns.Msg
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"b.lb.internal.", dns.TypeA}, {"b.lb.internal.", dns.TypeANY}, {"_grpclb._tcp.b.lb.internal.", dns.TypeSRV},
		{"_grpc_config.b.lb.internal.", dns.TypeTXT}, {"user-srv.lb.internal.", dns.TypeA}, {"x.y.lb.internal.", dns.TypeA}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.SetEdns0(4096, false)
		qs = append(qs, m)
	}
	// Before: no bound on the ratio (the size bounds as they were).
	old := cfg
	old.MaxUDPRatio = 100
	_, oldAddr := startServer(t, old)
	before, beforeWhich := amplification(t, oldAddr, qs)
	_, addr := startServer(t, cfg)
	after, afterWhich := amplification(t, addr, qs)
	t.Logf("amplification (answer/question bytes, EDNS0 4096): without the ratio bound ×%.1f (%s); with MaxUDPRatio %d ×%.1f (%s)",
		before, beforeWhich, cfg.MaxUDPRatio, after, afterWhich)
	if after > float64(cfg.MaxUDPRatio) {
		t.Errorf("amplification ×%.1f over the bound of %d", after, cfg.MaxUDPRatio)
	}

	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		qname    string
		qtype    uint16
		edns     int
		wantTC   bool
		maxBytes int
	}{
		{"SRV of 8 fits 10× its question", "_grpclb._tcp.b.lb.internal.", dns.TypeSRV, 1232, false, 0},
		{"TXT fits", "_grpc_config.b.lb.internal.", dns.TypeTXT, 0, false, 0},
		{"A of 100 over 10× is TC", "b.lb.internal.", dns.TypeA, 4096, true, 0},
		{"A of 100 without EDNS0 is TC", "b.lb.internal.", dns.TypeA, 0, true, 0},
		{"NXDOMAIN fits", "x.y.lb.internal.", dns.TypeA, 0, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := new(dns.Msg)
			req.SetQuestion(tc.qname, tc.qtype)
			if tc.edns > 0 {
				req.SetEdns0(uint16(tc.edns), false)
			}
			w := &recorder{network: "udp"}
			s.ServeDNS(w, req)
			r := w.msgs[0]
			r.Compress = true
			limit := min(cfg.MaxUDPRatio*req.Len(), 512)
			if tc.edns > 0 {
				limit = min(cfg.MaxUDPRatio*req.Len(), min(tc.edns, cfg.MaxUDPSize))
			}
			if r.Truncated != tc.wantTC || r.Len() > limit {
				t.Errorf("TC %v, %d bytes; want TC %v, at most %d bytes", r.Truncated, r.Len(), tc.wantTC, limit)
			}
			// Over TCP the whole answer.
			w = &recorder{network: "tcp"}
			s.ServeDNS(w, req)
			if w.msgs[0].Truncated {
				t.Errorf("TCP answer truncated")
			}
		})
	}
}

// blockingCatalog blocks every question until release is closed,
// counting the questions waiting.
type blockingCatalog struct {
	release       chan struct{}
	waiting, peak atomic.Int64
}

func (c *blockingCatalog) Endpoints(ctx context.Context, service string) (discovery.Snapshot, bool) {
	n := c.waiting.Add(1)
	defer c.waiting.Add(-1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
	select {
	case <-c.release:
		return discovery.Snapshot{Service: service}, true
	case <-ctx.Done():
		return discovery.Snapshot{}, false
	}
}

// TestInflightBound: with MaxInflight 4 and questions that wait, 4 are
// answered and the others dropped at once and counted.
func TestInflightBound(t *testing.T) {
	cfg := testConfig()
	cat := &blockingCatalog{release: make(chan struct{})}
	cfg.Catalog = cat
	cfg.MaxInflight = 4
	cfg.LookupTimeout = 5 * time.Second
	s, addr := startServer(t, cfg)

	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 40
	for i := range n {
		q := new(dns.Msg)
		q.SetQuestion(fmt.Sprintf("svc%d.lb.internal.", i), dns.TypeA)
		b, _ := q.Pack()
		c.Write(b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Overloaded < n-4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Stats(); st.Overloaded != n-4 || cat.peak.Load() != 4 {
		t.Fatalf("overloaded %d, peak waiting %d; want %d and 4", st.Overloaded, cat.peak.Load(), n-4)
	}
	close(cat.release)
	got := 0
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, err := c.Read(make([]byte, 1232)); err != nil {
			break
		}
		got++
	}
	if got != 4 {
		t.Errorf("%d answers, want 4", got)
	}
	// Freed: a new question is answered.
	if r := query(t, "udp", addr, "svc.lb.internal.", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after the burst: %s", dns.RcodeToString[r.Rcode])
	}
}

// TestTCPBounds: over MaxTCPConnsPerSource from one IP, or MaxTCPConns in
// all, a connection is closed at once; closing one frees its slot.
func TestTCPBounds(t *testing.T) {
	cfg := testConfig()
	cfg.MaxTCPConns, cfg.MaxTCPConnsPerSource = 3, 2
	s, addr := startServer(t, cfg)
	q := new(dns.Msg)
	q.SetQuestion("_grpc_config.user-srv.lb.internal.", dns.TypeTXT)
	// open connects from ip and reports whether the connection answers.
	open := func(ip string) (*dns.Conn, bool) {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := &dns.Conn{Conn: nc}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(time.Second))
		if err := c.WriteMsg(q.Copy()); err != nil {
			return c, false
		}
		r, err := c.ReadMsg()
		return c, err == nil && len(r.Answer) == 1
	}
	tests := []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.1", true},
		{"127.0.0.1", false}, // a third from one IP
		{"127.0.0.2", true},
		{"127.0.0.3", false}, // a fourth in all
	}
	var conns []*dns.Conn
	for i, tc := range tests {
		c, ok := open(tc.ip)
		if ok != tc.want {
			t.Fatalf("connection %d from %s answered %v, want %v", i, tc.ip, ok, tc.want)
		}
		conns = append(conns, c)
	}
	if st := s.Stats(); st.TCPRejected != 2 {
		t.Errorf("TCPRejected = %d, want 2", st.TCPRejected)
	}
	conns[0].Close()
	// The server sees the close when it reads next.
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, ok := open("127.0.0.3"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection's slot was not freed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fakeDirectory knows services; it is ready once ready is closed.
type fakeDirectory struct {
	services map[string]bool
	ready    chan struct{}
}

func (d *fakeDirectory) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	select {
	case <-d.ready:
		return d.services[service], true, make(chan struct{})
	default:
		return false, false, d.ready
	}
}

// TestDirectory: with a Directory, an A question about a service nobody
// registered is NODATA at once and the catalog is not asked (so no watch
// starts); before the directory's first read the question waits for it.
func TestDirectory(t *testing.T) {
	cfg := testConfig()
	cat := cfg.Catalog.(*fakeCatalog)
	dir := &fakeDirectory{services: map[string]bool{"user-srv": true}, ready: make(chan struct{})}
	cfg.Directory = dir
	cfg.LookupTimeout = 2 * time.Second
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(name string) *dns.Msg {
		w := &recorder{network: "udp"}
		req := new(dns.Msg)
		req.SetQuestion(name, dns.TypeA)
		s.ServeDNS(w, req)
		return w.msgs[0]
	}
	time.AfterFunc(100*time.Millisecond, func() { close(dir.ready) })
	start := time.Now()
	if r := ask("User-Srv.lb.internal."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Fatalf("known service: %v", r)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > time.Second {
		t.Errorf("the first question waited %v for the directory, want about 100ms", d)
	}
	for i := range 500 {
		start := time.Now()
		r := ask(fmt.Sprintf("random-%d.lb.internal.", i))
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
			t.Fatalf("unknown service: %v", r)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("unknown service answered after %v", d)
		}
	}
	cat.mu.Lock()
	defer cat.mu.Unlock()
	if diff := cmp.Diff(map[string]int{"user-srv": 1}, cat.asked); diff != "" {
		t.Errorf("services the catalog was asked about (-want +got):\n%s", diff)
	}
}

// TestLogsThrottled: a flood from sources not allowed writes one line per
// second, not one per question.
func TestLogsThrottled(t *testing.T) {
	var buf syncbuf.Buffer
	cfg := testConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		w := &fromRecorder{recorder: recorder{network: "udp"}, remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{8, 8, byte(i >> 8), byte(i)}), 53)}
		req := new(dns.Msg)
		req.SetQuestion(strings.Repeat("x", 60)+".lb.internal.", dns.TypeA)
		s.ServeDNS(w, req)
	}
	if n := strings.Count(buf.String(), "\n"); n != 1 {
		t.Errorf("%d log lines for 1000 denied questions, want 1:\n%s", n, buf.String())
	}
	if st := s.Stats(); st.Denied != 1000 {
		t.Errorf("Denied = %d, want 1000", st.Denied)
	}
}

func TestConfigGuardBounds(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no allowed network", func(c *Config) { c.Allow = nil }, "no allowed source network"},
		{"zero rate", func(c *Config) { c.RateLimit = 0 }, "rate limit 0"},
		{"zero burst", func(c *Config) { c.RateBurst = 0 }, "rate burst 0"},
		{"negative slip", func(c *Config) { c.RateLimitSlip = -1 }, "slip -1"},
		{"no table", func(c *Config) { c.RateLimitSources = 0 }, "rate limit sources 0"},
		{"prefix", func(c *Config) { c.RateLimitIPv4Bits = 33 }, "rate limit prefixes"},
		{"ratio", func(c *Config) { c.MaxUDPRatio = 0 }, "max UDP ratio 0"},
		{"inflight", func(c *Config) { c.MaxInflight = 0 }, "max in-flight 0"},
		{"tcp", func(c *Config) { c.MaxTCPConnsPerSource = 0 }, "max TCP connections"},
		{"clock", func(c *Config) { c.Clock = nil }, "no clock"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.edit(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// BenchmarkAdmitUDP is the work the socket's reader does per packet, for
// a source under its rate, one over it (slip 0: dropped) and one not
// allowed.
func BenchmarkAdmitUDP(b *testing.B) {
	q := new(dns.Msg)
	q.SetQuestion("user-srv.lb.internal.", dns.TypeA)
	raw, err := q.Pack()
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		src  string
		rate float64
	}{{"admitted", "10.0.0.1", 1e12}, {"over the rate", "10.0.0.1", 1e-9}, {"not allowed", "8.8.8.8", 1}} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.RateLimit, cfg.RateBurst, cfg.RateLimitSlip = tc.rate, 1, 0
			s, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			from := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.src), 5353))
			reply := func([]byte) error { return nil }
			b.ReportAllocs()
			for b.Loop() {
				s.admitUDP(raw, from, reply)
			}
		})
	}
}
