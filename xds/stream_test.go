package xds_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/xds"
	"github.com/lookaside-lb/lookaside/xds/xdstest"
)

func request(url, version, nonce string, names ...string) *discoverypb.DiscoveryRequest {
	return &discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "raw"}, TypeUrl: url, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
}

func TestNACKIsLoggedCountedAndOtherUpdatesGoOn(t *testing.T) {
	bs := xdstest.HealthBackends(t, 2)
	feed := newFeed()
	feed.set(xds.Assignment{Cluster: "a", Endpoints: endpoints(bs)})
	feed.set(xds.Assignment{Cluster: "b", Endpoints: endpoints(bs)})
	var logs syncbuf.Buffer
	var mu sync.Mutex
	var nacks []string
	addr := startXDS(t, feed, xds.Options{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		OnNACK: func(url, reason string) { mu.Lock(); nacks = append(nacks, url+": "+reason); mu.Unlock() },
	})
	s := xdstest.RawADS(t, addr)
	if err := s.Send(request(xds.EndpointType, "", "", "a", "b")); err != nil {
		t.Fatal(err)
	}
	r1, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r1.Resources) != 2 {
		t.Fatalf("first EDS response has %d resources, want 2", len(r1.Resources))
	}
	// The client rejects it.
	nack := request(xds.EndpointType, "", r1.Nonce, "a", "b")
	nack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: "weights make no sense"}
	if err := s.Send(nack); err != nil {
		t.Fatal(err)
	}
	// A later change still reaches it.
	feed.set(xds.Assignment{Cluster: "b", Endpoints: endpoints(bs[:1])})
	r2, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r2.VersionInfo == r1.VersionInfo || r2.Nonce == r1.Nonce {
		t.Fatalf("second response reuses version %q nonce %q", r2.VersionInfo, r2.Nonce)
	}
	var cla endpointpb.ClusterLoadAssignment
	if err := r2.Resources[1].UnmarshalTo(&cla); err != nil || cla.ClusterName != "b" || len(cla.Endpoints[0].LbEndpoints) != 1 {
		t.Fatalf("second response's b: %v (err %v), want one endpoint", &cla, err)
	}
	var got string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		got = strings.Join(nacks, "|")
		mu.Unlock()
		if got != "" {
			break
		}
	}
	if got != xds.EndpointType+": weights make no sense" {
		t.Errorf("NACKs reported %q", got)
	}
	if l := logs.String(); !strings.Contains(l, "rejected") || !strings.Contains(l, "weights make no sense") || !strings.Contains(l, `raw`) {
		t.Errorf("log has no line with the NACK's reason and node:\n%s", l)
	}
}

func TestStreamRefusals(t *testing.T) {
	feed := newFeed()
	addr := startXDS(t, feed, xds.Options{MaxNames: 3})
	tests := []struct {
		name string
		req  *discoverypb.DiscoveryRequest
		code codes.Code
	}{
		{"too many names", request(xds.ListenerType, "", "", "a", "b", "c", "d"), codes.ResourceExhausted},
		{"unknown type", request("type.googleapis.com/envoy.config.listener.v3.Nope", "", ""), codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := xdstest.RawADS(t, addr)
			if err := s.Send(tc.req); err != nil {
				t.Fatal(err)
			}
			_, err := s.Recv()
			if grpcstatus.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
		})
	}
	waitOpen(t, feed, 0)
}

// waitOpen waits until feed has n open subscriptions.
func waitOpen(t *testing.T, feed *fakeFeed, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for feed.open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d subscriptions open, want %d", feed.open(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSubscriptionsFollowTheClient(t *testing.T) {
	bs := xdstest.HealthBackends(t, 1)
	feed := newFeed()
	for _, c := range []string{"a", "b"} {
		feed.set(xds.Assignment{Cluster: c, Endpoints: endpoints(bs)})
	}
	addr := startXDS(t, feed, xds.Options{})
	s := xdstest.RawADS(t, addr)
	if err := s.Send(request(xds.ClusterType, "", "", "a", "b")); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	waitOpen(t, feed, 2)
	// ACK while dropping b: b's subscription closes, and the new set is sent.
	if err := s.Send(request(xds.ClusterType, r.VersionInfo, r.Nonce, "a")); err != nil {
		t.Fatal(err)
	}
	r2, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(r2.Resources) != 1 {
		t.Fatalf("after unsubscribing b: %d clusters, want 1", len(r2.Resources))
	}
	waitOpen(t, feed, 1)
	s.CloseSend()
	if _, err := s.Recv(); err == nil {
		t.Fatal("stream still open after the client closed it")
	}
	waitOpen(t, feed, 0)
}

