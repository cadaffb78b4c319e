package clientstats

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/policy"
)

var t0 = time.Unix(1000, 0)

func drops(kv ...any) []*lbpb.ClientStatsPerToken {
	var out []*lbpb.ClientStatsPerToken
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &lbpb.ClientStatsPerToken{LoadBalanceToken: kv[i].(string), NumCalls: int64(kv[i+1].(int))})
	}
	return out
}

func TestRegistry(t *testing.T) {
	r := New(Config{})
	a := ClientKey{Service: "s", Stream: 1, Peer: "127.0.0.1:1"}
	b := ClientKey{Service: "s", Stream: 2, Peer: "127.0.0.1:2"}
	r.Add(a, &lbpb.ClientStats{NumCallsStarted: 10, NumCallsFinished: 9, NumCallsFinishedKnownReceived: 8,
		CallsFinishedWithDrop: drops(policy.DropTokenOverload, 1)}, t0)
	r.Add(a, &lbpb.ClientStats{NumCallsStarted: 5, NumCallsFinished: 5, NumCallsFinishedWithClientFailedToSend: 1}, t0)
	r.Add(b, &lbpb.ClientStats{NumCallsStarted: 1, CallsFinishedWithDrop: drops(policy.DropTokenOverload, 2)}, t0)

	want := Counters{Reports: 3, Started: 16, Finished: 14, FailedToSend: 1, KnownReceived: 8, Offered: 16,
		Dropped: map[string]int64{policy.DropTokenOverload: 3}}
	if diff := cmp.Diff(want, r.Service("s")); diff != "" {
		t.Errorf("Service(s) (-want +got):\n%s", diff)
	}
	got, ok := r.Client(a)
	wantA := Counters{Reports: 2, Started: 15, Finished: 14, FailedToSend: 1, KnownReceived: 8, Offered: 15,
		Dropped: map[string]int64{policy.DropTokenOverload: 1}}
	if diff := cmp.Diff(wantA, got); !ok || diff != "" {
		t.Errorf("Client(a) ok=%v (-want +got):\n%s", ok, diff)
	}
	// A copy must not alias the registry's map.
	got.Dropped[policy.DropTokenOverload] = 100
	if c, _ := r.Client(a); c.Dropped[policy.DropTokenOverload] != 1 {
		t.Error("Client returned a map that aliases the registry")
	}
	r.Forget(a)
	if _, ok := r.Client(a); ok {
		t.Error("Client(a) still known after Forget")
	}
	if r.Service("s").Started != 16 {
		t.Error("Forget changed the service totals")
	}
	if diff := cmp.Diff([]string{"s"}, r.Services()); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}
}

// TestPruned: client state goes with its stream, service totals with
// ForgetService once no stream reports to the service.
func TestPruned(t *testing.T) {
	r := New(Config{MaxCallRate: 100, Burst: 10 * time.Second})
	a := ClientKey{Service: "s", Stream: 1}
	b := ClientKey{Service: "s", Stream: 2}
	r.Add(a, &lbpb.ClientStats{NumCallsStarted: 1}, t0)
	r.Add(b, &lbpb.ClientStats{NumCallsStarted: 1}, t0)
	r.Forget(a)
	if r.ForgetService("s") {
		t.Fatal("ForgetService dropped the totals of a service a live stream reports to")
	}
	r.Forget(b)
	r.Forget(b) // twice is harmless
	if !r.ForgetService("s") {
		t.Fatal("ForgetService kept the totals of a service without streams")
	}
	if s, c, a := r.Len(); s != 0 || c != 0 || a != 0 {
		t.Fatalf("Len = %d services, %d clients, %d addresses after every stream and service went, want 0, 0, 0", s, c, a)
	}
	if !r.ForgetService("never") {
		t.Error("ForgetService of an unknown service reported false")
	}
}

