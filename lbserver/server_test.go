package lbserver

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a discovery.Source driven by the test: Push publishes to
// every watcher of a service.
type fakeSource struct {
	mu       sync.Mutex
	initial  map[string]discovery.Snapshot // published on Watch, if present
	watchers map[string][]chan discovery.Snapshot
	watches  map[string]int // Watch calls per service
	active   map[string]int // Watch calls running per service
}

func newFakeSource(initial ...discovery.Snapshot) *fakeSource {
	f := &fakeSource{initial: map[string]discovery.Snapshot{}, watchers: map[string][]chan discovery.Snapshot{},
		watches: map[string]int{}, active: map[string]int{}}
	for _, s := range initial {
		f.initial[s.Service] = s
	}
	return f
}

func (f *fakeSource) Watch(ctx context.Context, service string, publish func(discovery.Snapshot)) error {
	ch := make(chan discovery.Snapshot, 16)
	f.mu.Lock()
	f.watches[service]++
	f.active[service]++
	f.watchers[service] = append(f.watchers[service], ch)
	init, ok := f.initial[service]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.active[service]--
		f.mu.Unlock()
	}()
	if ok {
		publish(init)
	}
	for {
		select {
		case s := <-ch:
			publish(s)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *fakeSource) Push(s discovery.Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.watchers[s.Service] {
		ch <- s
	}
}

func (f *fakeSource) counts(service string) (watches, active int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watches[service], f.active[service]
}

func ep(id, addr string) discovery.Endpoint {
	return discovery.Endpoint{ID: id, Addr: netip.MustParseAddrPort(addr), Weight: 1}
}

func snap(service string, eps ...discovery.Endpoint) discovery.Snapshot {
	return discovery.Snapshot{Service: service, Endpoints: discovery.SortEndpoints(eps)}
}

// startServer runs a Server with cfg through Serve on a loopback listener
// (see serveAt) and returns it and a client connection to it.
func startServer(t *testing.T, cfg Config, before ...func(*Server)) (*Server, lbpb.LoadBalancerClient) {
	t.Helper()
	s, addr := serveAt(t, cfg, before...)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return s, lbpb.NewLoadBalancerClient(cc)
}

func testConfig(src discovery.Source) Config {
	cfg := DefaultConfig()
	cfg.Source = src
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Transport = testTransport
	return cfg
}

// testTransport is the transport the tests serve BalanceLoad with:
// LBSERVER_TEST_TRANSPORT (make test runs the package with both), or the
// default.
var testTransport = func() string {
	if t := os.Getenv("LBSERVER_TEST_TRANSPORT"); t != "" {
		return t
	}
	return TransportLookaside
}()

type lbStream = grpc.BidiStreamingClient[lbpb.LoadBalanceRequest, lbpb.LoadBalanceResponse]

// open opens a stream that ends after 10 s, and sends the initial
// request for name unless it is empty.
func open(t *testing.T, c lbpb.LoadBalancerClient, name string) lbStream {
	t.Helper()
	return openFor(t, c, name, 10*time.Second)
}

// openFor is open for a stream that ends after d.
func openFor(t *testing.T, c lbpb.LoadBalancerClient, name string, d time.Duration) lbStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	s, err := c.BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if name != "" {
		// io.EOF means the server already ended the stream; Recv tells why.
		if err := s.Send(initial(name)); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	return s
}

func initial(name string) *lbpb.LoadBalanceRequest {
	return &lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
		InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: name}}}
}

func recv(t *testing.T, s lbStream) *lbpb.LoadBalanceResponse {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return r
}

// addrs renders a server list as "ip:port" strings ("drop:<token>" for drops).
func addrs(l *lbpb.ServerList) []string {
	var out []string
	for _, s := range l.GetServers() {
		if s.Drop {
			out = append(out, "drop:"+s.LoadBalanceToken)
			continue
		}
		ip, _ := netip.AddrFromSlice(s.IpAddress)
		out = append(out, netip.AddrPortFrom(ip, uint16(s.Port)).String())
	}
	return out
}