// TestNACKLogIsBoundedByType: reasons are the client's, so NACKs with
// ever new reasons still log one line per resource type per interval.
func TestNACKLogIsBoundedByType(t *testing.T) {
	bs := xdstest.HealthBackends(t, 1)
	feed := newFeed()
	feed.set(xds.Assignment{Cluster: "a", Endpoints: endpoints(bs)})
	var logs syncbuf.Buffer
	nacks := make(chan string, 100)
	addr := startXDS(t, feed, xds.Options{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		OnNACK: func(_, reason string) { nacks <- reason },
	})
	s := xdstest.RawADS(t, addr)
	if err := s.Send(request(xds.ClusterType, "", "", "a")); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		nack := request(xds.ClusterType, "", r.Nonce, "a")
		nack.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: fmt.Sprintf("reason %d", i)}
		if err := s.Send(nack); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		select {
		case <-nacks:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d NACKs reported, want %d", i, n)
		}
	}
	if got := strings.Count(logs.String(), "rejected a resource"); got != 1 {
		t.Errorf("%d NACK log lines for %d NACKs of one type, want 1:\n%s", got, n, logs.String())
	}
}

// subscribeAll opens a raw stream subscribed to name's Listener, Route,
// Cluster and endpoints, takes the first response of each, and returns
// the stream and a receive that ACKs what it takes.
func subscribeAll(t *testing.T, addr, name string) (discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, func() *discoverypb.DiscoveryResponse) {
	t.Helper()
	s := xdstest.RawADS(t, addr)
	recv := func() *discoverypb.DiscoveryResponse {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(request(r.TypeUrl, r.VersionInfo, r.Nonce, name)); err != nil { // ACK
			t.Fatal(err)
		}
		return r
	}
	types := []string{xds.ListenerType, xds.RouteType, xds.ClusterType, xds.EndpointType}
	for _, url := range types {
		if err := s.Send(request(url, "", "", name)); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int{}
	for range types {
		r := recv()
		if len(r.Resources) != 1 {
			t.Fatalf("%s: %d resources, want 1", r.TypeUrl, len(r.Resources))
		}
		got[r.TypeUrl]++
	}
	if len(got) != len(types) {
		t.Fatalf("first responses by type: %v, want one of each", got)
	}
	return s, recv
}

// nothingQueued checks that the stream sent nothing more: its next
// response answers a new request.
func nothingQueued(t *testing.T, s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient, recv func() *discoverypb.DiscoveryResponse, name string) {
	t.Helper()
	if err := s.Send(request(xds.ListenerType, "", "", name, "nosuch")); err != nil {
		t.Fatal(err)
	}
	if r := recv(); r.TypeUrl != xds.ListenerType {
		t.Fatalf("got %s, want the Listeners asked for", r.TypeUrl)
	}
}

// TestEndpointChangeSendsOnlyEndpoints: when a service's endpoints change,
// a stream subscribed to its Listener, Route, Cluster and endpoints gets
// the new ClusterLoadAssignment and nothing else, since the other three
// are as they were.
func TestEndpointChangeSendsOnlyEndpoints(t *testing.T) {
	bs := xdstest.HealthBackends(t, 2)
	feed := newFeed()
	feed.set(xds.Assignment{Cluster: "a", Endpoints: endpoints(bs)})
	addr := startXDS(t, feed, xds.Options{LRS: true})
	s, recv := subscribeAll(t, addr, "a")
	// An endpoint leaves, then comes back: each time the endpoints alone
	// are sent (a Listener, Route or Cluster would come first: a stream
	// sends its types in that order).
	for i, eps := range [][]netip.AddrPort{bs[:1], bs} {
		feed.set(xds.Assignment{Cluster: "a", Endpoints: endpoints(eps)})
		r := recv()
		var cla endpointpb.ClusterLoadAssignment
		if r.TypeUrl != xds.EndpointType || len(r.Resources) != 1 {
			t.Fatalf("change %d: got %s with %d resources, want the endpoints alone", i, r.TypeUrl, len(r.Resources))
		}
		if err := r.Resources[0].UnmarshalTo(&cla); err != nil || len(cla.Endpoints[0].LbEndpoints) != len(eps) {
			t.Fatalf("change %d: %v (err %v), want %d endpoints", i, &cla, err, len(eps))
		}
	}
	nothingQueued(t, s, recv, "a")
}

// TestShapeChangeSendsRouteAndCluster: round robin to ring hash changes
// the Route (hashing the channel) and the Cluster (its policy), not the
// Listener, nor the endpoints (one locality either way).
func TestShapeChangeSendsRouteAndCluster(t *testing.T) {
	bs := xdstest.HealthBackends(t, 2)
	feed := newFeed()
	feed.set(xds.Assignment{Cluster: "a", Endpoints: endpoints(bs)})
	addr := startXDS(t, feed, xds.Options{})
	s, recv := subscribeAll(t, addr, "a")
	feed.set(xds.Assignment{Cluster: "a", Shape: xds.ShapeRingHash, Endpoints: endpoints(bs)})
	var got []string
	for range 2 {
		got = append(got, recv().TypeUrl)
	}
	if want := []string{xds.RouteType, xds.ClusterType}; !slices.Equal(got, want) {
		t.Fatalf("after a shape change: %v, want %v", got, want)
	}
	nothingQueued(t, s, recv, "a")
}

// aliasFeed maps names through aliases the test changes, to the
// assignments of clusters a and b; its subscriptions are Movers.
type aliasFeed struct {
	mu      sync.Mutex
	aliases map[string]string // guarded by mu: name → cluster ("" or missing: unknown)
	notify  map[*aliasSub]func()
	byName  map[string]xds.Assignment
}

type aliasSub struct {
	f       *aliasFeed
	name    string
	cluster string
}

func (f *aliasFeed) Subscribe(name string, notify func()) (xds.Subscription, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.aliases[name]
	if _, ok := f.byName[c]; !ok {
		return nil, fmt.Errorf("%q: %w", name, xds.ErrUnknown)
	}
	s := &aliasSub{f: f, name: name, cluster: c}
	f.notify[s] = notify
	return s, nil
}

// alias maps name to cluster and wakes every subscription.
func (f *aliasFeed) alias(name, cluster string) {
	f.mu.Lock()
	f.aliases[name] = cluster
	var fns []func()
	for _, fn := range f.notify {
		fns = append(fns, fn)
	}
	f.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

func (f *aliasFeed) open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.notify)
}