// TestDropTokens: only the tokens this balancer issues are kept; any other
// token, however many distinct ones, lands in one bucket.
func TestDropTokens(t *testing.T) {
	r := New(Config{})
	k := ClientKey{Service: "s", Stream: 1}
	var ds []*lbpb.ClientStatsPerToken
	for i := range 10000 {
		ds = append(ds, &lbpb.ClientStatsPerToken{LoadBalanceToken: fmt.Sprintf("forged-%d", i), NumCalls: 1})
	}
	ds = append(ds, drops(policy.DropTokenRateLimit, 7, policy.DropTokenOverload, 2, "be-abc", 3)...)
	res := r.Add(k, &lbpb.ClientStats{NumCallsStarted: 20000, NumCallsFinished: 20000, CallsFinishedWithDrop: ds}, t0)
	if res.Verdict != Accepted || res.OtherTokens != 10001 {
		t.Errorf("Add = %+v, want accepted with 10001 other tokens", res)
	}
	want := map[string]int64{policy.DropTokenRateLimit: 7, policy.DropTokenOverload: 2, OtherDropToken: 10003}
	if diff := cmp.Diff(want, r.Service("s").Dropped); diff != "" {
		t.Errorf("Dropped (-want +got):\n%s", diff)
	}
}

// TestPlausibility: a stream may report at most MaxCallRate × the time
// since its previous report, plus what it saved up to Burst (a new stream
// starts with a full Burst); counts above are clamped.
func TestPlausibility(t *testing.T) {
	cfg := Config{MaxCallRate: 1000, Burst: 20 * time.Second} // 20,000 calls saved up at most
	type rep struct {
		at      time.Duration // since the stream's first report
		started int64
		dropped int
	}
	tests := []struct {
		name        string
		reports     []rep
		wantStarted int64
		wantDropped int64
		wantVerdict []Verdict
	}{
		{"honest", []rep{{0, 5000, 0}, {10 * time.Second, 10000, 100}, {20 * time.Second, 10000, 0}}, 25000, 100,
			[]Verdict{Accepted, Accepted, Accepted}},
		{"first report holds the burst", []rep{{0, 20000, 0}}, 20000, 0, []Verdict{Accepted}},
		{"first report above the burst", []rep{{0, 20001, 0}}, 20000, 0, []Verdict{Clamped}},
		{"2^40 at once", []rep{{0, 1 << 40, 1 << 30}}, 20000, 20000, []Verdict{Clamped}},
		{"MaxInt64", []rep{{0, math.MaxInt64, 0}, {10 * time.Second, math.MaxInt64, 0}}, 30000, 0,
			[]Verdict{Clamped, Clamped}},
		{"burst spent, then 10 s worth", []rep{{0, 20000, 0}, {10 * time.Second, 15000, 0}}, 30000, 0,
			[]Verdict{Accepted, Clamped}},
		{"late report: saved up to the burst only", []rep{{0, 20000, 0}, {time.Hour, 1 << 40, 0}}, 40000, 0,
			[]Verdict{Accepted, Clamped}},
		{"clock going back gives nothing", []rep{{0, 20000, 0}, {-time.Minute, 1, 0}}, 20000, 0,
			[]Verdict{Accepted, Clamped}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(cfg)
			k := ClientKey{Service: "s", Stream: 1}
			var started int64
			for i, rp := range tc.reports {
				res := r.Add(k, &lbpb.ClientStats{NumCallsStarted: rp.started, NumCallsFinished: rp.started,
					CallsFinishedWithDrop: drops(policy.DropTokenRateLimit, rp.dropped)}, t0.Add(rp.at))
				if res.Verdict != tc.wantVerdict[i] {
					t.Errorf("report %d: verdict %v, want %v", i, res.Verdict, tc.wantVerdict[i])
				}
				started += res.Started
			}
			if started != tc.wantStarted {
				t.Errorf("Result.Started adds up to %d, want %d", started, tc.wantStarted)
			}
			c := r.Service("s")
			if c.Started != tc.wantStarted || c.Finished != tc.wantStarted || c.Dropped[policy.DropTokenRateLimit] != tc.wantDropped {
				t.Errorf("started %d finished %d dropped %d, want %d, %d, %d", c.Started, c.Finished,
					c.Dropped[policy.DropTokenRateLimit], tc.wantStarted, tc.wantStarted, tc.wantDropped)
			}
		})
	}
}

