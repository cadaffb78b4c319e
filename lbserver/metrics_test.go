package lbserver_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/static"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/metrics"
)

// lateDirectory is a static source whose directory is read only when
// read is called, as a Consul source's before its first catalog read.
type lateDirectory struct {
	*static.Source
	mu      sync.Mutex
	ready   bool          // guarded by mu
	changed chan struct{} // guarded by mu
}

func (d *lateDirectory) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ready {
		return false, false, d.changed
	}
	exists, _, _ = d.Source.Lookup(service)
	return exists, true, d.changed
}

// read makes the directory ready.
func (d *lateDirectory) read() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ready = true
	close(d.changed)
	d.changed = make(chan struct{})
}

// TestMetricsLabelAfterDirectoryRead wires the metrics to a real Server
// whose directory is read ~200 ms after a grpclb stream came: the stream
// first counts under "_unknown", then under its service, and "_unknown"
// has no open stream left.
func TestMetricsLabelAfterDirectoryRead(t *testing.T) {
	src := &lateDirectory{Source: static.New(map[string][]discovery.Endpoint{"user-srv": {
		{ID: "a", Addr: netip.MustParseAddrPort("127.0.0.1:1001"), Weight: 1},
	}}), changed: make(chan struct{})}
	m := metrics.New(metrics.Sources{})
	cfg := lbserver.DefaultConfig()
	cfg.Source = src
	cfg.LoadReports = false
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Observer = m
	srv, err := lbserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Attach(metrics.Sources{Balancer: srv, Directory: src})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go gs.Serve(lis)
	defer func() { gs.Stop(); srv.Close() }()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
		InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: "user-srv:50051"}}}); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the initial response and the list
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	const help = `
# HELP lookaside_lb_streams_open BalanceLoad streams open now, by service.
# TYPE lookaside_lb_streams_open gauge
`
	await(t, m, help+`lookaside_lb_streams_open{service="_unknown"} 1
`, "lookaside_lb_streams_open")
	time.Sleep(200 * time.Millisecond)
	src.read()
	await(t, m, help+`lookaside_lb_streams_open{service="_unknown"} 0
lookaside_lb_streams_open{service="user-srv"} 1
`, "lookaside_lb_streams_open")
	await(t, m, `
# HELP lookaside_lb_streams_ended_total BalanceLoad streams ended, by service and outcome.
# TYPE lookaside_lb_streams_ended_total counter
lookaside_lb_streams_ended_total{outcome="moved",service="_unknown"} 1
`, "lookaside_lb_streams_ended_total")
	for _, st := range srv.Status() {
		if st.Service != "user-srv" || st.Streams != 1 {
			t.Errorf("Status: %s with %d streams, want user-srv with 1", st.Service, st.Streams)
		}
	}
}

// await waits up to 5 s until the metrics named show want.
func await(t *testing.T, m *metrics.Metrics, want string, names ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
