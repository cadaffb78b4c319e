package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/lbtoken"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	_ "github.com/lookaside-lb/lookaside/resolver/consul" // consul://, the one import a program changes
)

// The resolver tests dial like the programs that used
// github.com/mbobakov/grpc-consul-resolver:
//
//	grpc.Dial("consul://127.0.0.1:8500/user-srv?wait=14s&tag=srv",
//		grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))

const roundRobin = `{"loadBalancingPolicy":"round_robin"}`

// startTagged starts n backends of svc carrying tags and waits until
// Consul reports them passing.
func startTagged(t *testing.T, svc string, n int, tags ...string) []*runningBackend {
	t.Helper()
	var bs []*runningBackend
	for range n {
		bs = append(bs, startBackend(t, svc, func(c *backend.Config) { c.Tags = tags }))
	}
	return bs
}

// registerLB registers the balancer l in Consul as an instance of lbSvc,
// with a gRPC health check every second, and waits until it passes. It
// returns the instance ID; the registration is removed at cleanup.
func registerLB(t *testing.T, l *lb, lbSvc string) string {
	t.Helper()
	id := lbSvc + "-" + strings.NewReplacer(":", "-", ".", "-").Replace(l.addr)
	in := consulreg.Instance{ID: id, Service: lbSvc, Addr: l.addr, CheckInterval: time.Second}
	if err := consulreg.Register(t.Context(), agent.Client(), in); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = consulreg.Deregister(context.Background(), agent.Client(), id) })
	waitPassing(t, lbSvc, 1)
	return id
}

// dialConsul dials target as the seed's program does; the channel is
// closed at cleanup.
func dialConsul(t *testing.T, target string, opts ...grpc.DialOption) (*grpc.ClientConn, userpb.UserClient) {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(roundRobin),
	}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, userpb.NewUserClient(cc)
}

// consulTarget is "consul://<agent>/<svc>?<params>".
func consulTarget(svc, params string) string {
	return fmt.Sprintf("consul://%s/%s?%s", agent.HTTPAddr(), svc, params)
}

// balanced reports whether a call carries its backend's lb-token, which
// only a list from the balancer gives.
func balanced(r *userpb.UserListResponse) bool {
	return r.LbToken != "" && r.LbToken == lbtoken.ForID(r.BackendId)
}

// waitCalls calls c until a call succeeds and satisfies ok.
func waitCalls(t *testing.T, c userpb.UserClient, timeout time.Duration, what string, ok func(*userpb.UserListResponse) bool) {
	t.Helper()
	waitFor(t, timeout, what, func() bool {
		r, err := call(t.Context(), c)
		return err == nil && ok(r)
	})
}

