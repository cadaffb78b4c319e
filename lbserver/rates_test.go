package lbserver

import (
	"github.com/lookaside-lb/lookaside/internal/syncbuf"

	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// fakeClock is a clock that moves only when told. Safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestStreamRates drives the per-address buckets with a fake clock: each
// step advances the clock, then opens streams from an address; want is
// how many of them are let through.
func TestStreamRates(t *testing.T) {
	type step struct {
		advance time.Duration
		from    string
		streams int
		want    int
	}
	tests := []struct {
		name        string
		rate        float64
		burst       int
		max         int // addresses kept; default maxRateAddrs
		steps       []step
		wantTracked int // addresses with a bucket at the end
	}{
		{name: "burst then rate", rate: 10, burst: 5, steps: []step{
			{0, "10.0.0.1", 8, 5},
			{50 * time.Millisecond, "10.0.0.1", 1, 0}, // half a token
			{50 * time.Millisecond, "10.0.0.1", 3, 1},
			{time.Second, "10.0.0.1", 20, 5}, // refilled to the burst, not beyond
		}, wantTracked: 1},
		{name: "addresses apart", rate: 1, burst: 2, steps: []step{
			{0, "10.0.0.1", 3, 2},
			{0, "10.0.0.2", 3, 2},
			{0, "::ffff:10.0.0.1", 1, 0}, // IPv4-mapped is the same address
			{0, "2001:db8:1:2::1", 3, 2},
			{0, "2001:db8:1:2:ffff::9", 1, 0}, // the same /64
			{0, "2001:db8:1:3::1", 1, 1},      // another /64
			{0, "fe80::1%eth0", 2, 2},         // zones do not matter
			{0, "fe80::2%eth1", 1, 0},         // same /64 as fe80::1
			{0, "invalid", 10, 10},            // no IP (Unix socket): not limited
			{time.Second, "10.0.0.1", 2, 1},   // one token a second
			{500 * time.Millisecond, "10.0.0.1", 1, 0},
		}, wantTracked: 5},
		{name: "off", rate: 0, burst: 1, steps: []step{
			{0, "10.0.0.1", 1000, 1000},
		}, wantTracked: 0},
		{name: "refilled buckets are dropped", rate: 100, burst: 200, steps: []step{
			{0, "10.0.0.1", 300, 200},
			{0, "10.0.0.2", 1, 1},
			{time.Second, "10.0.0.3", 1, 1},
			// 10.0.0.1 was last seen 2 s ago: full again, dropped.
			{time.Second, "10.0.0.3", 1, 1},
		}, wantTracked: 1},
		{name: "least recently seen evicted", rate: 1, burst: 1, max: 2, steps: []step{
			{0, "10.0.0.1", 2, 1},
			{0, "10.0.0.2", 2, 1},
			{0, "10.0.0.1", 1, 0}, // 10.0.0.1 seen: 10.0.0.2 is the oldest now
			{0, "10.0.0.3", 1, 1}, // evicts 10.0.0.2
			{0, "10.0.0.1", 1, 0}, // kept
			{0, "10.0.0.2", 1, 1}, // evicted: starts again full, evicting 10.0.0.3
			{0, "10.0.0.1", 1, 0},
		}, wantTracked: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			cfg := DefaultConfig()
			cfg.MaxStreamRatePerIP, cfg.StreamBurstPerIP = tc.rate, tc.burst
			r := newStreamRates(cfg.Settings, clk.Now)
			if tc.max > 0 {
				r.max = tc.max
			}
			for i, st := range tc.steps {
				clk.advance(st.advance)
				a, _ := netip.ParseAddr(st.from)
				got := 0
				for range st.streams {
					if r.take(a) {
						got++
					}
				}
				if got != st.want {
					t.Errorf("step %d: %d of %d streams from %s let through, want %d", i, got, st.streams, st.from, st.want)
				}
			}
			if got := r.len(); got != tc.wantTracked {
				t.Errorf("%d addresses tracked, want %d", got, tc.wantTracked)
			}
		})
	}
}