// TestReportRate: reports beyond MaxReportRate (ReportBurst at once) are
// ignored and change nothing.
func TestReportRate(t *testing.T) {
	r := New(Config{MaxReportRate: 0.2, ReportBurst: 3})
	k := ClientKey{Service: "s", Stream: 1}
	var verdicts []Verdict
	for i := range 5 {
		verdicts = append(verdicts, r.Add(k, &lbpb.ClientStats{NumCallsStarted: 1}, t0.Add(time.Duration(i)*time.Millisecond)).Verdict)
	}
	verdicts = append(verdicts, r.Add(k, &lbpb.ClientStats{NumCallsStarted: 1}, t0.Add(5*time.Second)).Verdict)
	verdicts = append(verdicts, r.Add(k, &lbpb.ClientStats{NumCallsStarted: 1}, t0.Add(6*time.Second)).Verdict)
	want := []Verdict{Accepted, Accepted, Accepted, TooFrequent, TooFrequent, Accepted, TooFrequent}
	if diff := cmp.Diff(want, verdicts); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	if c := r.Service("s"); c.Reports != 4 || c.Started != 4 {
		t.Errorf("service counted %d reports, %d calls; want 4, 4", c.Reports, c.Started)
	}
}

// TestShareCap: one stream counts for at most ShareRate calls/s in
// Offered, ShareBurst of it saved up, starting with nothing saved.
func TestShareCap(t *testing.T) {
	cfg := Config{
		ShareRate:  func(svc string) float64 { return map[string]float64{"limited": 50}[svc] },
		ShareBurst: 10 * time.Second, // 500 calls saved up at most
	}
	type rep struct {
		at      time.Duration // since the stream started (its first, empty report)
		started int64
	}
	tests := []struct {
		name        string
		service     string
		reports     []rep
		wantOffered int64
		wantStarted int64
	}{
		{"no cap without a limit", "free", []rep{{10 * time.Second, 1 << 40}}, 1 << 40, 1 << 40},
		{"within the share", "limited", []rep{{10 * time.Second, 400}, {20 * time.Second, 500}}, 900, 900},
		{"forged 2^40", "limited", []rep{{10 * time.Second, 1 << 40}}, 500, 1 << 40},
		{"forged every interval for 60 s", "limited", []rep{{10 * time.Second, 1 << 40}, {20 * time.Second, 1 << 40},
			{30 * time.Second, 1 << 40}, {40 * time.Second, 1 << 40}, {50 * time.Second, 1 << 40}, {60 * time.Second, 1 << 40}},
			3000, 6 << 40},
		{"saved up for an hour: one burst", "limited", []rep{{time.Hour, 1 << 40}}, 500, 1 << 40},
		{"at once: nothing saved yet", "limited", []rep{{0, 1 << 40}}, 0, 1 << 40},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(cfg)
			k := ClientKey{Service: tc.service, Stream: 1}
			r.Add(k, &lbpb.ClientStats{}, t0)
			for _, rp := range tc.reports {
				r.Add(k, &lbpb.ClientStats{NumCallsStarted: rp.started}, t0.Add(rp.at))
			}
			if c := r.Service(tc.service); c.Offered != tc.wantOffered || c.Started != tc.wantStarted {
				t.Errorf("offered %d started %d, want %d, %d", c.Offered, c.Started, tc.wantOffered, tc.wantStarted)
			}
		})
	}
}

// TestShareCapReconnect: a client that reconnects again and again counts
// for no more than one that stays: each new stream starts with nothing
// saved.
func TestShareCapReconnect(t *testing.T) {
	r := New(Config{ShareRate: func(string) float64 { return 50 }, ShareBurst: 10 * time.Second})
	now := t0
	for i := range 100 { // a new stream every 100 ms for 10 s
		k := ClientKey{Service: "s", Stream: uint64(i)}
		r.Add(k, &lbpb.ClientStats{NumCallsStarted: 1 << 40}, now)
		now = now.Add(100 * time.Millisecond)
		r.Add(k, &lbpb.ClientStats{NumCallsStarted: 1 << 40}, now)
		r.Forget(k)
	}
	if got := r.Service("s").Offered; got > 500 {
		t.Errorf("100 streams in turn over 10 s counted for %d calls, want at most 50/s × 10 s = 500", got)
	}
}

