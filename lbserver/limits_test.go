package lbserver

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// serveAt runs a Server with cfg through Serve on a loopback listener and
// returns it and its address. The before functions run on the server
// before it serves.
func serveAt(t *testing.T, cfg Config, before ...func(*Server)) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.seed = func() uint64 { return 0 }
	for _, f := range before {
		f(s)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, s, ServeOptions{ShutdownTimeout: 5 * time.Second}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, lis.Addr().String()
}

// dialFrom opens a client connection (its own TCP connection) to addr from
// the loopback address from, with extra dial options.
func dialFrom(t *testing.T, addr, from string, opts ...grpc.DialOption) lbpb.LoadBalancerClient {
	t.Helper()
	local := &net.TCPAddr{IP: net.ParseIP(from)}
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local}
			return d.DialContext(ctx, "tcp", a)
		}),
	}, opts...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return lbpb.NewLoadBalancerClient(cc)
}

// openOK opens a stream for name and waits for its initial response.
func openOK(t *testing.T, c lbpb.LoadBalancerClient, name string) lbStream {
	t.Helper()
	return openOKFor(t, c, name, 10*time.Second)
}

// openOKFor is openOK for a stream that ends after d.
func openOKFor(t *testing.T, c lbpb.LoadBalancerClient, name string, d time.Duration) lbStream {
	t.Helper()
	s := openFor(t, c, name, d)
	if r := recv(t, s); r.GetInitialResponse() == nil {
		t.Fatalf("got %v, want the initial response", r)
	}
	return s
}

// openRefused opens a stream and wants it to end with code and a message
// containing msg.
func openRefused(t *testing.T, c lbpb.LoadBalancerClient, name string, code codes.Code, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.BalanceLoad(ctx)
	if err == nil {
		s.Send(initial(name)) // io.EOF when the stream ended already; Recv tells why
		_, err = s.Recv()
	}
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("stream ended with %v; want %v containing %q", err, code, msg)
	}
}

func TestStreamLimits(t *testing.T) {
	tests := []struct {
		name             string
		total, ip, conn  int
		clients          []string // source IP of each connection, one stream each until refused
		streamsPerClient int
		wantRefusedOn    int // index into clients of the connection whose last stream is refused
		wantMsg          string
		wantRefused      LimitCounts
	}{
		{name: "per connection", total: 10, ip: 10, conn: 2, clients: []string{"127.0.0.1"}, streamsPerClient: 3,
			wantMsg: "2 streams are open on your connection (limit max-streams-per-conn)", wantRefused: LimitCounts{StreamsPerConn: 1}},
		{name: "per IP", total: 10, ip: 3, conn: 2, clients: []string{"127.0.0.1", "127.0.0.1"}, streamsPerClient: 2, wantRefusedOn: 1,
			wantMsg: "3 streams are open from your IP address (limit max-streams-per-ip)", wantRefused: LimitCounts{StreamsPerIP: 1}},
		{name: "total", total: 3, ip: 2, conn: 2, clients: []string{"127.0.0.1", "127.0.0.2"}, streamsPerClient: 2, wantRefusedOn: 1,
			wantMsg: "3 streams are open on this balancer (limit max-streams)", wantRefused: LimitCounts{Streams: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
			cfg.MaxStreams, cfg.MaxStreamsPerIP, cfg.MaxStreamsPerConn = tc.total, tc.ip, tc.conn
			s, addr := serveAt(t, cfg)
			var clients []lbpb.LoadBalancerClient
			for _, from := range tc.clients {
				clients = append(clients, dialFrom(t, addr, from))
			}
			for i, c := range clients {
				for j := range tc.streamsPerClient {
					if i == tc.wantRefusedOn && j == tc.streamsPerClient-1 {
						openRefused(t, c, "svc", codes.ResourceExhausted, tc.wantMsg)
						continue
					}
					openOK(t, c, "svc")
				}
			}
			if got := s.Stats().Refused; got != tc.wantRefused {
				t.Errorf("Stats().Refused = %+v, want %+v", got, tc.wantRefused)
			}
			// Another IP still gets a stream unless the total is reached.
			if tc.name != "total" {
				openOK(t, dialFrom(t, addr, "127.0.0.3"), "svc")
			}
		})
	}
}

