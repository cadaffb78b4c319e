package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lookaside-lb/lookaside/xds"
)

// xdsStreamsCase is one sub-benchmark of BenchmarkXDSClientMemory.
type xdsStreamsCase struct {
	name    string
	streams int
	// lrs also opens an LRS stream on each connection, as a grpc-go
	// channel does next to its ADS stream.
	lrs bool
}

// BenchmarkXDSClientMemory is BenchmarkClientMemory for xDS clients: what
// N ADS streams, each on a connection of its own, cost the lbserver
// binary (built without the race detector, a process of its own, limits
// raised by flags), and how soon one Consul change reaches all of them.
// One service has three instances registered in Consul (no backend runs).
//
// Each stream is a bare ADS client in this process, not a grpc-go xDS
// client: 10,000 of those in one process would measure the clients, not
// the balancer. It plays what grpc-go sends for xds:///<service>: a
// Listener request with its node, then a RouteConfiguration, a Cluster
// and a ClusterLoadAssignment request for the names each answer gives,
// and an ACK of every response. Once every stream has its first
// ClusterLoadAssignment it reports the balancer's RSS per stream, (RSS
// with the streams − RSS with one stream) / N, and its goroutines, heap
// in use and goroutine stacks per stream (from its /metrics). Then it
// deregisters the first instance and reports, over the streams, the p50
// and p99 of the time until each stream's ClusterLoadAssignment without
// it, and the balancer's CPU time until the last stream had it.
//
// Sub-benchmarks (tools/bench parses their names and metrics, and shows
// them next to BenchmarkClientMemory's per-client figures):
//   - streams=100, streams=1000, streams=10000: N ADS streams.
//   - streams=10000,lrs: the same with an LRS stream next to each ADS
//     stream on its connection (its first request only: the clients
//     make no calls, so they report nothing), as a grpc-go channel
//     holds; the metrics are still per ADS stream.
//
// Run it with -benchtime 1x (make bench); it skips a size when the
// open-file limit cannot fit its connections. With
// LOOKASIDE_CLIENTS_PROFILES=<dir> it saves the balancer's heap and
// goroutine profiles there once every stream has its first assignment.
func BenchmarkXDSClientMemory(b *testing.B) {
	lbBin, _ := buildCmdsWith(b)
	for _, c := range []xdsStreamsCase{
		{name: "streams=100", streams: 100},
		{name: "streams=1000", streams: 1000},
		{name: "streams=10000", streams: 10000},
		{name: "streams=10000,lrs", streams: 10000, lrs: true},
	} {
		b.Run(c.name, func(b *testing.B) {
			if err := raiseNofile(uint64(c.streams) + 1000); err != nil {
				b.Skipf("%d connections: %v", c.streams, err)
			}
			benchXDSStreams(b, lbBin, c)
		})
	}
}

// xdsBenchStream is one ADS stream of BenchmarkXDSClientMemory.
type xdsBenchStream struct {
	node   *corepb.Node
	first  chan struct{} // closed at the first assignment with every instance
	change atomic.Int64  // UnixNano of the first assignment with one instance less; 0 until then
	err    atomic.Pointer[error]
}