// TestStreamRatesBounded: a million addresses leave at most maxRateAddrs
// buckets.
func TestStreamRatesBounded(t *testing.T) {
	clk := newFakeClock()
	r := newStreamRates(DefaultSettings(), clk.Now)
	for i := range 1 << 20 {
		r.take(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if got := r.len(); got != maxRateAddrs {
		t.Errorf("%d addresses tracked, want %d", got, maxRateAddrs)
	}
}

// TestStreamRateRefusesInTheTap: beyond its burst, an address's streams are
// refused by the tap with ResourceExhausted naming the limit, counted in
// Refused.StreamRatePerIP; a stream let through takes no second token in
// its handler; other addresses are not affected, and the address gets a
// stream again once its bucket refilled.
func TestStreamRateRefusesInTheTap(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.MaxStreamRatePerIP, cfg.StreamBurstPerIP = 2, 3
	s, addr := serveAt(t, cfg, func(s *Server) { s.now = clk.Now })
	c := dialFrom(t, addr, "127.0.0.1")
	for range 3 {
		openOK(t, c, "svc")
	}
	const msg = "your IP address opens streams faster than 2 a second (burst 3; limit max-stream-rate-per-ip)"
	openRefused(t, c, "svc", codes.ResourceExhausted, msg)
	// Another connection from the same address shares the bucket.
	openRefused(t, dialFrom(t, addr, "127.0.0.1"), "svc", codes.ResourceExhausted, msg)
	openOK(t, dialFrom(t, addr, "127.0.0.2"), "svc")
	if got := s.Stats().Refused; got != (LimitCounts{StreamRatePerIP: 2}) {
		t.Errorf("Stats().Refused = %+v, want StreamRatePerIP 2", got)
	}
	clk.advance(500 * time.Millisecond) // one token
	openOK(t, c, "svc")
	openRefused(t, c, "svc", codes.ResourceExhausted, msg)
	if got := s.Stats().StreamsStarted; got != 5 {
		t.Errorf("StreamsStarted = %d, want 5", got)
	}

	// The tap itself: the stream's context says the token was taken.
	other := peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort("10.9.9.9:5000"))})
	info := &tap.Info{FullMethodName: "/grpc.lb.v1.LoadBalancer/BalanceLoad"}
	ctx, err := s.tapStream(other, info)
	if err != nil || !rateTaken(ctx) {
		t.Errorf("tap: %v, rate taken %v; want the stream let through with its token taken", err, ctx != nil && rateTaken(ctx))
	}
}

// TestStreamRateWithoutTheTap: a Server registered on a grpc.Server
// without GRPCOptions takes the rate token in the handler.
func TestStreamRateWithoutTheTap(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.MaxStreamRatePerIP, cfg.StreamBurstPerIP = 1, 2
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.now = clk.Now
	gs := grpc.NewServer()
	s.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(lis)
	}()
	defer func() {
		s.Close()
		gs.Stop()
		<-done
	}()
	c := dialFrom(t, lis.Addr().String(), "127.0.0.1")
	openOK(t, c, "svc")
	openOK(t, c, "svc")
	openRefused(t, c, "svc", codes.ResourceExhausted, "limit max-stream-rate-per-ip")
	if got := s.Stats().Refused.StreamRatePerIP; got != 1 {
		t.Errorf("Refused.StreamRatePerIP = %d, want 1", got)
	}
	if got := s.Stats().StreamsActive; got != 2 {
		t.Errorf("StreamsActive = %d, want 2 (the refused stream gave its slot back)", got)
	}
}

// clientStatsMsg is a ClientStats message.
func clientStatsMsg(cs *lbpb.ClientStats) *lbpb.LoadBalanceRequest {
	return &lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: cs}}
}

// recvUntilEnd reads s until it ends and returns how it ended.
func recvUntilEnd(t *testing.T, s lbStream) error {
	t.Helper()
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
}

