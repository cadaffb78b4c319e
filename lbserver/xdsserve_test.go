package lbserver

import (
	"context"
	"math"
	"net"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
