package e2e

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/lbtoken"
)

// TestSpreadTokenAndClientStats: calls spread evenly over three backends,
// each carries the backend's lb-token, and the client's stats reach the
// balancer.
func TestSpreadTokenAndClientStats(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)

	const n = 300
	got := map[string]int{}
	for i := range n {
		r, err := call(t.Context(), c)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		got[r.BackendId]++
		if want := lbtoken.ForID(r.BackendId); r.LbToken != want {
			t.Fatalf("call %d to %s arrived with lb-token %q, want %q", i, r.BackendId, r.LbToken, want)
		}
	}
	t.Logf("spread over %d calls: %v", n, got)
	for _, b := range bs {
		if c := got[b.ID()]; c < n/3-10 || c > n/3+10 {
			t.Errorf("backend %s served %d of %d calls, want %d±10", b.ID(), c, n, n/3)
		}
	}
	waitFor(t, 10*time.Second, "ClientStats at the balancer", func() bool {
		return l.server().ClientStats().Service(svc).KnownReceived >= n
	})
	cs := l.server().ClientStats().Service(svc)
	if cs.Started < n || cs.Finished < n || cs.FailedToSend != 0 {
		t.Errorf("client stats %+v: want ≥ %d started and finished, none failed to send", cs, n)
	}
}

// TestLeaveAndJoin: a deregistered backend and an unhealthy backend leave
// the client's rotation quickly, with no failed call; a new backend joins.
func TestLeaveAndJoin(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)
	ld := startLoad(t.Context(), c, 5*time.Millisecond)
	// The load itself must have reached bs[0] before it leaves: a change
	// reaches the client in tens of milliseconds, a few ticks of the load.
	waitFor(t, 10*time.Second, "the load to reach every backend", func() bool {
		return !ld.last(bs[0].ID()).IsZero() && !ld.last(bs[1].ID()).IsZero() && !ld.last(bs[2].ID()).IsZero()
	})

	// Deregistered: gone from Consul's answer at once.
	start := time.Now()
	if err := bs[0].Deregister(); err != nil {
		t.Fatal(err)
	}
	logged := false
	waitFor(t, 10*time.Second, "the deregistered backend to leave the rotation", func() bool {
		if time.Since(ld.last(bs[0].ID())) > 500*time.Millisecond {
			return true
		}
		if !logged && time.Since(start) > 9*time.Second {
			logged = true
			counts, calls := snapshotCounts(ld)
			t.Logf("still calling %s %v after its deregistration: %d calls, per backend %v", bs[0].ID(), time.Since(start), calls, counts)
		}
		return false
	})
	deregDelay := ld.last(bs[0].ID()).Sub(start)
	t.Logf("deregistration → last call to that backend: %v", deregDelay)
	if deregDelay > 2*time.Second {
		t.Errorf("deregistered backend served calls for %v, want under 2s", deregDelay)
	}

	// Unhealthy: Consul's gRPC check (1 s interval) sees NOT_SERVING.
	start = time.Now()
	bs[1].SetServing(false)
	waitFor(t, 15*time.Second, "the unhealthy backend to leave the rotation", func() bool {
		return time.Since(ld.last(bs[1].ID())) > 500*time.Millisecond
	})
	unhealthyDelay := ld.last(bs[1].ID()).Sub(start)
	t.Logf("NOT_SERVING → last call to that backend: %v (check interval 1s)", unhealthyDelay)
	if unhealthyDelay > 5*time.Second {
		t.Errorf("unhealthy backend served calls for %v, want under 5s", unhealthyDelay)
	}

	// A new backend joins.
	start = time.Now()
	nb := startBackend(t, svc, nil)
	waitFor(t, 15*time.Second, "the new backend to get calls", func() bool {
		return !ld.last(nb.ID()).IsZero()
	})
	t.Logf("registration → first call to the new backend: %v", ld.last(nb.ID()).Sub(start))

	// The healthy ones share the load again.
	before, _ := snapshotCounts(ld)
	time.Sleep(500 * time.Millisecond)
	counts, err := ld.finish()
	if err != nil {
		t.Fatalf("calls failed during the changes: %v", err)
	}
	for _, b := range []*runningBackend{bs[2], nb} {
		if counts[b.ID()]-before[b.ID()] == 0 {
			t.Errorf("backend %s got no calls at the end; counts %v", b.ID(), counts)
		}
	}
	t.Logf("%d calls, none failed; per backend %v", ld.calls.Load(), counts)
}