// TestResolverBalancedByLookaside: the seed's program, with the resolver
// import changed and nothing else, is balanced by Lookaside: every call
// carries its backend's lb-token, the balancer receives the client's
// stats, and the calls spread evenly.
func TestResolverBalancedByLookaside(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startTagged(t, svc, 3, "srv")
	canary := startTagged(t, svc, 1, "canary")[0] // not tagged srv: never called
	waitPassing(t, svc, 4)
	l := startLB(t, nil)
	// The default service name of the replicas: the target names none.
	registerLB(t, l, "lookaside")

	start := time.Now()
	// grpc.Dial, deprecated, as in the seed's program.
	cc, err := grpc.Dial(consulTarget(svc, "wait=14s&tag=srv"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(roundRobin))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := userpb.NewUserClient(cc)
	waitCalls(t, c, 20*time.Second, "a call balanced by Lookaside", balanced)
	t.Logf("dial → first call balanced by Lookaside: %v", time.Since(start))
	waitSeen(t, c, bs...)

	const n = 300
	got := map[string]int{}
	for i := range n {
		r, err := call(t.Context(), c)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if !balanced(r) {
			t.Fatalf("call %d to %s arrived with lb-token %q, want %q", i, r.BackendId, r.LbToken, lbtoken.ForID(r.BackendId))
		}
		got[r.BackendId]++
	}
	t.Logf("spread over %d calls: %v", n, got)
	for _, b := range bs {
		if c := got[b.ID()]; c < n/3-10 || c > n/3+10 {
			t.Errorf("backend %s served %d of %d calls, want %d±10", b.ID(), c, n, n/3)
		}
	}
	if got[canary.ID()] != 0 {
		t.Errorf("the instance without the tag served %d calls, want none", got[canary.ID()])
	}
	// The balancer watched the service with the target's tag filter.
	waitFor(t, 10*time.Second, "ClientStats at the balancer", func() bool {
		return l.server().ClientStats().Service(svc+"@srv").KnownReceived >= n
	})
}

// TestResolverFallbackWhileLookasideDown: with every Lookaside replica
// down, calls keep working on the instances (grpclb's fallback) without a
// failure, follow Consul (a backend that joins meanwhile gets calls), and
// go back through Lookaside when a replica returns. The replica leaves
// Consul's passing list first by its failing health check (a crash), then
// by deregistration (a clean stop).
//
// Calls cannot tell fallback by their lb-token: grpc-go's grpclb reuses
// the connections it had to the same addresses for 10 s, tokens included.
// What only the fallback path does is reach a backend the balancer never
// listed for this client.
func TestResolverFallbackWhileLookasideDown(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	target := consulTarget(svc, "wait=14s&tag=srv&lb-service="+lbSvc)
	startTagged(t, svc, 3, "srv")
	waitPassing(t, svc, 3)
	l := startLB(t, nil)
	id := registerLB(t, l, lbSvc)

	_, c := dialConsul(t, target)
	waitCalls(t, c, 20*time.Second, "a call balanced by Lookaside", balanced)
	ld := startLoad(t.Context(), c, 5*time.Millisecond)

	// Crash: the balancer stops; its check turns critical within about a
	// second, the resolver drops it, grpclb falls back to the instances.
	start := time.Now()
	l.stop()
	nb1 := startTagged(t, svc, 1, "srv")[0]
	waitFor(t, 20*time.Second, "calls to the backend that joined while the balancer was down", func() bool {
		return !ld.last(nb1.ID()).IsZero()
	})
	t.Logf("balancer stopped → first call to a backend that joined meanwhile: %v (check interval 1s)", time.Since(start))

	// A channel created now works at once on the instances, without
	// waiting for grpclb's 10 s fallback timeout.
	start = time.Now()
	_, c2 := dialConsul(t, target)
	r, err := call(t.Context(), c2)
	if err != nil {
		t.Fatalf("first call of a channel dialed with no balancer: %v", err)
	}
	t.Logf("dial with every balancer down → first call: %v", time.Since(start))
	if r.LbToken != "" {
		t.Errorf("first call of a channel dialed with no balancer carries lb-token %q", r.LbToken)
	}

	// Back: the restarted replica passes its check; grpclb leaves fallback
	// and reports its calls to the balancer again.
	start = time.Now()
	l.start()
	waitFor(t, 20*time.Second, "calls balanced by the restarted balancer", func() bool {
		return l.server().ClientStats().Service(svc+"@srv").KnownReceived > 0
	})
	t.Logf("balancer restarted → its first ClientStats with calls: %v (ClientStats every 1s)", time.Since(start))

	// Clean stop: deregistered, the replica leaves every channel's list at
	// once; their streams end and the instances serve.
	start = time.Now()
	if err := consulreg.Deregister(t.Context(), agent.Client(), id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the channels to leave the deregistered balancer", func() bool {
		return l.server().Stats().StreamsActive == 0
	})
	t.Logf("balancer deregistered → the channels' streams ended: %v", time.Since(start))
	nb2 := startTagged(t, svc, 1, "srv")[0]
	waitFor(t, 20*time.Second, "calls to the backend that joined after the deregistration", func() bool {
		return !ld.last(nb2.ID()).IsZero()
	})
	l.stop()

	counts, err := ld.finish()
	if err != nil {
		t.Fatalf("calls failed while the balancer went and came: %v", err)
	}
	t.Logf("%d calls under load, none failed; per backend %v", ld.calls.Load(), counts)
}