func recvList(t *testing.T, s lbStream) []string {
	t.Helper()
	r := recv(t, s)
	if r.GetServerList() == nil {
		t.Fatalf("got %v, want a server list", r)
	}
	return addrs(r.GetServerList())
}

func TestInitialResponseThenList(t *testing.T) {
	src := newFakeSource(snap("user-srv", ep("b", "127.0.0.2:50051"), ep("a", "127.0.0.1:50051"), ep("c", "[::1]:50052")))
	cfg := testConfig(src)
	cfg.ClientStatsInterval = 3 * time.Second
	_, c := startServer(t, cfg)
	s := open(t, c, "user-srv:50051")

	r := recv(t, s)
	if got := r.GetInitialResponse().GetClientStatsReportInterval().AsDuration(); got != 3*time.Second {
		t.Fatalf("initial response %v: interval %v, want 3s", r, got)
	}
	r = recv(t, s)
	list := r.GetServerList()
	want := []string{"127.0.0.1:50051", "127.0.0.2:50051", "[::1]:50052"}
	if diff := cmp.Diff(want, addrs(list)); diff != "" {
		t.Fatalf("list (-want +got):\n%s", diff)
	}
	if got := len(list.Servers[0].IpAddress); got != 4 {
		t.Errorf("IPv4 entry has %d address bytes, want 4", got)
	}
	if got := len(list.Servers[2].IpAddress); got != 16 {
		t.Errorf("IPv6 entry has %d address bytes, want 16", got)
	}
	if got, want := list.Servers[0].LoadBalanceToken, lbtoken.ForID("a"); got != want {
		t.Errorf("token %q, want %q", got, want)
	}
}

func TestListUpdates(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")))
	srv, c := startServer(t, testConfig(src))
	s := open(t, c, "svc")
	recv(t, s) // initial response
	if diff := cmp.Diff([]string{"127.0.0.1:1", "127.0.0.1:2"}, recvList(t, s)); diff != "" {
		t.Fatalf("first list (-want +got):\n%s", diff)
	}
	// The same endpoints under a new index must not produce a message; the
	// next message is the list for the real change that follows.
	same := snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2"))
	same.Index = 7
	src.Push(same)
	src.Push(snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2"), ep("c", "127.0.0.1:3")))
	if diff := cmp.Diff([]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}, recvList(t, s)); diff != "" {
		t.Fatalf("after join (-want +got):\n%s", diff)
	}
	// The first entry leaves: the list starts at the next by ID.
	src.Push(snap("svc", ep("b", "127.0.0.1:2"), ep("c", "127.0.0.1:3")))
	if diff := cmp.Diff([]string{"127.0.0.1:2", "127.0.0.1:3"}, recvList(t, s)); diff != "" {
		t.Fatalf("after leave (-want +got):\n%s", diff)
	}
	// A list is counted once its send returned, which may be just after
	// the client has it.
	waitUntil(t, "ListsSent = 3", func() bool { return srv.Stats().ListsSent == 3 })
	time.Sleep(50 * time.Millisecond)
	if got := srv.Stats().ListsSent; got != 3 {
		t.Errorf("ListsSent = %d, want 3", got)
	}
}

