package lbserver

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
	"github.com/lookaside-lb/lookaside/xds"
	"github.com/lookaside-lb/lookaside/xds/xdstest"
)

func clientStats(started int64) *lbpb.LoadBalanceRequest {
	return &lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{
		ClientStats: &lbpb.ClientStats{NumCallsStarted: started}}}
}

// TestStatus: Status shows each watched service's policy and its source,
// child policy, streams, fallback, endpoints, the first entries of the
// streams, the calls their ClientStats attribute to each endpoint by the
// child policy, and the list a new client would get (without counting it).
func TestStatus(t *testing.T) {
	three := func(svc string) discovery.Snapshot {
		return snap(svc, ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2"), ep("c", "127.0.0.1:3"))
	}
	meta := three("meta")
	meta.Meta = map[string]string{PolicyMetaKey: weightedroundrobin.Name}
	src := newFakeSource(three("rr"), three("pf"), meta, three("cfg"), snap("empty"))
	cfg := testConfig(dirSrc{src, newFakeDir(true, "rr", "pf", "meta", "cfg", "empty")})
	cfg.LoadReports = false
	cfg.Services = map[string]ServiceSettings{
		"pf":  {ChildPolicy: ChildPickFirst},
		"cfg": {Policy: "random"},
	}
	var seed atomic.Uint64
	s, c := startServer(t, cfg, func(s *Server) { s.seed = func() uint64 { return seed.Add(1) } })

	tests := []struct {
		service     string
		streams     int
		calls       int64 // reported by each stream
		policy      string
		source      string
		child       string
		fallback    string
		wantPerEP   func(st ServiceStatus) map[string]float64 // calls attributed per endpoint
		listEntries int
	}{
		{"rr", 2, 30, "round_robin", PolicyFromDefault, ChildRoundRobin, "",
			func(ServiceStatus) map[string]float64 { return map[string]float64{"a": 20, "b": 20, "c": 20} }, 3},
		{"pf", 2, 30, "round_robin", PolicyFromDefault, ChildPickFirst, "",
			func(st ServiceStatus) map[string]float64 {
				out := map[string]float64{}
				for _, e := range st.Endpoints {
					out[e.ID] = 30 * float64(e.FirstOf)
				}
				return out
			}, 3},
		{"meta", 1, 0, weightedroundrobin.Name, PolicyFromConsul, ChildRoundRobin, "", nil, 3},
		{"cfg", 1, 0, "random", PolicyFromConfig, ChildRoundRobin, "", nil, 3},
		{"empty", 1, 0, "round_robin", PolicyFromDefault, ChildRoundRobin, FallbackNoInstances, nil, 0},
	}
	for _, tc := range tests {
		for range tc.streams {
			st := openOK(t, c, tc.service)
			if r := recv(t, st); tc.fallback == "" && r.GetServerList() == nil {
				t.Fatalf("%s: got %v, want a list", tc.service, r)
			}
			if tc.calls > 0 {
				if err := st.Send(clientStats(tc.calls)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// ClientStats are taken in by the streams' goroutines: wait for them.
	var got []ServiceStatus
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = s.Status()
		var total float64
		for _, st := range got {
			for _, e := range st.Endpoints {
				total += e.CallsAttributed
			}
		}
		if total >= 120 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	byName := map[string]ServiceStatus{}
	for _, st := range got {
		byName[st.Service] = st
	}
	if len(got) != len(tests) {
		t.Fatalf("Status has %d services, want %d", len(got), len(tests))
	}
	for _, tc := range tests {
		st := byName[tc.service]
		if st.Policy != tc.policy || st.PolicySource != tc.source || st.ChildPolicy != tc.child || st.Streams != tc.streams ||
			st.FallbackReason != tc.fallback || st.Fallback != (tc.fallback != "") || !st.Ready {
			t.Errorf("%s: policy %q from %q, child %q, %d streams, ready %v, fallback %v %q; want %q from %q, child %q, %d streams, fallback %q",
				tc.service, st.Policy, st.PolicySource, st.ChildPolicy, st.Streams, st.Ready, st.Fallback, st.FallbackReason,
				tc.policy, tc.source, tc.child, tc.streams, tc.fallback)
		}
		if len(st.RoundRobinList) != tc.listEntries {
			t.Errorf("%s: new client's list %v, want %d entries", tc.service, st.RoundRobinList, tc.listEntries)
		}
		firsts := 0
		for _, e := range st.Endpoints {
			firsts += e.FirstOf
			if e.Health != "passing" || e.Weight != 1 || e.InstanceID != e.ID || e.Address == "" {
				t.Errorf("%s: endpoint %+v", tc.service, e)
			}
		}
		if tc.fallback == "" {
			if firsts != tc.streams {
				t.Errorf("%s: first entries of %d streams counted, want %d", tc.service, firsts, tc.streams)
			}
			if st.PickFirst.ID == "" || st.PickFirst.ID != st.RoundRobinList[0].ID {
				t.Errorf("%s: pick_first entry %+v, want the list's first %+v", tc.service, st.PickFirst, st.RoundRobinList)
			}
		}
		if tc.wantPerEP != nil {
			calls := map[string]float64{}
			for _, e := range st.Endpoints {
				calls[e.ID] = e.CallsAttributed
			}
			if diff := cmp.Diff(tc.wantPerEP(st), calls); diff != "" {
				t.Errorf("%s: calls attributed (-want +got):\n%s", tc.service, diff)
			}
		}
	}
	// Status counts no stream: asking again changes nothing.
	again := s.Status()
	for i := range got {
		for j, e := range got[i].Endpoints {
			if again[i].Endpoints[j].FirstOf != e.FirstOf {
				t.Errorf("%s/%s: first of %d streams, then %d", got[i].Service, e.ID, e.FirstOf, again[i].Endpoints[j].FirstOf)
			}
		}
	}
}

// BenchmarkStatus: the cost of Status for 100 services of 20 endpoints,
// each with a stream.
func BenchmarkStatus(b *testing.B) {
	var snaps []discovery.Snapshot
	var names []string
	for i := range 100 {
		name := fmt.Sprintf("svc-%d", i)
		var eps []discovery.Endpoint
		for j := range 20 {
			eps = append(eps, ep(fmt.Sprintf("e%02d", j), fmt.Sprintf("127.0.%d.%d:80", i, j+1)))
		}
		snaps = append(snaps, snap(name, eps...))
		names = append(names, name)
	}
	cfg := testConfig(newFakeSource(snaps...))
	cfg.LoadReports = false
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// Watch each service (as a stream or a DNS query would).
	ctx := b.Context()
	for _, n := range names {
		if _, ok := s.Endpoints(ctx, n); !ok {
			b.Fatalf("no endpoints for %s", n)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if got := s.Status(); len(got) != 100 {
			b.Fatalf("%d services", len(got))
		}
	}
}

// TestStatusXDSStreams: a service's status counts the xDS streams that
// follow it, once per stream however many of its names map to it.
func TestStatusXDSStreams(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")), snap("other", ep("b", "127.0.0.1:2")))
	cfg := testConfig(src)
	cfg.Aliases = map[string]string{"users": "svc"}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	feed := s.XDSFeed().(xds.StreamFeed)
	count := func() map[string]int {
		out := map[string]int{}
		for _, st := range s.Status() {
			out[st.Service] = st.XDSStreams
		}
		return out
	}
	sub := func(stream uint64, name string) xds.Subscription {
		t.Helper()
		x, err := feed.SubscribeStream(stream, name, func() {})
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	// Stream 1 dials xds:///users: its Listener and Route name users, its
	// Cluster and assignment svc.
	l1, c1 := sub(1, "users"), sub(1, "svc")
	s2 := sub(2, "SVC:443")
	o2 := sub(2, "other")
	anon, err := s.XDSFeed().Subscribe("svc", func() {})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := count(), map[string]int{"svc": 3, "other": 1}; !cmp.Equal(got, want) {
		t.Errorf("xDS streams %v, want %v", got, want)
	}
	l1.Close()
	if got, want := count(), map[string]int{"svc": 3, "other": 1}; !cmp.Equal(got, want) {
		t.Errorf("after one of stream 1's names closed: xDS streams %v, want %v", got, want)
	}
	c1.Close()
	c1.Close()
	anon.Close()
	if got, want := count(), map[string]int{"svc": 1, "other": 1}; !cmp.Equal(got, want) {
		t.Errorf("after stream 1 left: xDS streams %v, want %v", got, want)
	}
	s2.Close()
	o2.Close()
	for _, st := range s.Status() {
		if st.XDSStreams != 0 {
			t.Errorf("%s: %d xDS streams after every subscription closed", st.Service, st.XDSStreams)
		}
	}
}

// TestStatusXDSStreamsServed: an ADS stream counts on its service while
// it is open.
func TestStatusXDSStreamsServed(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.Aliases = map[string]string{"users": "svc"}
	s, addr := serveAt(t, cfg)
	ads := xdstest.RawADS(t, addr)
	for _, r := range []*discoverypb.DiscoveryRequest{
		{TypeUrl: xds.ListenerType, ResourceNames: []string{"users"}},
		{TypeUrl: xds.EndpointType, ResourceNames: []string{"svc"}},
	} {
		if err := ads.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	streams := func() int {
		for _, st := range s.Status() {
			if st.Service == "svc" {
				return st.XDSStreams
			}
		}
		return 0
	}
	wait := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for streams() != want {
			if time.Now().After(deadline) {
				t.Fatalf("svc: %d xDS streams, want %d", streams(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(1)
	if err := ads.CloseSend(); err != nil {
		t.Fatal(err)
	}
	wait(0)
}