// TestResolverWithoutLookaside: with lb=off, or in a program that
// disables resolver service configs, the program's round_robin balances
// over the tagged instances by itself: no call carries an lb-token, the
// untagged instance gets none, and the balancer sees no stream.
func TestResolverWithoutLookaside(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	bs := startTagged(t, svc, 3, "srv")
	other := startTagged(t, svc, 1, "canary")[0]
	waitPassing(t, svc, 4)
	l := startLB(t, nil)
	registerLB(t, l, lbSvc)

	for _, tc := range []struct {
		name   string
		params string
		opts   []grpc.DialOption
	}{
		{"lb=off", "wait=14s&tag=srv&lb=off&lb-service=" + lbSvc, nil},
		{"WithDisableServiceConfig", "wait=14s&tag=srv&lb-service=" + lbSvc, []grpc.DialOption{grpc.WithDisableServiceConfig()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c := dialConsul(t, consulTarget(svc, tc.params), tc.opts...)
			waitSeen(t, c, bs...)
			const n = 300
			got := map[string]int{}
			for i := range n {
				r, err := call(t.Context(), c)
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if r.LbToken != "" {
					t.Fatalf("call %d to %s carries lb-token %q: balanced by Lookaside", i, r.BackendId, r.LbToken)
				}
				got[r.BackendId]++
			}
			t.Logf("spread over %d calls: %v", n, got)
			for _, b := range bs {
				// Client-side round robin over three ready backends.
				if c := got[b.ID()]; c < n/3-2 || c > n/3+2 {
					t.Errorf("backend %s served %d of %d calls, want %d±2", b.ID(), c, n, n/3)
				}
			}
			if got[other.ID()] != 0 {
				t.Errorf("the instance without tag srv served %d calls", got[other.ID()])
			}
		})
	}
	if got := l.server().Stats().StreamsStarted; got != 0 {
		t.Errorf("the balancer saw %d streams, want none", got)
	}
}

// TestResolverCloseLeavesNoGoroutine: closing a channel ends every
// goroutine the resolver started (both watch loops, the run loop, the
// connections to Consul) and every one the channel started.
//
// Not parallel: goroutines are compared with those running before the
// channel was created, so nothing else may start any meanwhile (parallel
// tests only start once the sequential ones are done). The balancer is
// the lbserver binary, registering itself: an in-process one would open
// connections to Consul of its own meanwhile.
func TestResolverCloseLeavesNoGoroutine(t *testing.T) {
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	startTagged(t, svc, 2, "srv")
	waitPassing(t, svc, 2)
	lbBin, _ := buildCmds(t)
	startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(), "-log-level", "warn",
		"-register", "-register-service", lbSvc, "-check-interval", "1s")
	waitPassing(t, lbSvc, 1)
	target := consulTarget(svc, "tag=srv&lb-service="+lbSvc)

	// A first channel warms the balancer up (its per-service watcher
	// lingers after the stream ends, by design).
	warm, c := dialConsul(t, target)
	waitCalls(t, c, 20*time.Second, "a call balanced by Lookaside", balanced)
	warm.Close()
	time.Sleep(200 * time.Millisecond)

	before := goleak.IgnoreCurrent()
	for _, params := range []string{"", "&lb=off"} {
		cc, err := grpc.NewClient(target+params,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(roundRobin))
		if err != nil {
			t.Fatal(err)
		}
		c := userpb.NewUserClient(cc)
		ok := balanced
		if params != "" {
			ok = func(r *userpb.UserListResponse) bool { return r.LbToken == "" }
		}
		waitCalls(t, c, 20*time.Second, "a call", ok)
		start := time.Now()
		if err := cc.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("Close%s took %v", params, time.Since(start))
	}
	if err := goleak.Find(before); err != nil {
		t.Errorf("goroutines left after Close: %v", err)
	}
}
