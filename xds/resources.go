package xds

import (
	"fmt"
	"math"
	"net/netip"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The type URLs of the four resource types the server serves.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Shape is how an xDS client balances a cluster's calls: what the
// balancer's policy becomes for a client that balances itself.
type Shape int

const (
	// ShapeRoundRobin: one locality, the Cluster's ROUND_ROBIN policy.
	// gRPC clients ignore endpoint weights under it, so every endpoint
	// gets an equal share.
	ShapeRoundRobin Shape = iota
	// ShapeWeighted: one locality per endpoint, weighted by the
	// endpoint's Weight, under ROUND_ROBIN, which gRPC clients run as
	// xds_wrr_locality: each endpoint's share is its weight's share.
	ShapeWeighted
	// ShapeRingHash: RING_HASH (xx_hash), with the route hashing the
	// client's channel, so that each client sticks to its endpoint.
	ShapeRingHash
	// ShapeLeastRequest: LEAST_REQUEST, the client picking the endpoint
	// with the fewest calls in flight of two chosen at random.
	ShapeLeastRequest
)

var shapeNames = [...]string{"round_robin", "weighted_localities", "ring_hash", "least_request"}

func (s Shape) String() string {
	if int(s) < len(shapeNames) {
		return shapeNames[s]
	}
	return fmt.Sprintf("Shape(%d)", int(s))
}

// MaxWeight bounds an endpoint's Weight: the sum of a cluster's locality
// weights must fit in 32 bits, and a cluster has at most MaxEndpoints.
const (
	MaxWeight    = 1 << 16
	MaxEndpoints = 1 << 15
)

// Assignment is what the xDS face serves for one service at one moment.
// It is immutable once made.
type Assignment struct {
	// Cluster names the Cluster and ClusterLoadAssignment. A Feed sets it
	// to the service's canonical name; the Server serves them under the
	// name the client asked for, so that new settings mapping that name
	// to another service change the cluster's content, not its name.
	Cluster string
	// Shape is how the clients balance.
	Shape Shape
	// Endpoints are the service's endpoints, unique by address, sorted as
	// the balancer sorts them. Empty: no endpoint (clients fail calls).
	Endpoints []Endpoint
	// Drops are the shares of calls clients drop, by category.
	Drops []Drop
}

// Endpoint is one backend of an Assignment.
type Endpoint struct {
	// ID names the endpoint (the Consul service ID); it names its
	// locality under ShapeWeighted.
	ID string
	// Addr is the address clients dial.
	Addr netip.AddrPort
	// Weight is the endpoint's relative weight, in [1, MaxWeight]; it
	// matters under ShapeWeighted only.
	Weight uint32
}

// Drop is a share of calls a client drops locally, counted under its
// category in the client's load reports.
type Drop struct {
	// Category names the reason ("drop-overload", "drop-ratelimit").
	Category string
	// Share is in (0, 1].
	Share float64
}

// Validate reports whether a can be served: a cluster name, endpoints
// with valid addresses, unique, within the bounds, and drop shares in
// (0, 1].
func (a Assignment) Validate() error {
	if a.Cluster == "" {
		return fmt.Errorf("xds: assignment without a cluster name")
	}
	if a.Shape < ShapeRoundRobin || a.Shape > ShapeLeastRequest {
		return fmt.Errorf("xds: cluster %q: unknown shape %d", a.Cluster, int(a.Shape))
	}
	if len(a.Endpoints) > MaxEndpoints {
		return fmt.Errorf("xds: cluster %q: %d endpoints, at most %d", a.Cluster, len(a.Endpoints), MaxEndpoints)
	}
	seen := make(map[netip.AddrPort]bool, len(a.Endpoints))
	for _, e := range a.Endpoints {
		if !e.Addr.IsValid() || e.Addr.Port() == 0 {
			return fmt.Errorf("xds: cluster %q: endpoint %q has no valid address", a.Cluster, e.ID)
		}
		if seen[e.Addr] {
			return fmt.Errorf("xds: cluster %q: address %v listed twice", a.Cluster, e.Addr)
		}
		seen[e.Addr] = true
		if e.Weight < 1 || e.Weight > MaxWeight {
			return fmt.Errorf("xds: cluster %q: endpoint %q weight %d is not in [1, %d]", a.Cluster, e.ID, e.Weight, MaxWeight)
		}
	}
	for _, d := range a.Drops {
		if d.Category == "" || !(d.Share > 0 && d.Share <= 1) {
			return fmt.Errorf("xds: cluster %q: drop %q share %v is not in (0, 1]", a.Cluster, d.Category, d.Share)
		}
	}
	return nil
}

// ads is the config source that points a client back at the server it
// got the resource from, over its ADS stream.
func ads() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ResourceApiVersion:    corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}},
	}
}

// self is the config source for "the server this came from", which gRPC
// clients accept for the LRS server.
func self() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ResourceApiVersion:    corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Self{Self: &corepb.SelfConfigSource{}},
	}
}

