package lbserver

import (
	"context"
	"math"
	"net"
	"reflect"
	"slices"
	"testing"
	"time"

	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/xds"
	"github.com/lookaside-lb/lookaside/xds/xdstest"
)

// xdsHealthClient dials xds:///target with a bootstrap naming the balancer
// at addr.
func xdsHealthClient(t *testing.T, addr, target string) (healthpb.HealthClient, func()) {
	t.Helper()
	cc := xdstest.Dial(t, xds.BootstrapOptions{Server: addr}, target)
	return healthpb.NewHealthClient(cc), func() { cc.Close() }
}

// spreadCalls makes n calls and counts them by backend address.
func spreadCalls(t *testing.T, c healthpb.HealthClient, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var p peer.Peer
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cancel()
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		out[p.Addr.String()]++
	}
	return out
}

func TestServeXDS(t *testing.T) {
	bs := xdstest.HealthBackends(t, 3)
	var eps []discovery.Endpoint
	for i, a := range bs {
		e := ep(string(rune('a'+i)), a.String())
		e.Weight = i + 1
		eps = append(eps, e)
	}
	src := newFakeSource(snap("svc", eps...))
	cfg := testConfig(src)
	cfg.ClientStatsInterval = time.Second // LRS reports every second
	cfg.Services = map[string]ServiceSettings{"svc": {Policy: "weighted_round_robin"}}
	s, addr := serveAt(t, cfg)

	c, closeClient := xdsHealthClient(t, addr, "SVC:50051")
	defer closeClient()
	// Warm up: every backend's connection is ready.
	deadline := time.Now().Add(10 * time.Second)
	for len(spreadCalls(t, c, 30)) < len(bs) {
		if time.Now().After(deadline) {
			t.Fatal("not every backend gets calls after 10 s")
		}
	}
	// grpc-go picks localities at random by weight: over 10,000 calls a
	// share's standard deviation is at most 0.5 point.
	const calls = 10000
	base := s.ClientStats().Service("svc").Started
	got := spreadCalls(t, c, calls)
	for i, a := range bs {
		share, want := float64(got[a.String()])/calls, float64(i+1)/6
		if math.Abs(share-want) > 0.02 {
			t.Errorf("backend %d (weight %d): share %.3f, want %.3f ± 0.02; spread %v", i, i+1, share, want, got)
		}
	}
	// The LRS reports reach the client stats of the service.
	deadline = time.Now().Add(10 * time.Second)
	for s.ClientStats().Service("svc").Started < base+calls {
		if time.Now().After(deadline) {
			t.Fatalf("client stats %+v after 10 s, want %d calls started", s.ClientStats().Service("svc"), calls)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := s.ClientStats().Service("svc"); st.Finished < calls || st.KnownReceived < calls {
		t.Errorf("client stats %+v: want %d finished and known received", st, calls)
	}
	if n := s.Stats().XDSNACKs; n["listener"]+n["route"]+n["cluster"]+n["endpoint"] != 0 {
		t.Errorf("NACKs %v, want none", n)
	}
}

func TestServeXDSDisabled(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.XDS = false
	_, addr := serveAt(t, cfg)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources")
	if err == nil {
		err = st.RecvMsg(new(struct{}))
	}
	if err == nil || status.Code(err) != codes.Unimplemented {
		t.Errorf("ADS with XDS off: %v, want Unimplemented", err)
	}
}

func TestServeXDSShutdownEndsStreams(t *testing.T) {
	bs := xdstest.HealthBackends(t, 1)
	src := newFakeSource(snap("svc", ep("a", bs[0].String())))
	s, err := New(testConfig(src))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, s, ServeOptions{ShutdownTimeout: 10 * time.Second}) }()
	c, closeClient := xdsHealthClient(t, lis.Addr().String(), "svc")
	defer closeClient()
	spreadCalls(t, c, 5) // the ADS and LRS streams are open
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("shutdown took %v with xDS streams open, want them ended at once", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestClientStatsOfLoad(t *testing.T) {
	got := clientStatsOf(xds.ClusterLoad{Cluster: "svc", Issued: 100, Succeeded: 80, Errored: 5, InProgress: 15,
		Dropped: map[string]uint64{"drop-ratelimit": 30, "drop-overload": 10}, TotalDropped: 40})
	want := &lbpb.ClientStats{NumCallsStarted: 140, NumCallsFinished: 125, NumCallsFinishedKnownReceived: 85,
		CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{LoadBalanceToken: "drop-overload", NumCalls: 10}, {LoadBalanceToken: "drop-ratelimit", NumCalls: 30}}}
	if !proto.Equal(got, want) {
		t.Errorf("clientStatsOf = %v, want %v", got, want)
	}
	huge := clientStatsOf(xds.ClusterLoad{Issued: math.MaxUint64, Succeeded: math.MaxUint64, Errored: 1, TotalDropped: 1})
	if huge.NumCallsStarted != math.MaxInt64 || huge.NumCallsFinished != math.MaxInt64 {
		t.Errorf("saturated counts: %v", huge)
	}
}

// TestXDSLoadsByService: LRS loads count for the watched service their
// cluster's name maps to; clusters of two names of one service add up
// into one report; a name that maps to no watched service counts for
// nothing.
func TestXDSLoadsByService(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.Aliases = map[string]string{"users": "svc"}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	svc, err := s.reg.acquire("svc")
	if err != nil {
		t.Fatal(err)
	}
	defer s.reg.release(svc)
	l := &xdsLoads{s: s, keys: map[uint64]map[clientstats.ClientKey]bool{}}
	got := l.byService([]xds.ClusterLoad{
		{Cluster: "users", Issued: 10, Succeeded: 7, Errored: 1, InProgress: 2, Dropped: map[string]uint64{"drop-overload": 3}, TotalDropped: 3},
		{Cluster: "SVC:443", Issued: 5, Succeeded: 5, Dropped: map[string]uint64{"drop-overload": 1, "drop-ratelimit": 2}, TotalDropped: 3},
		{Cluster: "orders", Issued: 100},
		{Cluster: "bad name/", Issued: 100},
	})
	want := map[string]xds.ClusterLoad{"svc": {Cluster: "users", Issued: 15, Succeeded: 12, Errored: 1, InProgress: 2,
		Dropped: map[string]uint64{"drop-overload": 4, "drop-ratelimit": 2}, TotalDropped: 6}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("byService = %+v, want %+v", got, want)
	}
}

// TestXDSServiceAppears: an xDS client that asked for a service before it
// existed gets it once the directory lists it, on the same stream.
func TestXDSServiceAppears(t *testing.T) {
	bs := xdstest.HealthBackends(t, 1)
	src := newFakeSource(snap("later", ep("a", bs[0].String())))
	dir := newFakeDir(true, "svc")
	cfg := testConfig(dirSrc{src, dir})
	_, addr := serveAt(t, cfg)
	c, closeClient := xdsHealthClient(t, addr, "later")
	defer closeClient()
	called := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		called <- err
	}()
	time.Sleep(500 * time.Millisecond) // the client subscribed, and was refused
	if w, _ := src.counts("later"); w != 0 {
		t.Fatalf("%d watches of a service the directory does not list", w)
	}
	start := time.Now()
	dir.set("later", true)
	if err := <-called; err != nil {
		t.Fatalf("call after the service appeared: %v", err)
	}
	t.Logf("call answered %v after the service appeared", time.Since(start).Round(time.Millisecond))
}