func TestFallback(t *testing.T) {
	t.Run("no instances, then some", func(t *testing.T) {
		src := newFakeSource(snap("svc"))
		srv, c := startServer(t, testConfig(src))
		s := open(t, c, "svc:80")
		recv(t, s)
		if r := recv(t, s); r.GetFallbackResponse() == nil {
			t.Fatalf("got %v, want fallback", r)
		}
		src.Push(snap("svc", ep("a", "127.0.0.1:1")))
		if diff := cmp.Diff([]string{"127.0.0.1:1"}, recvList(t, s)); diff != "" {
			t.Fatalf("list (-want +got):\n%s", diff)
		}
		// Gone again: fallback again, once.
		src.Push(snap("svc"))
		if r := recv(t, s); r.GetFallbackResponse() == nil {
			t.Fatalf("got %v, want fallback", r)
		}
		src.Push(snap("svc")) // still none: nothing is sent
		src.Push(snap("svc", ep("b", "127.0.0.1:2")))
		if diff := cmp.Diff([]string{"127.0.0.1:2"}, recvList(t, s)); diff != "" {
			t.Fatalf("list (-want +got):\n%s", diff)
		}
		if got := srv.Stats().FallbacksSent; got != 2 {
			t.Errorf("FallbacksSent = %d, want 2", got)
		}
	})
	t.Run("source never answers", func(t *testing.T) {
		src := newFakeSource()
		cfg := testConfig(src)
		cfg.FirstListTimeout = 100 * time.Millisecond
		_, c := startServer(t, cfg)
		s := open(t, c, "unknown:80")
		start := time.Now()
		if r := recv(t, s); r.GetInitialResponse() == nil {
			t.Fatalf("got %v, want initial response", r)
		}
		if r := recv(t, s); r.GetFallbackResponse() == nil {
			t.Fatalf("got %v, want fallback", r)
		}
		if waited := time.Since(start); waited < 100*time.Millisecond {
			t.Errorf("fallback after %v, before the first list timeout", waited)
		}
		src.Push(snap("unknown", ep("a", "127.0.0.1:1")))
		if diff := cmp.Diff([]string{"127.0.0.1:1"}, recvList(t, s)); diff != "" {
			t.Fatalf("list (-want +got):\n%s", diff)
		}
	})
}

func TestInvalidRequests(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.InitialRequestTimeout = 200 * time.Millisecond
	srv, c := startServer(t, cfg)
	stats := &lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: &lbpb.ClientStats{}}}
	tests := []struct {
		name string
		send []*lbpb.LoadBalanceRequest
		code codes.Code
		msg  string
	}{
		{"stats first", []*lbpb.LoadBalanceRequest{stats}, codes.InvalidArgument, "initial_request"},
		{"empty message", []*lbpb.LoadBalanceRequest{{}}, codes.InvalidArgument, "initial_request"},
		{"empty name", []*lbpb.LoadBalanceRequest{initial("")}, codes.InvalidArgument, "empty"},
		{"long name", []*lbpb.LoadBalanceRequest{initial(strings.Repeat("x", 300))}, codes.InvalidArgument, "longer"},
		{"bad characters", []*lbpb.LoadBalanceRequest{initial("svc/../etc")}, codes.InvalidArgument, "contains"},
		{"silent", nil, codes.DeadlineExceeded, "no initial request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, c, "")
			for _, m := range tc.send {
				if err := s.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			_, err := s.Recv()
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Recv error %v, want %v containing %q", err, tc.code, tc.msg)
			}
		})
	}
	st := srv.Stats()
	if st.InvalidRequests != 5 || st.InitialTimeouts != 1 {
		t.Errorf("stats %+v: want 5 invalid requests and 1 initial timeout", st)
	}
	// The server keeps serving everyone else.
	s := open(t, c, "svc")
	recv(t, s)
	if diff := cmp.Diff([]string{"127.0.0.1:1"}, recvList(t, s)); diff != "" {
		t.Fatalf("good stream's list (-want +got):\n%s", diff)
	}
}

func TestClientStats(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	srv, c := startServer(t, testConfig(src))
	s := open(t, c, "svc:1")
	recv(t, s)
	recv(t, s)
	send := func(cs *lbpb.ClientStats) {
		if err := s.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: cs}}); err != nil {
			t.Fatal(err)
		}
	}
	send(&lbpb.ClientStats{NumCallsStarted: 5, NumCallsFinished: 4, NumCallsFinishedKnownReceived: 4})
	send(&lbpb.ClientStats{NumCallsStarted: -5})
	send(&lbpb.ClientStats{NumCallsStarted: 1, CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{LoadBalanceToken: "drop-x", NumCalls: 1}}})
	deadline := time.Now().Add(5 * time.Second)
	for srv.ClientStats().Service("svc").Reports < 2 || srv.Stats().BadClientStats < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("client stats not counted: %+v, %+v", srv.ClientStats().Service("svc"), srv.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := srv.ClientStats().Service("svc")
	if got.Started != 6 || got.KnownReceived != 4 || got.Dropped[clientstats.OtherDropToken] != 1 {
		t.Errorf("service counters %+v", got)
	}
}

