package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"github.com/lookaside-lb/lookaside/xds"
)

// xdsClient dials xds:///target as a user's grpc-go client does with a
// bootstrap (lbserver xds-bootstrap) naming the balancer at addr: the
// bootstrap is given to this client's resolver rather than through
// GRPC_XDS_BOOTSTRAP, so that tests in one process each have their own.
func xdsClient(t testing.TB, addr, target string) userpb.UserClient {
	t.Helper()
	boot, err := xds.Bootstrap(xds.BootstrapOptions{Server: addr, NodeID: t.Name()})
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
	return userpb.NewUserClient(cc)
}

// TestXDSRoundRobin: an xDS client of a round_robin service spreads its
// calls evenly, and its load reports reach the balancer's client stats.
func TestXDSRoundRobin(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := xdsClient(t, l.addr, svc)
	waitSeen(t, c, bs...)
	before := l.server().ClientStats().Service(svc).Started
	const calls = 900
	checkShares(t, "calls", bs, []int{1, 1, 1}, spread(t, c, calls), 0.01)
	// LRS reports (every second here) count as grpclb ClientStats.
	waitFor(t, 10*time.Second, "the xDS client's load reports", func() bool {
		return l.server().ClientStats().Service(svc).Started >= before+calls
	})
}

// TestXDSWeightedShares: under weighted_round_robin, an xDS client's calls
// follow the Consul weights (one locality per endpoint, weighted).
func TestXDSWeightedShares(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	weights := []int{1, 1, 2}
	bs := startWeighted(t, svc, nil, weights...)
	l := startLB(t, withPolicy(weightedroundrobin.Name))
	c := xdsClient(t, l.addr, svc)
	waitSeen(t, c, bs...)
	// grpc-go picks localities at random by weight: over 10,000 calls a
	// share's standard deviation is 0.5 point at most.
	start := time.Now()
	got := spread(t, c, 10000)
	t.Logf("10000 calls in %v", time.Since(start).Round(time.Millisecond))
	checkShares(t, "calls", bs, weights, got, 0.02)
}

// TestXDSBackendLeavesAndJoins: a backend that deregisters stops getting
// an xDS client's calls promptly, with no failed call, and one that
// registers gets calls.
func TestXDSBackendLeavesAndJoins(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := xdsClient(t, l.addr, svc)
	waitSeen(t, c, bs...)

	ld := startLoadFor(t.Context(), c, 2*time.Millisecond, 30*time.Second)
	defer ld.finish()
	gone := bs[0]
	start := time.Now()
	// Deregisters, waits the drain delay (300 ms) serving, then stops.
	gone.stop(t)
	last := ld.last(gone.ID())
	t.Logf("leaving backend: last call %v after its deregistration began (drain delay 300ms)", last.Sub(start).Round(time.Millisecond))
	if d := last.Sub(start); d > 2*time.Second {
		t.Errorf("leaving backend got calls %v after its deregistration, want under 2s", d)
	}

	joined := time.Now()
	nb := startBackend(t, svc, nil)
	waitFor(t, 20*time.Second, "calls to the new backend", func() bool { return !ld.last(nb.ID()).IsZero() })
	t.Logf("joining backend: first calls %v after it started (its Consul check passes within 1s)", time.Since(joined).Round(time.Millisecond))

	counts, err := ld.finish()
	if err != nil {
		t.Errorf("failed calls while a backend left and one joined: %v", err)
	}
	t.Logf("calls per backend: %v", counts)
}

// TestXDSUnknownService: an xDS client naming a service Consul does not
// list fails its calls once its does-not-exist timer (15 s in grpc-go)
// fires, and the balancer watches nothing for it.
func TestXDSUnknownService(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the client's 15 s does-not-exist timer")
	}
	t.Parallel()
	svc := serviceName(t)
	startBackends(t, svc, 1) // the directory has a service: it is read
	l := startLB(t, nil)
	waitFor(t, 20*time.Second, "the balancer to read the directory", l.server().Ready)
	c := xdsClient(t, l.addr, svc+"-nosuch")
	watches := l.server().Stats().WatchesStarted
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 2}, grpc.WaitForReady(false))
	t.Logf("call for an unknown service: %v after %v", err, time.Since(start).Round(time.Millisecond))
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("call for an unknown service: %v, want Unavailable", err)
	}
	if st := l.server().Stats(); st.WatchesStarted != watches || st.UnknownServices == 0 {
		t.Errorf("unknown service: %d watches started (was %d), %d unknown names counted; want no watch and the name counted", st.WatchesStarted, watches, st.UnknownServices)
	}
}