// mustAny wraps m; it panics only on a message that cannot be marshalled,
// which the builders here never make.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: marshalling %T: %v", m, err))
	}
	return a
}

// Listener returns the API listener named name (the client's target,
// "user-srv" for xds:///user-srv): an HTTP connection manager with the
// router filter whose routes come over ADS as RouteConfiguration route.
func Listener(name, route string) *listenerpb.Listener {
	hcm := &hcmpb.HttpConnectionManager{
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{
			ConfigSource:    ads(),
			RouteConfigName: route,
		}},
		HttpFilters: []*hcmpb.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerpb.Router{})},
		}},
	}
	return &listenerpb.Listener{
		Name:        name,
		ApiListener: &listenerpb.ApiListener{ApiListener: mustAny(hcm)},
	}
}

// Route returns the RouteConfiguration named name that sends every call
// to cluster. Under ShapeRingHash the route hashes the client's channel,
// so that each client keeps its endpoint.
func Route(name, cluster string, shape Shape) *routepb.RouteConfiguration {
	action := &routepb.RouteAction{
		ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: cluster},
	}
	if shape == ShapeRingHash {
		action.HashPolicy = []*routepb.RouteAction_HashPolicy{{
			PolicySpecifier: &routepb.RouteAction_HashPolicy_FilterState_{
				FilterState: &routepb.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"},
			},
		}}
	}
	return &routepb.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routepb.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*routepb.Route{{
				Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: ""}},
				Action: &routepb.Route_Route{Route: action},
			}},
		}},
	}
}

// Cluster returns the EDS Cluster of a, whose endpoints come over ADS as
// the ClusterLoadAssignment of the same name. With lrs, clients send
// their load reports to the same server.
func Cluster(a Assignment, lrs bool) *clusterpb.Cluster {
	c := &clusterpb.Cluster{
		Name:                 a.Cluster,
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: ads()},
	}
	switch a.Shape {
	case ShapeRingHash:
		c.LbPolicy = clusterpb.Cluster_RING_HASH
		c.LbConfig = &clusterpb.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterpb.Cluster_RingHashLbConfig{
			HashFunction: clusterpb.Cluster_RingHashLbConfig_XX_HASH,
		}}
	case ShapeLeastRequest:
		c.LbPolicy = clusterpb.Cluster_LEAST_REQUEST
	default:
		c.LbPolicy = clusterpb.Cluster_ROUND_ROBIN
	}
	if lrs {
		c.LrsServer = self()
	}
	return c
}

// LoadAssignment returns the ClusterLoadAssignment of a. Under
// ShapeWeighted each endpoint is a locality of its own, weighted by the
// endpoint's Weight (gRPC clients honour locality weights, not endpoint
// weights, under ROUND_ROBIN); otherwise every endpoint is in one
// locality. Drops become drop_overloads in millionths.
func LoadAssignment(a Assignment) *endpointpb.ClusterLoadAssignment {
	cla := &endpointpb.ClusterLoadAssignment{ClusterName: a.Cluster}
	lb := func(e Endpoint) *endpointpb.LbEndpoint {
		return &endpointpb.LbEndpoint{
			HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
				Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
					Address:       e.Addr.Addr().Unmap().String(),
					PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())},
				}}},
			}},
			HealthStatus: corepb.HealthStatus_HEALTHY,
		}
	}
	if a.Shape == ShapeWeighted {
		for _, e := range a.Endpoints {
			cla.Endpoints = append(cla.Endpoints, &endpointpb.LocalityLbEndpoints{
				Locality:            &corepb.Locality{Region: "lookaside", SubZone: e.ID},
				LbEndpoints:         []*endpointpb.LbEndpoint{lb(e)},
				LoadBalancingWeight: wrapperspb.UInt32(e.Weight),
			})
		}
	} else if len(a.Endpoints) > 0 {
		loc := &endpointpb.LocalityLbEndpoints{
			Locality:            &corepb.Locality{Region: "lookaside"},
			LoadBalancingWeight: wrapperspb.UInt32(1),
		}
		for _, e := range a.Endpoints {
			loc.LbEndpoints = append(loc.LbEndpoints, lb(e))
		}
		cla.Endpoints = []*endpointpb.LocalityLbEndpoints{loc}
	}
	if len(a.Drops) > 0 {
		cla.Policy = &endpointpb.ClusterLoadAssignment_Policy{}
		for _, d := range a.Drops {
			cla.Policy.DropOverloads = append(cla.Policy.DropOverloads, &endpointpb.ClusterLoadAssignment_Policy_DropOverload{
				Category: d.Category,
				DropPercentage: &typepb.FractionalPercent{
					Numerator:   uint32(math.Round(min(max(d.Share, 0), 1) * 1e6)),
					Denominator: typepb.FractionalPercent_MILLION,
				},
			})
		}
	}
	return cla
}