func TestWatcherSharedAndStopped(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.WatchLinger = 50 * time.Millisecond
	_, c := startServer(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	var streams []lbStream
	for range 3 {
		s, err := c.BalanceLoad(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(initial("svc:1")); err != nil {
			t.Fatal(err)
		}
		recv(t, s)
		recv(t, s)
		streams = append(streams, s)
	}
	if w, a := src.counts("svc"); w != 1 || a != 1 {
		t.Fatalf("3 streams: %d watches (%d active), want 1", w, a)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, a := src.counts("svc"); a == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("watch still running after the last stream left and the linger passed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A new stream starts a new watch.
	s := open(t, c, "svc")
	recv(t, s)
	recv(t, s)
	if w, _ := src.counts("svc"); w != 2 {
		t.Fatalf("watches = %d, want 2", w)
	}
}

func TestCloseEndsStreams(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	srv, c := startServer(t, testConfig(src))
	s := open(t, c, "svc")
	recv(t, s)
	recv(t, s)
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv after Close: %v, want io.EOF (a clean end)", err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, a := src.counts("svc"); a != 0 {
		t.Fatal("watch still running after Close")
	}
	// New streams are refused.
	s = open(t, c, "svc")
	if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream after Close: %v, want Unavailable", err)
	}
}

func TestConfigValidation(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Policy = "nope"
	cfg.MaxNameLength = 0
	cfg.InitialRequestTimeout = 0
	_, err := New(cfg)
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"no discovery source", "unknown policy", "max name length", "initial request timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestMaxStreamAge: a stream ends cleanly after about MaxStreamAge, and the
// client can open the next one at once.
func TestMaxStreamAge(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.MaxStreamAge = 10 * time.Second
	srv, c := startServer(t, cfg, func(s *Server) {
		s.cfg.MaxStreamAge = 200 * time.Millisecond // below the configurable minimum, to keep the test short
	})
	s := open(t, c, "svc")
	recv(t, s)
	recv(t, s)
	start := time.Now()
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv at max age: %v, want io.EOF", err)
	}
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Errorf("stream ended after %v, before its age of 200ms ± 10%%", took)
	}
	if got := srv.Stats().StreamsExpired; got != 1 {
		t.Errorf("StreamsExpired = %d, want 1", got)
	}
	s = open(t, c, "svc")
	recv(t, s)
	if diff := cmp.Diff([]string{"127.0.0.1:1"}, recvList(t, s)); diff != "" {
		t.Fatalf("next stream's list (-want +got):\n%s", diff)
	}
}

// TestMaxServices: past the bound, a new service displaces one that only
// lingers; with none to displace, its stream ends with ResourceExhausted
// and the streams already open keep their lists.
func TestMaxServices(t *testing.T) {
	src := newFakeSource(snap("a", ep("a1", "127.0.0.1:1")), snap("b", ep("b1", "127.0.0.1:2")), snap("c", ep("c1", "127.0.0.1:3")))
	cfg := testConfig(src)
	cfg.MaxServices = 2
	_, c := startServer(t, cfg)
	sa := open(t, c, "a")
	recv(t, sa)
	recvList(t, sa)
	ctx, cancel := context.WithCancel(context.Background())
	sb, err := c.BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Send(initial("b")); err != nil {
		t.Fatal(err)
	}
	recv(t, sb)
	recvList(t, sb)

	sc := open(t, c, "c")
	if _, err := sc.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third service with two in use: %v, want ResourceExhausted", err)
	}
	cancel() // b's stream ends; b lingers and can be displaced
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, active := src.counts("b"); active == 0 {
			t.Fatal("b stopped watching before it was displaced; the linger is a minute")
		}
		sc = open(t, c, "c")
		r, err := sc.Recv()
		if err == nil {
			if r.GetInitialResponse() == nil {
				t.Fatalf("got %v, want the initial response", r)
			}
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("c after b's stream ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if diff := cmp.Diff([]string{"127.0.0.1:3"}, recvList(t, sc)); diff != "" {
		t.Fatalf("c's list (-want +got):\n%s", diff)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, active := src.counts("b"); active == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b is still watched after it was displaced")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
