// Package xdstest dials the balancer's xDS face the way a user's grpc-go
// client does (xds:///name, a bootstrap naming the balancer), for tests.
package xdstest

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