func TestStreamSlotsGivenBack(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.MaxStreams, cfg.MaxStreamsPerIP, cfg.MaxStreamsPerConn = 1, 1, 1
	s, addr := serveAt(t, cfg)
	c := dialFrom(t, addr, "127.0.0.1")
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(initial("svc")); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.GetInitialResponse() == nil {
		t.Fatalf("first stream: %v, %v", r, err)
	}
	cancel()
	waitUntil(t, "the cancelled stream to end", func() bool { return s.Stats().StreamsActive == 0 })
	openOK(t, c, "svc")
	// Refused streams take no slot: a silent one counts while it waits.
	openRefused(t, c, "svc", codes.ResourceExhausted, "limit max-streams-per-conn")
	if got := s.Stats().StreamsActive; got != 1 {
		t.Errorf("StreamsActive = %d, want 1", got)
	}
}

func TestConnLimits(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.MaxConns, cfg.MaxConnsPerIP = 2, 1
	s, addr := serveAt(t, cfg)
	openOK(t, dialFrom(t, addr, "127.0.0.1"), "svc")
	// A second connection from 127.0.0.1 is closed at accept: the client
	// sees Unavailable.
	openRefused(t, dialFrom(t, addr, "127.0.0.1"), "svc", codes.Unavailable, "")
	openOK(t, dialFrom(t, addr, "127.0.0.2"), "svc")
	openRefused(t, dialFrom(t, addr, "127.0.0.3"), "svc", codes.Unavailable, "")
	st := s.Stats()
	if st.Refused.ConnsPerIP < 1 || st.Refused.Conns < 1 || st.Refused.Streams+st.Refused.StreamsPerIP+st.Refused.StreamsPerConn != 0 {
		t.Errorf("Stats().Refused = %+v, want connections refused per IP and in total", st.Refused)
	}
	if st.ConnsOpen != 2 {
		t.Errorf("ConnsOpen = %d, want 2", st.ConnsOpen)
	}
}

func TestConnSlotsGivenBack(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.MaxConns, cfg.MaxConnsPerIP = 1, 1
	s, addr := serveAt(t, cfg)
	for i := range 3 {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		s2 := open(t, lbpb.NewLoadBalancerClient(cc), "svc")
		if r, err := s2.Recv(); err != nil || r.GetInitialResponse() == nil {
			t.Fatalf("connection %d: %v, %v", i, r, err)
		}
		cc.Close()
		waitUntil(t, "the connection to be given back", func() bool { return s.Stats().ConnsOpen == 0 })
	}
}

func TestLimitsValidated(t *testing.T) {
	tests := []struct {
		tweak func(*Config)
		want  string
	}{
		{func(c *Config) { c.MaxStreams = 0 }, "max streams 0"},
		{func(c *Config) { c.MaxStreamsPerIP = 0 }, "max streams per IP 0"},
		{func(c *Config) { c.MaxStreamsPerIP = c.MaxStreams + 1 }, "max streams per IP"},
		{func(c *Config) { c.MaxStreamsPerConn = 0 }, "max streams per connection 0"},
		{func(c *Config) { c.MaxStreamsPerConn = c.MaxStreamsPerIP + 1 }, "max streams per connection"},
		{func(c *Config) { c.MaxConns = -1 }, "max connections -1"},
		{func(c *Config) { c.MaxConnsPerIP = c.MaxConns + 1 }, "max connections per IP"},
		{func(c *Config) { c.SendTimeout = 0 }, "send timeout 0s"},
		{func(c *Config) { c.MaxRequestSize = 1000 }, "max request size 1000"},
		{func(c *Config) { c.MaxRequestSize = 5 << 20 }, "max request size 5242880"},
		{func(c *Config) { c.SendTimeout = time.Hour }, "send timeout 1h0m0s"},
		{func(c *Config) { c.MaxStreamRatePerIP = -1 }, "max stream rate per IP -1 is not in [0 (off), 1e+06]"},
		{func(c *Config) { c.MaxStreamRatePerIP = math.NaN() }, "max stream rate per IP NaN"},
		{func(c *Config) { c.MaxStreamRatePerIP = math.Inf(1) }, "max stream rate per IP +Inf"},
		{func(c *Config) { c.StreamBurstPerIP = 0 }, "stream burst per IP 0 is not in [1, 1048576]"},
		{func(c *Config) { c.MaxIgnoredMessages = -1 }, "max ignored messages -1 is not in [0 (off), 1048576]"},
	}
	for _, tc := range tests {
		cfg := testConfig(newFakeSource())
		tc.tweak(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New = %v, want an error containing %q", err, tc.want)
		}
	}
	if _, err := New(testConfig(newFakeSource())); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
	// 0 turns the rate limits off; the burst then does not matter.
	cfg := testConfig(newFakeSource())
	cfg.MaxStreamRatePerIP, cfg.StreamBurstPerIP, cfg.MaxIgnoredMessages = 0, 0, 0
	if _, err := New(cfg); err != nil {
		t.Errorf("rate limits off rejected: %v", err)
	}
}

