// Package xdstest dials the balancer's xDS face the way a user's grpc-go
// client does (xds:///name, a bootstrap naming the balancer), for tests.
package xdstest

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/lookaside-lb/lookaside/xds"
)

// Dial returns a ClientConn to xds:///target through grpc-go's xDS
// client, with the bootstrap xds.Bootstrap makes of o (an empty NodeID
// becomes the test's name) and plaintext calls to the backends. The
// connection closes when the test ends (closing it before is fine too).
// It fails the test if the bootstrap or the dial does.
func Dial(t testing.TB, o xds.BootstrapOptions, target string) *grpc.ClientConn {
	t.Helper()
	if o.NodeID == "" {
		o.NodeID = t.Name()
	}
	boot, err := xds.Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// RawADS opens a bare ADS stream to the plaintext server at addr, to play
// a client message by message. The stream ends with the test, or after
// 30 s.
func RawADS(t testing.TB, addr string) discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	s, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// HealthBackends starts n gRPC servers on loopback that serve only the
// health service (a call's peer tells which answered), stopped when the
// test ends, and returns their addresses.
func HealthBackends(t testing.TB, n int) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		healthpb.RegisterHealthServer(gs, health.NewServer())
		go gs.Serve(lis)
		t.Cleanup(gs.Stop)
		out = append(out, netip.MustParseAddrPort(lis.Addr().String()))
	}
	return out
}

// Addrs returns the addresses of cla's endpoints ("host:port"), in order.
func Addrs(cla *endpointpb.ClusterLoadAssignment) []string {
	var addrs []string
	for _, loc := range cla.GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			addrs = append(addrs, net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))))
		}
	}
	return addrs
}
