package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/internal/loadgen"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// loadBackend is a backend that reports its load every 100 ms, with calls
// in flight / capacity as its utilization, and a base latency.
func loadBackend(t testing.TB, svc string, tweak func(*backend.Config)) *runningBackend {
	return startBackend(t, svc, func(c *backend.Config) {
		c.ORCAMinInterval = 100 * time.Millisecond
		c.LoadWindow = time.Second
		c.Capacity = 8
		c.Latency = 5 * time.Millisecond
		if tweak != nil {
			tweak(c)
		}
	})
}

// fastLoad is the balancer side of loadBackend: reports every 100 ms, a
// short blackout, quick publication.
func fastLoad(policyName string) func(*lbserver.Config) {
	return func(c *lbserver.Config) {
		c.Policy = policyName
		c.ClientStatsInterval = time.Second
		c.LoadReport.Interval = 100 * time.Millisecond
		c.LoadWeight.BlackoutPeriod = time.Second
		c.LoadWeight.MinUpdateInterval = 200 * time.Millisecond
	}
}

// closedLoop runs workers that call c back to back for d (at most 2000
// calls each) and returns what happened.
func closedLoop(ctx context.Context, c userpb.UserClient, workers int, d time.Duration) loadgen.Result {
	return loadgen.ClosedLoop(ctx, workers, d, 2000, func(ctx context.Context) (string, error) {
		r, err := call(ctx, c)
		if err != nil {
			return "", err
		}
		return r.BackendId, nil
	})
}

// TestLeastLoadAvoidsSlowBackend: four backends, one four times slower.
// With least_load its share of calls falls well below a quarter, and rises
// back when it recovers.
func TestLeastLoadAvoidsSlowBackend(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	var bs []*runningBackend
	for range 4 {
		bs = append(bs, loadBackend(t, svc, nil))
	}
	waitPassing(t, svc, 4)
	slow := bs[0]
	slow.SetLatency(20 * time.Millisecond)
	l := startLB(t, fastLoad(leastload.Name))
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)

	closedLoop(t.Context(), c, 8, 4*time.Second) // reports, blackout, weights
	res := closedLoop(t.Context(), c, 8, 3*time.Second)
	t.Logf("slow backend: %.1f%% of %v calls; p50 %v, p99 %v", 100*res.Share(slow.ID()), res.Calls, res.Percentile(0.5), res.Percentile(0.99))
	if len(res.Failures) > 0 {
		t.Errorf("calls failed: %v", res.Failures)
	}
	if s := res.Share(slow.ID()); s > 0.15 {
		t.Errorf("slow backend got %.1f%% of calls, want well below 25%% (≤ 15%%)", 100*s)
	}

	slow.SetLatency(5 * time.Millisecond)
	var rec loadgen.Result
	waitFor(t, 30*time.Second, "the recovered backend's share to rise back", func() bool {
		rec = closedLoop(t.Context(), c, 8, 2*time.Second)
		return rec.Share(slow.ID()) > 0.18
	})
	t.Logf("recovered backend: %.1f%% of %v calls", 100*rec.Share(slow.ID()), rec.Calls)
}

// TestOverloadDrops: when every backend reports utilization above the
// threshold, clients drop the computed share of calls locally and report
// them per token; the drops stop when the load falls.
func TestOverloadDrops(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	var bs []*runningBackend
	for range 3 {
		bs = append(bs, loadBackend(t, svc, nil))
	}
	waitPassing(t, svc, 3)
	// A round_robin service drops for overload only with its own bound.
	l := startLB(t, func(c *lbserver.Config) {
		fastLoad("round_robin")(c)
		c.Services = map[string]lbserver.ServiceSettings{svc: {MaxDropShare: 0.5}}
	})
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)

	for _, b := range bs {
		b.SetAppUtilization(1.5) // 0.9/1.5: a 40 % share to drop
	}
	var res loadgen.Result
	waitFor(t, 20*time.Second, "calls to be dropped", func() bool {
		res = closedLoop(t.Context(), c, 4, time.Second)
		return res.Failures[codes.Unavailable] > 0
	})
	res = closedLoop(t.Context(), c, 4, 2*time.Second)
	total := res.Failures[codes.Unavailable]
	for _, n := range res.Calls {
		total += n
	}
	dropped := float64(res.Failures[codes.Unavailable]) / float64(total)
	t.Logf("utilization 1.5: %.1f%% of %d calls dropped (target 40%%)", 100*dropped, total)
	if dropped < 0.3 || dropped > 0.5 {
		t.Errorf("dropped %.1f%% of calls, want about 40%%", 100*dropped)
	}
	waitFor(t, 10*time.Second, "ClientStats to count drops per token", func() bool {
		return l.server().ClientStats().Service(svc).Dropped[policy.DropTokenOverload] > 0
	})

	for _, b := range bs {
		b.SetAppUtilization(0.3)
	}
	waitFor(t, 20*time.Second, "the drops to stop", func() bool {
		res = closedLoop(t.Context(), c, 4, time.Second)
		return len(res.Failures) == 0
	})
}

// TestBackendWithoutORCA: an instance that serves no load reports still
// gets traffic under least_load, by its Consul weight.
func TestBackendWithoutORCA(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	var bs []*runningBackend
	for range 2 {
		bs = append(bs, loadBackend(t, svc, nil))
	}
	plain := startPlainBackend(t, svc)
	waitPassing(t, svc, 3)
	l := startLB(t, fastLoad(leastload.Name))
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)
	closedLoop(t.Context(), c, 6, 3*time.Second)
	res := closedLoop(t.Context(), c, 6, 2*time.Second)
	t.Logf("calls: %v", res.Calls)
	if s := res.Share(plain); s < 0.15 {
		t.Errorf("the backend without ORCA got %.1f%% of calls, want about a third (≥ 15%%)", 100*s)
	}
}

// startPlainBackend serves the User service with a health service but no
// ORCA, registered in Consul; it returns its instance ID.
func startPlainBackend(t *testing.T, svc string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%s-plain-%d", svc, lis.Addr().(*net.TCPAddr).Port)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	userpb.RegisterUserServer(gs, &backend.UserService{ID: id, Addr: lis.Addr().String()})
	go gs.Serve(lis)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := consulreg.Register(ctx, agent.Client(), consulreg.Instance{ID: id, Service: svc, Addr: lis.Addr().String(), CheckInterval: time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := consulreg.Deregister(context.Background(), agent.Client(), id); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("deregister: %v", err)
		}
		gs.Stop()
	})
	return id
}
