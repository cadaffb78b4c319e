package e2e

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"github.com/lookaside-lb/lookaside/xds"
	"github.com/lookaside-lb/lookaside/xds/xdstest"
)

// xdsClient dials xds:///target as a user's grpc-go client does with a
// bootstrap (lbserver xds-bootstrap) naming the balancer at addr: the
// bootstrap is given to this client's resolver rather than through
// GRPC_XDS_BOOTSTRAP, so that tests in one process each have their own.
func xdsClient(t testing.TB, addr, target string) userpb.UserClient {
	t.Helper()
	return xdsClientWith(t, xds.BootstrapOptions{Server: addr}, target)
}

// xdsClientWith is xdsClient with a bootstrap made from o (TLS files to
// the balancer); an empty NodeID becomes the test's name.
func xdsClientWith(t testing.TB, o xds.BootstrapOptions, target string) userpb.UserClient {
	t.Helper()
	return userpb.NewUserClient(xdstest.Dial(t, o, target))
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

// TestXDSMixedFleet: grpclb and xDS clients of one weighted service, at
// once, both follow the Consul weights.
func TestXDSMixedFleet(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	weights := []int{1, 1, 2}
	bs := startWeighted(t, svc, nil, weights...)
	l := startLB(t, withPolicy(weightedroundrobin.Name))
	gc := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	xc := xdsClient(t, l.addr, svc)
	waitSeen(t, gc, bs...)
	waitSeen(t, xc, bs...)
	gl := startLoadFor(t.Context(), gc, time.Millisecond, 4*time.Second)
	xl := startLoadFor(t.Context(), xc, time.Millisecond, 4*time.Second)
	time.Sleep(4 * time.Second)
	gcounts, gerr := gl.finish()
	xcounts, xerr := xl.finish()
	if err := errors.Join(gerr, xerr); err != nil {
		t.Errorf("failed calls: %v", err)
	}
	checkShares(t, "grpclb client", bs, weights, gcounts, 0.02)
	// About 3,000 calls picked at random by weight: σ ≤ 0.9 point.
	checkShares(t, "xDS client", bs, weights, xcounts, 0.035)
}

// TestXDSBalancerRestart: xDS clients keep their configuration while the
// balancer restarts under load, and fail no call.
func TestXDSBalancerRestart(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := xdsClient(t, l.addr, svc)
	waitSeen(t, c, bs...)
	ld := startLoadFor(t.Context(), c, 2*time.Millisecond, 30*time.Second)
	defer ld.finish()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	l.stop()
	t.Logf("balancer stopped in %v", time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second)
	l.start()
	// After the restart the client's new stream gets the same resources,
	// and later changes reach it: a new backend gets calls.
	nb := startBackend(t, svc, nil)
	waitFor(t, 20*time.Second, "calls to a backend that joined after the restart", func() bool { return !ld.last(nb.ID()).IsZero() })
	counts, err := ld.finish()
	if err != nil {
		t.Errorf("failed calls across the balancer's restart: %v", err)
	}
	for _, b := range bs {
		if counts[b.ID()] == 0 {
			t.Errorf("backend %s got no call: %v", b.ID(), counts)
		}
	}
	t.Logf("%d calls across the restart, per backend %v", ld.calls.Load(), counts)
}

// TestXDSRateLimitDrops: an xDS client's load reports feed the service's
// rate limit, and the drop share it leads to reaches the client as
// drop_overloads: the calls it lets through come near the limit.
func TestXDSRateLimitDrops(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	startBackends(t, svc, 2)
	const limit = 100.0
	l := startLB(t, func(c *lbserver.Config) {
		c.Services = map[string]lbserver.ServiceSettings{svc: {RateLimit: limit}}
		c.MaxClientRateShare = 100 // one client may make the whole offered rate
	})
	c := xdsClient(t, l.addr, svc)
	waitFor(t, 20*time.Second, "a first call", func() bool { _, err := call(t.Context(), c); return err == nil })
	ld := startLoadFor(t.Context(), c, 2*time.Millisecond, 30*time.Second)
	defer ld.finish()
	ok := func() int {
		ld.mu.Lock()
		defer ld.mu.Unlock()
		n := 0
		for _, v := range ld.counts {
			n += v
		}
		return n
	}
	// Reports every second; the share settles within a few.
	time.Sleep(6 * time.Second)
	ok0, all0, t0 := ok(), ld.calls.Load(), time.Now()
	time.Sleep(4 * time.Second)
	ok1, all1, t1 := ok(), ld.calls.Load(), time.Now()
	secs := t1.Sub(t0).Seconds()
	passed, offered := float64(ok1-ok0)/secs, float64(all1-all0)/secs
	t.Logf("offered %.0f calls/s, passed %.0f calls/s (limit %.0f), dropped share %.2f", offered, passed, limit, 1-passed/offered)
	if offered < 2*limit {
		t.Skipf("the machine offered only %.0f calls/s", offered)
	}
	if passed < 0.6*limit || passed > 1.4*limit {
		t.Errorf("passed %.0f calls/s, want the limit %.0f ± 40%%", passed, limit)
	}
	for _, err := range ld.failed() {
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("a failed call is not a drop: %v", err)
		}
	}
}