// TestShareCapPerAddress: the streams of one address (IPv4 address, IPv6
// /64) share one cap, however many they are; other addresses have their
// own. Its state goes with the address's last stream.
func TestShareCapPerAddress(t *testing.T) {
	r := New(Config{ShareRate: func(string) float64 { return 50 }, ShareBurst: 10 * time.Second})
	peers := []string{"10.0.0.1:1000", "10.0.0.1:1001", "[::ffff:10.0.0.1]:1002", // one address
		"[2001:db8::1]:1", "[2001:db8::2]:2", // one /64
		"10.0.0.2:1", "[2001:db8:0:1::1]:1", "not an address"} // three more
	var keys []ClientKey
	for i, p := range peers {
		for j := range 10 { // 10 streams per peer
			k := ClientKey{Service: "s", Stream: uint64(100*i + j), Peer: p}
			keys = append(keys, k)
			r.Add(k, &lbpb.ClientStats{}, t0)
		}
	}
	for _, k := range keys {
		r.Add(k, &lbpb.ClientStats{NumCallsStarted: 1 << 40}, t0.Add(10*time.Second))
	}
	if _, _, addrs := r.Len(); addrs != 5 {
		t.Errorf("%d addresses, want 5", addrs)
	}
	// 5 addresses × 50 calls/s × 10 s.
	if got := r.Service("s").Offered; got != 2500 {
		t.Errorf("80 streams from 5 addresses counted for %d calls in 10 s, want 5 × 500 = 2500", got)
	}
	for _, k := range keys {
		r.Forget(k)
	}
	if _, clients, addrs := r.Len(); clients != 0 || addrs != 0 {
		t.Errorf("after every stream went: %d clients, %d addresses, want 0, 0", clients, addrs)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		s    *lbpb.ClientStats
		want bool
	}{
		{&lbpb.ClientStats{}, true},
		{&lbpb.ClientStats{NumCallsStarted: 3, NumCallsFinished: 3}, true},
		{&lbpb.ClientStats{NumCallsStarted: -1}, false},
		{&lbpb.ClientStats{NumCallsFinishedKnownReceived: -5}, false},
		{&lbpb.ClientStats{CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{NumCalls: -1}}}, false},
	}
	for i, tc := range tests {
		if got := Validate(tc.s); got != tc.want {
			t.Errorf("%d: Validate(%v) = %v, want %v", i, tc.s, got, tc.want)
		}
	}
	r := New(Config{})
	k := ClientKey{Service: "s", Stream: 1}
	if res := r.Add(k, &lbpb.ClientStats{NumCallsStarted: 5, NumCallsFinished: -1}, t0); res.Verdict != Invalid {
		t.Errorf("Add of a negative count: %v, want invalid", res.Verdict)
	}
	if c := r.Service("s"); c.Reports != 0 || c.Started != 0 {
		t.Errorf("an invalid report was counted: %+v", c)
	}
}

// TestSetMaxCallRate: a new bound applies to the reports that follow.
func TestSetMaxCallRate(t *testing.T) {
	r := New(Config{MaxCallRate: 1000, Burst: 20 * time.Second})
	r.SetMaxCallRate(10) // 200 calls saved up at most
	res := r.Add(ClientKey{Service: "s", Stream: 1}, &lbpb.ClientStats{NumCallsStarted: 1000}, t0)
	if res.Verdict != Clamped || res.Started != 200 {
		t.Errorf("first report of 1000 calls at 10/s: %v, %d started; want clamped to 200", res.Verdict, res.Started)
	}
	r.SetMaxCallRate(0) // no bound
	res = r.Add(ClientKey{Service: "s", Stream: 2}, &lbpb.ClientStats{NumCallsStarted: 1 << 40}, t0)
	if res.Verdict != Accepted || res.Started != 1<<40 {
		t.Errorf("without a bound: %v, %d started; want all accepted", res.Verdict, res.Started)
	}
}