// TestIgnoredMessagesEndTheStream: a stream that sends more messages the
// balancer ignores than MaxIgnoredMessages ends with ResourceExhausted
// naming the limit, counted in FloodingStreamsCut and logged once; one
// ignored message fewer keeps it; another stream of the same client is not
// affected.
func TestIgnoredMessagesEndTheStream(t *testing.T) {
	const maxIgnored = 10
	tooOften := clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: 1, NumCallsFinished: 1})
	tests := []struct {
		name    string
		svc     string
		msgs    []*lbpb.LoadBalanceRequest // after the initial request
		wantEnd bool
		wantBad int64 // Stats.BadClientStats
	}{
		// With a 10 s interval, a stream may send three reports at once:
		// the fourth and later are too frequent.
		{"reports within the limit", "svc", repeat(tooOften, 3+maxIgnored), false, maxIgnored},
		{"reports beyond the limit", "svc", repeat(tooOften, 3+maxIgnored+1), true, maxIgnored + 1},
		{"negative counts", "svc", repeat(clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: -1}), maxIgnored+1), true, maxIgnored + 1},
		{"initial requests again", "svc", repeat(initial("svc"), maxIgnored+1), true, 0},
		{"empty messages", "svc", repeat(&lbpb.LoadBalanceRequest{}, maxIgnored+1), true, 0},
		{"unknown service, reports within the limit", "nope", repeat(tooOften, 3+maxIgnored), false, 0},
		{"unknown service, reports beyond the limit", "nope", repeat(tooOften, 3+maxIgnored+1), true, 0},
		{"unknown service, empty messages", "nope", repeat(&lbpb.LoadBalanceRequest{}, maxIgnored+1), true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(dirSrc{newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))), newFakeDir(true, "svc")})
			cfg.MaxIgnoredMessages = maxIgnored
			var logs syncbuf.Buffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s, c := startServer(t, cfg)
			honest := openOK(t, c, "svc")
			recvList(t, honest)
			st := openOK(t, c, tc.svc)
			recv(t, st) // the list or the fallback
			for _, m := range tc.msgs {
				if err := st.Send(m); err != nil {
					break // the stream ended: Recv tells how
				}
			}
			if !tc.wantEnd {
				// The stream is still served: a new list reaches it.
				waitUntil(t, "the messages to be handled", func() bool { return s.Stats().BadClientStats == tc.wantBad })
				if got := s.Stats().FloodingStreamsCut; got != 0 {
					t.Fatalf("FloodingStreamsCut = %d, want 0", got)
				}
				st.CloseSend()
				if err := recvUntilEnd(t, st); err != io.EOF {
					t.Fatalf("the stream ended with %v, want a clean end", err)
				}
				return
			}
			err := recvUntilEnd(t, st)
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "more than 10 of its messages within a minute were ignored") ||
				!strings.Contains(err.Error(), "limit max-ignored-messages") {
				t.Fatalf("the stream ended with %v; want ResourceExhausted naming max-ignored-messages", err)
			}
			if got := s.Stats(); got.FloodingStreamsCut != 1 || got.BadClientStats != tc.wantBad {
				t.Errorf("FloodingStreamsCut = %d, BadClientStats = %d; want 1, %d", got.FloodingStreamsCut, got.BadClientStats, tc.wantBad)
			}
			if n := strings.Count(logs.String(), "ending a stream that floods messages the balancer ignores"); n != 1 {
				t.Errorf("the cut was logged %d times, want 1:\n%s", n, logs.String())
			}
			// The honest stream goes on.
			if err := honest.Send(clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: 1})); err != nil {
				t.Fatal(err)
			}
			honest.CloseSend()
			if err := recvUntilEnd(t, honest); err != io.EOF {
				t.Errorf("the honest stream ended with %v, want a clean end", err)
			}
		})
	}
}

func repeat(m *lbpb.LoadBalanceRequest, n int) []*lbpb.LoadBalanceRequest {
	out := make([]*lbpb.LoadBalanceRequest, n)
	for i := range out {
		out[i] = m
	}
	return out
}

// TestIgnoredMessagesBucket: the ignored messages of a stream refill at
// MaxIgnoredMessages a minute, up to MaxIgnoredMessages; 0 is no limit.
func TestIgnoredMessagesBucket(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		steps []struct {
			advance time.Duration
			ignored int
			wantOK  int // of ignored, how many before the first refusal
		}
	}{
		{"burst", 60, []struct {
			advance time.Duration
			ignored int
			wantOK  int
		}{{0, 61, 60}}},
		{"refill one a second", 60, []struct {
			advance time.Duration
			ignored int
			wantOK  int
		}{{0, 60, 60}, {time.Second, 2, 1}, {10 * time.Second, 11, 10}, {time.Hour, 100, 60}}},
		{"off", 0, []struct {
			advance time.Duration
			ignored int
			wantOK  int
		}{{0, 10000, 10000}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			cfg := testConfig(newFakeSource())
			cfg.MaxIgnoredMessages = tc.max
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.now = clk.Now
			st := &streamState{srv: s, ignored: fullBucket(float64(tc.max), clk.Now())}
			for i, step := range tc.steps {
				clk.advance(step.advance)
				ok := 0
				for range step.ignored {
					if st.ignore() != nil {
						break
					}
					ok++
				}
				if ok != step.wantOK {
					t.Errorf("step %d: %d of %d ignored messages let through, want %d", i, ok, step.ignored, step.wantOK)
				}
			}
		})
	}
}

// TestStreamRatesTimeNeverGoesBack: takes that see the clock out of order
// (as goroutines that read it before waiting for the lock would) never
// refill a bucket twice for the same time.
func TestStreamRatesTimeNeverGoesBack(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	times := []time.Time{t0, t0.Add(time.Second), t0.Add(500 * time.Millisecond), t0.Add(1500 * time.Millisecond)}
	i := 0
	cfg := DefaultConfig()
	cfg.MaxStreamRatePerIP, cfg.StreamBurstPerIP = 1, 1
	r := newStreamRates(cfg.Settings, func() time.Time { i++; return times[i-1] })
	a := netip.MustParseAddr("192.0.2.1")
	var got []bool
	for range times {
		got = append(got, r.take(a))
	}
	// The burst, one refilled second later, then nothing: at 1.5 s only
	// half a token has refilled since the second take.
	if want := []bool{true, true, false, false}; !slices.Equal(got, want) {
		t.Errorf("takes at 0, 1, 0.5 and 1.5 s with 1/s and burst 1 = %v, want %v", got, want)
	}
}
