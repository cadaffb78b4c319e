package dnsserver

import (
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

// countingObserver counts what the server reports, as "qtype rcode [tc]"
// and "guard reason".
type countingObserver struct {
	mu     sync.Mutex
	counts map[string]int // guarded by mu
}

func (o *countingObserver) add(k string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.counts == nil {
		o.counts = map[string]int{}
	}
	o.counts[k]++
}

func (o *countingObserver) DNSAnswer(qtype, rcode string, truncated bool) {
	k := qtype + " " + rcode
	if truncated {
		k += " tc"
	}
	o.add(k)
}

func (o *countingObserver) DNSGuard(reason string) { o.add("guard " + reason) }

func (o *countingObserver) snapshot() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.counts)
}

// TestObserver: every answer is reported with its qtype and rcode from the
// fixed sets, truncated UDP answers and the guard's refusals too.
func TestObserver(t *testing.T) {
	cfg := testConfig()
	clk := newManualClock() // no refill during the test
	cfg.Clock = clk
	cfg.RateLimit, cfg.RateBurst, cfg.RateLimitSlip = 1, 8, 2
	obs := &countingObserver{}
	cfg.Observer = obs
	s, addr := startServer(t, cfg)

	query(t, "udp", addr, "user-srv.lb.internal.", dns.TypeA, 1232)
	query(t, "udp", addr, "user-srv.lb.internal.", dns.TypeAAAA, 1232)
	query(t, "udp", addr, "_grpclb._tcp.user-srv.lb.internal.", dns.TypeSRV, 1232)
	query(t, "udp", addr, "nope.nope.lb.internal.", dns.TypeA, 1232)
	query(t, "udp", addr, "example.com.", dns.TypeA, 1232)
	query(t, "udp", addr, "user-srv.lb.internal.", dns.TypeMX, 1232)
	query(t, "tcp", addr, "lb.internal.", dns.TypeSOA, 0)
	query(t, "udp", addr, "_grpclb._tcp.user-srv.lb.internal.", dns.TypeSRV, 0)
	// 7 UDP questions so far (the TCP one is not limited): the 8th is
	// answered, the next slipped (empty, TC), the one after dropped.
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	for range 3 {
		q := new(dns.Msg)
		q.SetQuestion("lb.internal.", dns.TypeSOA)
		c.Exchange(q, addr)
	}

	want := map[string]int{
		"A NOERROR":          1,
		"AAAA NOERROR":       1,
		"SRV NOERROR":        2,
		"A NXDOMAIN":         1,
		"A REFUSED":          1,
		"other NOERROR":      1, // MX: NODATA
		"SOA NOERROR":        2, // one over TCP
		"guard slipped":      1,
		"guard rate_limited": 1,
	}
	// The SRV answer without EDNS0 may need truncation: count it under
	// either key.
	got := obs.snapshot()
	if n := got["SRV NOERROR tc"]; n > 0 {
		got["SRV NOERROR"] += n
		delete(got, "SRV NOERROR tc")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("observed (-want +got):\n%s", diff)
	}
	st := s.Stats()
	if st.Queries != 9 || st.Slipped != 1 || st.RateLimited != 1 {
		t.Errorf("stats %+v, want 9 answered, 1 slipped, 1 rate limited as observed", st)
	}
}

// TestObserverTruncated: an answer cut to the client's buffer is reported
// truncated.
func TestObserverTruncated(t *testing.T) {
	cfg := testConfig()
	cfg.MaxUDPRatio = 1 // no answer may be larger than its question
	obs := &countingObserver{}
	cfg.Observer = obs
	_, addr := startServer(t, cfg)
	r := query(t, "udp", addr, "user-srv.lb.internal.", dns.TypeA, 1232)
	if !r.Truncated {
		t.Fatalf("answer not truncated: %v", r)
	}
	if got := obs.snapshot(); !cmp.Equal(got, map[string]int{"A NOERROR tc": 1}) {
		t.Errorf("observed %v, want one truncated A NOERROR", got)
	}
}

func TestLabelsBounded(t *testing.T) {
	for qt := range 1 << 16 { // every type a client can send
		m := new(dns.Msg)
		m.SetQuestion("x.lb.internal.", uint16(qt))
		if l := qtypeLabel(m); !slices.Contains(QTypes, l) {
			t.Errorf("qtype %d labelled %q, not in QTypes", qt, l)
		}
	}
	for rc := range 4096 {
		if l := rcodeLabel(rc); !slices.Contains(Rcodes, l) {
			t.Errorf("rcode %d labelled %q, not in Rcodes", rc, l)
		}
	}
	if l := qtypeLabel(new(dns.Msg)); l != QTypeOther {
		t.Errorf("no question labelled %q", l)
	}
}