// bigSnap is a service with n endpoints on port, so that its lists are
// large and each port makes a new list.
func bigSnap(service string, n int, port int) discovery.Snapshot {
	var eps []discovery.Endpoint
	for i := range n {
		eps = append(eps, ep(fmt.Sprintf("ep-%04d", i), fmt.Sprintf("10.%d.%d.1:%d", i/250, i%250, port)))
	}
	return snap(service, eps...)
}

// TestSlowReaderCut: a client that stops reading its lists is cut after
// SendTimeout, while another keeps getting every change. On the own
// transport, a SendTimeout at least its write timeout has the lists the
// client's flow control takes written by the handler (streamState.send),
// and the one it does not take still waits SendTimeout on a goroutine.
func TestSlowReaderCut(t *testing.T) {
	timeouts := []time.Duration{time.Second}
	if testConfig(newFakeSource()).Transport == TransportLookaside {
		timeouts = append(timeouts, ownWriteTimeout)
	}
	for _, timeout := range timeouts {
		t.Run(fmt.Sprint("send-timeout=", timeout), func(t *testing.T) {
			t.Parallel()
			testSlowReaderCut(t, timeout)
		})
	}
}

func testSlowReaderCut(t *testing.T, timeout time.Duration) {
	src := newFakeSource(bigSnap("big", 1000, 1000))
	cfg := testConfig(src)
	cfg.SendTimeout = timeout
	cfg.LoadReports = false
	var logs syncbuf.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s, addr := serveAt(t, cfg)

	// The slow client reads its initial response and then nothing. A
	// fixed window turns off grpc's window growth, so 64 KiB unread
	// block the stream.
	slow := dialFrom(t, addr, "127.0.0.2", grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	ss := openOKFor(t, slow, "big", timeout+10*time.Second)
	honest := openOKFor(t, dialFrom(t, addr, "127.0.0.1"), "big", timeout+10*time.Second)
	recvList(t, honest)
	for port := 1001; s.Stats().SlowReadersCut == 0; port++ {
		if port > 1200 {
			t.Fatal("the slow reader was never cut")
		}
		src.Push(bigSnap("big", 1000, port))
		// The honest reader keeps up, and gets every change in time.
		for {
			l := recvList(t, honest)
			if strings.HasSuffix(l[0], fmt.Sprintf(":%d", port)) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitUntil(t, "the slow stream's handler to return", func() bool { return s.Stats().StreamsActive == 1 })
	if !strings.Contains(logs.String(), "cutting a client that does not read its lists") {
		t.Errorf("no log line for the cut; logs:\n%s", logs.String())
	}
	// What the slow client finds once it reads: its lists, then the end.
	var err error
	for err == nil {
		_, err = ss.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "send-timeout") {
		t.Errorf("slow stream ended with %v, want ResourceExhausted naming send-timeout", err)
	}
}

func TestCanonicalNamesShareOneWatch(t *testing.T) {
	src := newFakeSource(snap("user-srv", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.LoadReports = false
	cfg.Services = map[string]ServiceSettings{"USER-SRV": {Policy: "random", RateLimit: 10}}
	cfg.Aliases = map[string]string{"Users": "USER-SRV"}
	s, c := startServer(t, cfg)
	base := "user-srv"
	var streams []lbStream
	for i := range 32 {
		// Bit k of i upper-cases the k-th letter: 32 distinct variants.
		v := []byte(base)
		k := 0
		for j := range v {
			if v[j] == '-' {
				continue
			}
			if i&(1<<k) != 0 {
				v[j] -= 'a' - 'A'
			}
			k++
		}
		streams = append(streams, openOK(t, c, string(v)+":50051"))
	}
	streams = append(streams, openOK(t, c, "USERS:443"))
	for _, st := range streams {
		if got := recvList(t, st); !cmpEqual(got, []string{"127.0.0.1:1"}) {
			t.Fatalf("list %v", got)
		}
	}
	watches, _ := src.counts("user-srv")
	stats := s.Stats()
	if watches != 1 || stats.ServicesWatched != 1 || stats.WatchesStarted != 1 {
		t.Errorf("32 case variants and an alias: %d watches of user-srv, ServicesWatched %d, WatchesStarted %d; want 1 each",
			watches, stats.ServicesWatched, stats.WatchesStarted)
	}
	if name, _, _ := s.choosePolicy(snap("user-srv")); name != "random" {
		t.Errorf("policy of user-srv = %q, want random, configured for USER-SRV", name)
	}
	if got := s.live().rateLimit("user-srv@x"); got != 10 {
		t.Errorf("rate limit of user-srv = %v, want the one configured for User-Srv", got)
	}
}

func TestCanonicalSettingsCollide(t *testing.T) {
	for _, tweak := range []func(*Config){
		func(c *Config) {
			c.Services = map[string]ServiceSettings{"a": {Policy: "round_robin"}, "A": {Policy: "random"}}
		},
		func(c *Config) { c.Aliases = map[string]string{"x": "a", "X": "b"} },
	} {
		cfg := testConfig(newFakeSource())
		tweak(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "case-insensitively") {
			t.Errorf("New = %v, want an error on names that differ in case only", err)
		}
	}
}

// fakeDir is a discovery.Directory driven by the test.
type fakeDir struct {
	mu      sync.Mutex
	ready   bool
	exists  map[string]bool
	changed chan struct{}
}

func newFakeDir(ready bool, services ...string) *fakeDir {
	d := &fakeDir{ready: ready, exists: map[string]bool{}, changed: make(chan struct{})}
	for _, s := range services {
		d.exists[s] = true
	}
	return d
}

func (d *fakeDir) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exists[service], d.ready, d.changed
}

// set marks the directory read, with service present or not.
func (d *fakeDir) set(service string, present bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ready = true
	d.exists[service] = present
	close(d.changed)
	d.changed = make(chan struct{})
}

// dirSrc is a source with a directory.
type dirSrc struct {
	*fakeSource
	*fakeDir
}

func TestUnknownServiceStartsNoWatch(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")), snap("later", ep("b", "127.0.0.2:1")))
	dir := newFakeDir(true, "svc")
	cfg := testConfig(dirSrc{src, dir})
	cfg.FirstListTimeout = time.Minute // a wait for a watch would show
	s, c := startServer(t, cfg)

	var unknown []lbStream
	for i := range 20 {
		st := openOK(t, c, fmt.Sprintf("random-%d:80", i))
		if r := recv(t, st); r.GetFallbackResponse() == nil {
			t.Fatalf("unknown service: got %v, want a fallback at once", r)
		}
		unknown = append(unknown, st)
	}
	later := openOK(t, c, "LATER:80")
	if r := recv(t, later); r.GetFallbackResponse() == nil {
		t.Fatalf("got %v, want a fallback", r)
	}
	if got := recvList(t, openOK(t, c, "svc:80")); !cmpEqual(got, []string{"127.0.0.1:1"}) {
		t.Fatalf("known service: list %v", got)
	}
	st := s.Stats()
	if st.WatchesStarted != 1 || st.UnknownServices != 21 {
		t.Fatalf("WatchesStarted %d, UnknownServices %d; want 1 and 21", st.WatchesStarted, st.UnknownServices)
	}
	// DNS asks too: no watch for a name the directory does not list.
	if snap, ok := s.Endpoints(t.Context(), "random-x"); !ok || len(snap.Endpoints) != 0 {
		t.Errorf("Endpoints(random-x) = %v, %v; want no endpoints, ok", snap, ok)
	}
	if got := s.Stats().WatchesStarted; got != 1 {
		t.Errorf("Endpoints of an unknown name started a watch: WatchesStarted %d", got)
	}
	// The service appears: its stream gets its list.
	dir.set("later", true)
	if got := recvList(t, later); !cmpEqual(got, []string{"127.0.0.2:1"}) {
		t.Fatalf("after the service appeared: list %v", got)
	}
	if w, _ := src.counts("later"); w != 1 {
		t.Errorf("watches of later = %d, want 1", w)
	}
	for i, st := range unknown {
		if w, _ := src.counts(fmt.Sprintf("random-%d", i)); w != 0 {
			t.Fatalf("random-%d was watched", i)
		}
		_ = st
	}
}

func TestDirectoryNotReady(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	dir := newFakeDir(false)
	cfg := testConfig(dirSrc{src, dir})
	cfg.FirstListTimeout = 200 * time.Millisecond
	s, c := startServer(t, cfg)
	// Streams behave as without a directory: watch, list.
	if got := recvList(t, openOK(t, c, "svc")); !cmpEqual(got, []string{"127.0.0.1:1"}) {
		t.Fatalf("list %v", got)
	}
	// DNS waits up to FirstListTimeout and starts no watch.
	start := time.Now()
	if _, ok := s.Endpoints(t.Context(), "other"); ok {
		t.Error("Endpoints(other) ok while the directory is not ready")
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("Endpoints returned after %v, want it to wait for the directory", d)
	}
	if w, _ := src.counts("other"); w != 0 {
		t.Errorf("Endpoints started a watch of other")
	}
}

func TestClientStringsLoggedQuotedAndThrottled(t *testing.T) {
	var logs syncbuf.Buffer
	cfg := testConfig(newFakeSource())
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	_, c := startServer(t, cfg)
	long := strings.Repeat("x", 60_000) // under MaxRequestSize, over MaxNameLength
	for range 50 {
		openRefused(t, c, long, codes.InvalidArgument, "longer than")
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) > 2 {
		t.Errorf("50 invalid requests in a second logged %d lines", len(lines))
	}
	for _, l := range lines {
		if len(l) > 400 {
			t.Errorf("log line of %d bytes: %.200s…", len(l), l)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func cmpEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

func TestTapRefusesBeforeTheHandler(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.MaxStreams, cfg.MaxStreamsPerIP, cfg.MaxStreamsPerConn = 2, 2, 1
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	from := netip.MustParseAddrPort("10.0.0.1:5000")
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(from)})
	info := &tap.Info{FullMethodName: "/grpc.lb.v1.LoadBalancer/BalanceLoad"}
	if _, err := s.tapStream(ctx, info); err != nil {
		t.Fatalf("tap refused a stream under the limits: %v", err)
	}
	if _, ok := s.slots.take(from); !ok {
		t.Fatal("no slot")
	}
	_, err = s.tapStream(ctx, info)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limit max-streams-per-conn") {
		t.Fatalf("tap at the per-connection limit: %v", err)
	}
	if _, err := s.tapStream(ctx, &tap.Info{FullMethodName: "/grpc.health.v1.Health/Check"}); err != nil {
		t.Fatalf("tap refused another method: %v", err)
	}
	other := peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort("10.0.0.1:5001"))})
	if _, err := s.tapStream(other, info); err != nil {
		t.Fatalf("tap refused another connection of the same IP: %v", err)
	}
	if got := s.Stats().Refused.StreamsPerConn; got != 1 {
		t.Errorf("Refused.StreamsPerConn = %d, want 1", got)
	}
	s.slots.give(from)
}

func TestHugeRequestRefusedUnread(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	s, c := startServer(t, cfg)
	// grpc ends the stream itself, without reading the message.
	openRefused(t, c, strings.Repeat("x", 1<<20), codes.ResourceExhausted, "received message larger than max (1048584 vs. 65536)")
	// ClientStats too.
	st := openOK(t, c, "svc")
	recvList(t, st)
	big := &lbpb.ClientStats{}
	for i := range 5000 { // about 100 KB
		big.CallsFinishedWithDrop = append(big.CallsFinishedWithDrop, &lbpb.ClientStatsPerToken{LoadBalanceToken: fmt.Sprintf("token-%d", i), NumCalls: 1})
	}
	st.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: big}})
	if _, err := st.Recv(); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("a ClientStats over the limit: %v", err)
	}
	if got := s.Stats().StreamsActive; got != 0 {
		waitUntil(t, "the streams to end", func() bool { return s.Stats().StreamsActive == 0 })
	}
}