func snapshotCounts(l *load) (map[string]int, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.counts), l.calls.Load()
}

// TestBalancerRestartFailsNoCall: the balancer going away and coming back
// mid-load fails no call; clients keep their backends meanwhile and take
// the new balancer's lists afterwards.
func TestBalancerRestartFailsNoCall(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, nil)
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)
	ld := startLoad(t.Context(), c, 5*time.Millisecond)
	time.Sleep(500 * time.Millisecond)

	l.stop()
	time.Sleep(1500 * time.Millisecond) // clients are on their own now
	_, callsWhileDown := snapshotCounts(ld)
	l.start()
	waitFor(t, 20*time.Second, "the client to reconnect to the restarted balancer", func() bool {
		return l.server().Stats().ListsSent >= 1
	})
	// A backend added now is only known through the new balancer.
	nb := startBackend(t, svc, nil)
	waitFor(t, 15*time.Second, "calls to the backend added after the restart", func() bool {
		return !ld.last(nb.ID()).IsZero()
	})
	counts, err := ld.finish()
	if err != nil {
		t.Fatalf("calls failed across the balancer restart: %v", err)
	}
	t.Logf("%d calls (%d by the time the balancer came back), none failed; per backend %v", ld.calls.Load(), callsWhileDown, counts)
}

// TestUnknownServiceGetsFallback: a name that maps to no service gets a
// FallbackResponse, and the client uses its fallback addresses at once
// rather than after its 10 s fallback timeout.
func TestUnknownServiceGetsFallback(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	b := startBackend(t, svc, nil)
	l := startLB(t, nil)
	c := client(t, lbdial.Options{Target: "no-such-service:50051", Balancers: []string{l.addr}, Fallback: []string{b.Addr()}})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	r, err := call(ctx, c)
	if err != nil {
		t.Fatalf("call through fallback: %v", err)
	}
	t.Logf("first call served by fallback after %v", time.Since(start))
	if r.BackendId != b.ID() || r.LbToken != "" {
		t.Errorf("served by %s with token %q; want the fallback backend %s and no token", r.BackendId, r.LbToken, b.ID())
	}
	if got := l.server().Stats().FallbacksSent; got < 1 {
		t.Errorf("FallbacksSent = %d, want ≥ 1", got)
	}
}

// TestPickFirstChild: clients with the pick_first child policy each stay
// on one backend (their list's first entry), and different clients are
// spread by the per-stream rotation.
func TestPickFirstChild(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	startBackends(t, svc, 3)
	l := startLB(t, nil)
	used := map[string]int{}
	for i := range 9 {
		c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}, PickFirst: true})
		got := spread(t, c, 20)
		if len(got) != 1 {
			t.Fatalf("pick_first client %d used %d backends: %v", i, len(got), got)
		}
		for id := range got {
			used[id]++
		}
	}
	t.Logf("pick_first clients per backend: %v", used)
	if len(used) < 2 {
		t.Errorf("9 pick_first clients all went to one backend: %v", used)
	}
}

// TestIdleStreamKeepalive: an idle client keeps its balancer stream for
// more than 90 s. grpc-go pings its balancer every 20 s; a server with
// grpc's default enforcement would answer with too_many_pings GOAWAYs and
// the client would reconnect.
func TestIdleStreamKeepalive(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 95 s")
	}
	t.Parallel()
	svc := serviceName(t)
	startBackends(t, svc, 1)
	l := startLB(t, func(c *lbserver.Config) { c.ClientStatsInterval = 0 })
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	spread(t, c, 1)
	if got := l.server().Stats().StreamsStarted; got != 1 {
		t.Fatalf("StreamsStarted = %d before idling, want 1", got)
	}
	time.Sleep(95 * time.Second)
	spread(t, c, 1)
	st := l.server().Stats()
	if st.StreamsStarted != 1 || st.StreamsActive != 1 {
		t.Fatalf("after 95 s idle: %d streams started, %d active; want exactly 1 and 1 (no reconnect)", st.StreamsStarted, st.StreamsActive)
	}
}
