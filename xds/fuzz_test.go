package xds

import (
	"net/netip"
	"testing"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

// staticFeed answers "a" and "b" with one endpoint each, and nothing else.
type staticFeed struct{ open map[*staticSub]bool }

type staticSub struct {
	f    *staticFeed
	name string
}

func (f *staticFeed) Subscribe(name string, _ func()) (Subscription, error) {
	if name != "a" && name != "b" {
		return nil, ErrUnknown
	}
	s := &staticSub{f: f, name: name}
	f.open[s] = true
	return s, nil
}

func (s *staticSub) Assignment() (Assignment, bool) {
	return Assignment{Cluster: s.name, Endpoints: []Endpoint{{ID: s.name, Addr: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1}}}, true
}

func (s *staticSub) Close() { delete(s.f.open, s) }

// FuzzDiscoveryRequest feeds a stream a sequence of requests as a client
// could send them, and checks what it holds: subscriptions match the names
// subscribed, within the bound, and every response is well formed.
func FuzzDiscoveryRequest(f *testing.F) {
	seed := func(reqs ...*discoverypb.DiscoveryRequest) {
		var all []byte
		for _, r := range reqs {
			b, _ := proto.Marshal(r)
			all = append(all, byte(len(b)))
			all = append(all, b...)
		}
		f.Add(all)
	}
	seed(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "n"}, TypeUrl: ListenerType, ResourceNames: []string{"a", "nosuch"}},
		&discoverypb.DiscoveryRequest{TypeUrl: ListenerType, ResponseNonce: "1", VersionInfo: "1", ResourceNames: []string{"b"}})
	seed(&discoverypb.DiscoveryRequest{TypeUrl: ClusterType, ResourceNames: []string{"a", "b"}},
		&discoverypb.DiscoveryRequest{TypeUrl: ClusterType, ResponseNonce: "1", ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad"}})
	seed(&discoverypb.DiscoveryRequest{TypeUrl: EndpointType, ResourceNames: []string{"a", "a", "b"}})
	f.Fuzz(func(t *testing.T, data []byte) {
		feed := &staticFeed{open: map[*staticSub]bool{}}
		srv := New(feed, Options{MaxNames: 4})
		sent := 0
		st := &adsStream{srv: srv, subs: map[string]*subRef{}, types: map[string]*typeState{}, wake: make(chan struct{}, 1),
			send: func(r *discoverypb.DiscoveryResponse) error {
				sent++
				if r.Nonce == "" || r.VersionInfo == "" || r.TypeUrl == "" {
					t.Fatalf("response without nonce, version or type: %v", r)
				}
				return nil
			}}
		for len(data) > 0 {
			n := int(data[0])
			data = data[1:]
			if n > len(data) {
				n = len(data)
			}
			var req discoverypb.DiscoveryRequest
			if err := proto.Unmarshal(data[:n], &req); err != nil {
				data = data[n:]
				continue
			}
			data = data[n:]
			if err := st.handle(&req); err != nil {
				break // the stream ends
			}
			if err := st.flush(); err != nil {
				t.Fatal(err)
			}
		}
		refs := map[string]int{}
		for _, ts := range st.types {
			if len(ts.names) > 4 {
				t.Fatalf("%d names subscribed, bound 4", len(ts.names))
			}
			for _, n := range ts.names {
				refs[n]++
			}
		}
		for name, r := range st.subs {
			if r.refs != refs[name] {
				t.Fatalf("subscription %q has %d refs, %d types name it", name, r.refs, refs[name])
			}
		}
		st.closeAll()
		if len(feed.open) != 0 {
			t.Fatalf("%d subscriptions left open", len(feed.open))
		}
	})
}

// FuzzLoads checks that any LoadStatsRequest a client sends is either
// refused or turned into loads within the bounds.
func FuzzLoads(f *testing.F) {
	b, _ := proto.Marshal(&lrspb.LoadStatsRequest{ClusterStats: []*endpointpb.ClusterStats{{
		ClusterName:           "a",
		UpstreamLocalityStats: []*endpointpb.UpstreamLocalityStats{{Locality: &corepb.Locality{SubZone: "x"}, TotalIssuedRequests: 5}},
		DroppedRequests:       []*endpointpb.ClusterStats_DroppedRequests{{Category: "drop-overload", DroppedCount: 1}},
	}}})
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req lrspb.LoadStatsRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		loads, err := Loads(&req)
		if err != nil {
			return
		}
		if len(loads) > MaxReportClusters {
			t.Fatalf("%d clusters accepted", len(loads))
		}
		for _, l := range loads {
			if l.Cluster == "" || len(l.Dropped) > MaxDropCategories || len(l.Localities) > MaxReportLocalities {
				t.Fatalf("load out of bounds: %+v", l)
			}
			var sum uint64
			for _, n := range l.Localities {
				sum = addSat(sum, n)
			}
			if sum != l.Issued {
				t.Fatalf("localities sum to %d, issued %d", sum, l.Issued)
			}
		}
	})
}