// TestXDSStreamLimits: ADS streams count against the stream limits.
func TestXDSStreamLimits(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.MaxStreamsPerIP, cfg.MaxStreamsPerConn = 1, 1
	s, addr := serveAt(t, cfg)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ads := discoverypb.NewAggregatedDiscoveryServiceClient(cc)
	first, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Send(&discoverypb.DiscoveryRequest{TypeUrl: xds.ListenerType, ResourceNames: []string{"svc"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil {
		t.Fatalf("first stream: %v", err)
	}
	second, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := second.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second stream from the IP over max streams per IP 1: %v, want ResourceExhausted", err)
	}
	if r := s.Stats().Refused; r.StreamsPerIP+r.StreamsPerConn != 1 {
		t.Errorf("refused %+v, want 1 stream per IP or per connection", r)
	}
}

// adsReader receives an ADS stream's responses on a goroutine of its
// own, so that a test can wait for one within a bound.
type adsReader struct {
	t    *testing.T
	s    discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	resp chan *discoverypb.DiscoveryResponse
}

func readADS(t *testing.T, s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient) *adsReader {
	r := &adsReader{t: t, s: s, resp: make(chan *discoverypb.DiscoveryResponse, 16)}
	go func() {
		defer close(r.resp)
		for {
			m, err := s.Recv()
			if err != nil {
				return
			}
			r.resp <- m
		}
	}()
	return r
}

// next returns the next response within 5 s, ACKing it.
func (r *adsReader) next() *discoverypb.DiscoveryResponse {
	r.t.Helper()
	select {
	case m, ok := <-r.resp:
		if !ok {
			r.t.Fatal("ADS stream ended")
		}
		if err := r.s.Send(&discoverypb.DiscoveryRequest{TypeUrl: m.TypeUrl, VersionInfo: m.VersionInfo,
			ResponseNonce: m.Nonce, ResourceNames: []string{"users"}}); err != nil {
			r.t.Fatal(err)
		}
		return m
	case <-time.After(5 * time.Second):
		r.t.Fatal("no ADS response within 5 s")
		return nil
	}
}

// nextCLA returns the next response that holds a ClusterLoadAssignment
// (the first may come before the service's first plan, without one).
func (r *adsReader) nextCLA() *discoverypb.DiscoveryResponse {
	r.t.Helper()
	for {
		if m := r.next(); len(m.Resources) > 0 {
			return m
		}
	}
}

// claOf returns the cluster name and endpoint addresses of an EDS
// response's only resource.
func claOf(t *testing.T, m *discoverypb.DiscoveryResponse) (string, []string) {
	t.Helper()
	if m.TypeUrl != xds.EndpointType || len(m.Resources) != 1 {
		t.Fatalf("response %v: want one ClusterLoadAssignment", m)
	}
	var cla endpointpb.ClusterLoadAssignment
	if err := m.Resources[0].UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	return cla.ClusterName, xdstest.Addrs(&cla)
}

// TestXDSAliasReloadMoves: a reload that maps an alias to another service
// moves the xDS subscriptions to that name: the client's assignment for
// the name it asked for (and named after it) lists the new service's
// endpoints under a new version, and the old service's watch is released. A stream whose name
// still maps to its service is sent nothing.
func TestXDSAliasReloadMoves(t *testing.T) {
	src := newFakeSource(snap("user-srv", ep("u", "127.0.0.1:1")), snap("orders", ep("o", "127.0.0.2:2")),
		snap("plain", ep("p", "127.0.0.3:3")))
	cfg := testConfig(src)
	cfg.WatchLinger = 0
	cfg.Aliases = map[string]string{"users": "user-srv"}
	s, addr := serveAt(t, cfg)

	users := readADS(t, xdstest.RawADS(t, addr))
	if err := users.s.Send(&discoverypb.DiscoveryRequest{TypeUrl: xds.EndpointType, ResourceNames: []string{"users"}}); err != nil {
		t.Fatal(err)
	}
	first := users.nextCLA()
	if name, addrs := claOf(t, first); name != "users" || !slices.Equal(addrs, []string{"127.0.0.1:1"}) {
		t.Fatalf("assignment for users before the reload: %s %v, want user-srv's endpoints named users", name, addrs)
	}
	plain := xdstest.RawADS(t, addr)
	if err := plain.Send(&discoverypb.DiscoveryRequest{TypeUrl: xds.EndpointType, ResourceNames: []string{"plain"}}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := plain.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := plain.Send(&discoverypb.DiscoveryRequest{TypeUrl: m.TypeUrl, VersionInfo: m.VersionInfo, ResponseNonce: m.Nonce, ResourceNames: []string{"plain"}}); err != nil {
			t.Fatal(err)
		}
		if len(m.Resources) > 0 {
			break
		}
	}
	plainR := readADS(t, plain)
	if _, active := src.counts("user-srv"); active != 1 {
		t.Fatalf("user-srv: %d watches active, want 1", active)
	}

	set := s.Settings()
	set.Aliases = map[string]string{"users": "orders"}
	start := time.Now()
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	moved := users.nextCLA()
	if name, addrs := claOf(t, moved); name != "users" || !slices.Equal(addrs, []string{"127.0.0.2:2"}) {
		t.Fatalf("assignment for users after the reload: %s %v, want orders' endpoints named users", name, addrs)
	}
	if a, b := first.VersionInfo, moved.VersionInfo; a == b {
		t.Errorf("version %s after the move, the same as before", b)
	}
	t.Logf("moved %v after the reload", time.Since(start).Round(time.Millisecond))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, active := src.counts("user-srv"); active == 0 && !s.reg.has("user-srv") && s.reg.has("orders") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("user-srv still watched after the move (watched %v, orders %v)", s.reg.has("user-srv"), s.reg.has("orders"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case m := <-plainR.resp:
		t.Errorf("a stream whose name maps to the same service was sent %v", m)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestXDSReloadRetriesRefused: a name refused as unknown is subscribed to
// again after a reload maps it to a service that exists.
func TestXDSReloadRetriesRefused(t *testing.T) {
	src := newFakeSource(snap("orders", ep("o", "127.0.0.2:2")))
	cfg := testConfig(dirSrc{src, newFakeDir(true, "orders")})
	s, addr := serveAt(t, cfg)
	users := readADS(t, xdstest.RawADS(t, addr))
	if err := users.s.Send(&discoverypb.DiscoveryRequest{TypeUrl: xds.EndpointType, ResourceNames: []string{"users"}}); err != nil {
		t.Fatal(err)
	}
	// The EDS response leaves out the unknown name.
	if m := users.next(); len(m.Resources) != 0 {
		t.Fatalf("unknown name answered with %v", m.Resources)
	}
	set := s.Settings()
	set.Aliases = map[string]string{"users": "orders"}
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	if name, addrs := claOf(t, users.nextCLA()); name != "users" || !slices.Equal(addrs, []string{"127.0.0.2:2"}) {
		t.Fatalf("assignment for users after the reload: %s %v, want orders' endpoints named users", name, addrs)
	}
}

// TestXDSAliasReloadMovesClient: a grpc-go xDS client of xds:///users
// calls the new service's backends after a reload maps users to it, on
// the same ADS stream, and no call fails meanwhile.
func TestXDSAliasReloadMovesClient(t *testing.T) {
	bs := xdstest.HealthBackends(t, 2)
	src := newFakeSource(snap("user-srv", ep("u", bs[0].String())), snap("orders", ep("o", bs[1].String())))
	cfg := testConfig(src)
	cfg.WatchLinger = 0
	cfg.Aliases = map[string]string{"users": "user-srv"}
	s, addr := serveAt(t, cfg)
	c, closeClient := xdsHealthClient(t, addr, "users")
	defer closeClient()
	if got := spreadCalls(t, c, 5); got[bs[0].String()] != 5 {
		t.Fatalf("calls before the reload: %v, want all to %v", got, bs[0])
	}
	set := s.Settings()
	set.Aliases = map[string]string{"users": "orders"}
	start := time.Now()
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	// The cluster is named after the name the client dials: the move
	// changes its endpoints, as a Consul change would, and no call fails.
	failed := 0
	for deadline := time.Now().Add(10 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var p peer.Peer
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cancel()
		if err == nil && p.Addr.String() == bs[1].String() {
			break
		}
		if err != nil {
			t.Errorf("call during the move: %v", err)
			failed++
		}
		if time.Now().After(deadline) {
			t.Fatal("calls still go to user-srv 10 s after the reload")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("first call to orders %v after the reload; %d calls failed meanwhile", time.Since(start).Round(time.Millisecond), failed)
	if got := spreadCalls(t, c, 5); got[bs[1].String()] != 5 {
		t.Errorf("calls after the move: %v, want all to %v", got, bs[1])
	}
	if n := s.Stats().XDSNACKs; n["listener"]+n["route"]+n["cluster"]+n["endpoint"] != 0 {
		t.Errorf("NACKs %v, want none", n)
	}
}