func (s *aliasSub) Assignment() (xds.Assignment, bool) { return s.f.byName[s.cluster], true }
func (s *aliasSub) Close() {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	delete(s.f.notify, s)
}
func (s *aliasSub) Moved() bool {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	return s.f.aliases[s.name] != s.cluster
}

// TestMovedSubscription: a subscription that reports Moved is replaced on
// its stream by a new one, whose resources the client gets under the
// name it asked for (the ClusterLoadAssignment keeps the name, its
// endpoints are the new service's) with a new version; a name refused
// now is left out.
func TestMovedSubscription(t *testing.T) {
	bs := xdstest.HealthBackends(t, 2)
	eps := map[string][]xds.Endpoint{"a": endpoints(bs[:1]), "b": endpoints(bs[1:])}
	feed := &aliasFeed{aliases: map[string]string{"users": "a"}, notify: map[*aliasSub]func(){}, byName: map[string]xds.Assignment{
		"a": {Cluster: "a", Endpoints: eps["a"]},
		"b": {Cluster: "b", Endpoints: eps["b"]},
	}}
	s := xdstest.RawADS(t, startXDS(t, feed, xds.Options{}))
	recv := func(want int) (*discoverypb.DiscoveryResponse, *endpointpb.ClusterLoadAssignment) {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Resources) != want {
			t.Fatalf("response %v: want %d resources", r, want)
		}
		if err := s.Send(request(xds.EndpointType, r.VersionInfo, r.Nonce, "users")); err != nil {
			t.Fatal(err)
		}
		if want == 0 {
			return r, nil
		}
		var cla endpointpb.ClusterLoadAssignment
		if err := r.Resources[0].UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		return r, &cla
	}
	// of reports whether cla is named users and lists svc's endpoint.
	of := func(cla *endpointpb.ClusterLoadAssignment, svc string) bool {
		addrs := xdstest.Addrs(cla)
		return cla.ClusterName == "users" && len(addrs) == 1 && addrs[0] == eps[svc][0].Addr.String()
	}
	if err := s.Send(request(xds.EndpointType, "", "", "users")); err != nil {
		t.Fatal(err)
	}
	r1, cla := recv(1)
	if !of(cla, "a") {
		t.Fatalf("users: %v, want a's endpoint under the name users", cla)
	}
	feed.alias("users", "b")
	r2, cla := recv(1)
	if !of(cla, "b") || r2.VersionInfo == r1.VersionInfo {
		t.Fatalf("users after the move: %v version %s (before %s), want b's endpoint under the name users and a new version", cla, r2.VersionInfo, r1.VersionInfo)
	}
	if n := feed.open(); n != 1 {
		t.Errorf("%d subscriptions open after the move, want 1", n)
	}
	feed.alias("users", "gone")
	recv(0)
	if n := feed.open(); n != 0 {
		t.Errorf("%d subscriptions open after a move to an unknown name, want 0", n)
	}
}