func benchXDSStreams(b *testing.B, lbBin string, c xdsStreamsCase) {
	svc := serviceName(b)
	instID := func(j int) string { return fmt.Sprintf("%s-i%d", svc, j) }
	consulAgent := agent.Client().Agent()
	if err := runAll(clientsInstances, clientsInstances, func(j int) error {
		return consulAgent.ServiceRegister(&api.AgentServiceRegistration{
			ID: instID(j), Name: svc, Address: "127.0.0.1", Port: 21000 + j,
			Check: &api.AgentServiceCheck{CheckID: instID(j) + "-ttl", TTL: "10m", Status: api.HealthPassing},
		})
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		runAll(clientsInstances, clientsInstances, func(j int) error { return consulAgent.ServiceDeregister(instID(j)) })
	})
	waitFor(b, time.Minute, fmt.Sprintf("%d passing instances of %s", clientsInstances, svc), func() bool {
		entries, _, err := agent.Client().Health().Service(svc, "", true, nil)
		return err == nil && len(entries) == clientsInstances
	})

	streamsPerConn := 1
	if c.lrs {
		streamsPerConn = 2
	}
	lbp, admin := startBenchBalancer(b, lbBin, streamsPerConn*c.streams, streamsPerConn)
	pid := lbp.cmd.Process.Pid

	ctx, cancel := deadlineFree(clientsOpenLimit + clientsPropLimit + time.Minute)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ccs []*grpc.ClientConn
	b.Cleanup(func() {
		cancel()
		mu.Lock()
		for _, cc := range ccs {
			cc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	// open dials a connection for s and opens its ADS stream (and LRS
	// stream with c.lrs).
	open := func(s *xdsBenchStream) error {
		cc, err := grpc.NewClient(lbp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		mu.Lock()
		ccs = append(ccs, cc)
		mu.Unlock()
		stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(stream, svc)
		}()
		if !c.lrs {
			return nil
		}
		lrs, err := lrspb.NewLoadReportingServiceClient(cc).StreamLoadStats(ctx)
		if err != nil {
			return err
		}
		if err := lrs.Send(&lrspb.LoadStatsRequest{Node: s.node}); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, err := lrs.Recv(); err != nil {
					return
				}
			}
		}()
		return nil
	}
	newStream := func(i int) *xdsBenchStream {
		return &xdsBenchStream{node: &corepb.Node{Id: fmt.Sprintf("bench-%d", i), UserAgentName: "gRPC Go"}, first: make(chan struct{})}
	}
	waitFirsts := func(ss []*xdsBenchStream, deadline time.Time) error {
		for i, s := range ss {
			select {
			case <-s.first:
			case <-time.After(time.Until(deadline)):
				return fmt.Errorf("stream %d of %d: no first assignment by the deadline", i, len(ss))
			}
			if p := s.err.Load(); p != nil {
				return fmt.Errorf("stream %d of %d: %w", i, len(ss), *p)
			}
		}
		return nil
	}
	measure := func() (int64, balancerStats) { return measureBalancer(b, pid, admin) }

	// The baseline: one stream, so that the service is watched already.
	warm := newStream(-1)
	if err := open(warm); err != nil {
		b.Fatal(err)
	}
	if err := waitFirsts([]*xdsBenchStream{warm}, time.Now().Add(30*time.Second)); err != nil {
		b.Fatal(err)
	}
	rss0, st0 := measure()

	b.ResetTimer()
	start := time.Now()
	deadline := start.Add(clientsOpenLimit)
	ss := make([]*xdsBenchStream, c.streams)
	for i := range ss {
		ss[i] = newStream(i)
	}
	if err := openBefore(len(ss), deadline, func(i int) error { return open(ss[i]) }); err != nil {
		b.Fatal(err)
	}
	if err := waitFirsts(ss, deadline); err != nil {
		logs := lbp.logs()
		b.Fatalf("%v\nlbserver's log (last 2000 bytes):\n%s", err, logs[max(0, len(logs)-2000):])
	}
	opened := time.Since(start)
	rssN, stN := measure()
	if dir := os.Getenv("LOOKASIDE_CLIENTS_PROFILES"); dir != "" {
		saveProfiles(b, admin, filepath.Join(dir, "xds-"+strings.NewReplacer("=", "", ",", "-").Replace(c.name)))
	}
	n := float64(c.streams)
	perStream := float64(rssN-rss0) / n
	b.ReportMetric(perStream/1024, "KiB-RSS/stream")
	b.ReportMetric((stN.goroutines-st0.goroutines)/n, "goroutines/stream")
	b.ReportMetric((stN.heapInuse-st0.heapInuse)/n/1024, "KiB-heap/stream")
	b.ReportMetric((stN.stackInuse-st0.stackInuse)/n/1024, "KiB-stack/stream")
	b.Logf("%s: RSS %.1f MiB → %.1f MiB, %.1f KiB per stream; goroutines %.0f → %.0f; heap in use %.1f → %.1f MiB; stacks %.1f → %.1f MiB; all first assignments in %v",
		c.name, float64(rss0)/(1<<20), float64(rssN)/(1<<20), perStream/1024, st0.goroutines, stN.goroutines,
		st0.heapInuse/(1<<20), stN.heapInuse/(1<<20), st0.stackInuse/(1<<20), stN.stackInuse/(1<<20), opened.Round(time.Millisecond))

	// Fan-out: the first instance leaves; every stream's next
	// assignment.
	cpu0, err := cpuTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	changed := time.Now()
	if err := consulAgent.ServiceDeregister(instID(0)); err != nil {
		b.Fatal(err)
	}
	waitFor(b, clientsPropLimit, "every stream's assignment without the deregistered instance", func() bool {
		for _, s := range ss {
			if s.change.Load() == 0 {
				return false
			}
		}
		return true
	})
	b.StopTimer()
	cpu1, err := cpuTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, len(ss))
	for _, s := range ss {
		lat = append(lat, time.Unix(0, s.change.Load()).Sub(changed))
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.5).Microseconds())/1000, "p50-change-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-change-ms")
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/1000, "balancer-cpu-ms/change")
	b.Logf("%s: one instance deregistered → next assignment min %v, p50 %v, p99 %v, max %v; the balancer's CPU time meanwhile %v",
		c.name, lat[0].Round(time.Millisecond), pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond),
		lat[len(lat)-1].Round(time.Millisecond), (cpu1 - cpu0).Round(time.Millisecond))
}

// run plays grpc-go's side of stream for xds:///svc until the stream
// ends: it asks for the Listener, then for the RouteConfiguration,
// Cluster and ClusterLoadAssignment each answer names, and ACKs every
// response. It closes s.first at the first assignment with every
// instance and records when one with an instance less arrives. An error
// before the first assignment is kept in s.err.
func (s *xdsBenchStream) run(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, svc string) {
	firstDone := false
	fail := func(err error) {
		if !firstDone {
			s.err.Store(&err)
		}
	}
	defer func() {
		if !firstDone {
			close(s.first)
		}
	}()
	names := map[string][]string{xds.ListenerType: {svc}}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: s.node, TypeUrl: xds.ListenerType, ResourceNames: names[xds.ListenerType]}); err != nil {
		fail(err)
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			fail(err)
			return
		}
		typ := resp.GetTypeUrl()
		if err := stream.Send(&discoverypb.DiscoveryRequest{TypeUrl: typ, VersionInfo: resp.GetVersionInfo(),
			ResponseNonce: resp.GetNonce(), ResourceNames: names[typ]}); err != nil {
			fail(err)
			return
		}
		if len(resp.GetResources()) == 0 && (typ == xds.RouteType || typ == xds.EndpointType) {
			// In the state of the world, a RouteConfiguration or
			// ClusterLoadAssignment missing from a response is not
			// removed, only not there yet (the service's first
			// assignment is pending): wait for the next, as grpc-go does.
			continue
		}
		nextType, nextName, endpoints, err := followXDS(resp)
		if err != nil {
			fail(err)
			return
		}
		if nextType != "" && names[nextType] == nil {
			names[nextType] = []string{nextName}
			if err := stream.Send(&discoverypb.DiscoveryRequest{TypeUrl: nextType, ResourceNames: names[nextType]}); err != nil {
				fail(err)
				return
			}
		}
		switch {
		case typ != xds.EndpointType:
		case !firstDone && endpoints == clientsInstances:
			firstDone = true
			close(s.first)
		case firstDone && endpoints == clientsInstances-1 && s.change.Load() == 0:
			s.change.Store(time.Now().UnixNano())
		}
	}
}

// followXDS reads the one resource of an ADS response: for a Listener,
// RouteConfiguration or Cluster, the type and name of the resource it
// points to; for a ClusterLoadAssignment, how many endpoints it lists.
func followXDS(resp *discoverypb.DiscoveryResponse) (nextType, nextName string, endpoints int, err error) {
	if len(resp.GetResources()) != 1 {
		return "", "", 0, fmt.Errorf("%s response with %d resources, want 1", resp.GetTypeUrl(), len(resp.GetResources()))
	}
	res := resp.GetResources()[0]
	switch resp.GetTypeUrl() {
	case xds.ListenerType:
		var l listenerpb.Listener
		var hcm hcmpb.HttpConnectionManager
		if err := res.UnmarshalTo(&l); err != nil {
			return "", "", 0, err
		}
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(&hcm); err != nil {
			return "", "", 0, err
		}
		return xds.RouteType, hcm.GetRds().GetRouteConfigName(), 0, nil
	case xds.RouteType:
		var r routepb.RouteConfiguration
		if err := res.UnmarshalTo(&r); err != nil {
			return "", "", 0, err
		}
		for _, vh := range r.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if cl := rt.GetRoute().GetCluster(); cl != "" {
					return xds.ClusterType, cl, 0, nil
				}
			}
		}
		return "", "", 0, errors.New("route configuration without a cluster")
	case xds.ClusterType:
		var cl clusterpb.Cluster
		if err := res.UnmarshalTo(&cl); err != nil {
			return "", "", 0, err
		}
		name := cl.GetEdsClusterConfig().GetServiceName()
		if name == "" {
			name = cl.GetName()
		}
		return xds.EndpointType, name, 0, nil
	case xds.EndpointType:
		var cla endpointpb.ClusterLoadAssignment
		if err := res.UnmarshalTo(&cla); err != nil {
			return "", "", 0, err
		}
		for _, loc := range cla.GetEndpoints() {
			endpoints += len(loc.GetLbEndpoints())
		}
		return "", "", endpoints, nil
	}
	return "", "", 0, fmt.Errorf("unexpected resource type %s", resp.GetTypeUrl())
}
