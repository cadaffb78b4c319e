package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/internal/loadgen"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// Latency outliers end to end: backends in this process report their mean
// calls in flight over ORCA (every 100 ms, over a 1 s window), the
// balancer ejects the slow one as a latency outlier and gives it a probe
// share, a grpclb client sees it in the calls it makes. The tests are not
// parallel: they measure latency.

// oracleClient dials addrs directly with round_robin: what a client
// would get if it knew which backends to avoid.
func oracleClient(t testing.TB, addrs []string) userpb.UserClient {
	t.Helper()
	r := manual.NewBuilderWithScheme(fmt.Sprintf("oracle%d", oracleSeq.Add(1)))
	var state resolver.State
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	cc, err := grpc.NewClient(r.Scheme()+":///oracle", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return userpb.NewUserClient(cc)
}

var oracleSeq atomic.Uint64

// endpointStatus returns the status of backend id in service svc on l.
func endpointStatus(l *lb, svc, id string) (lbserver.ServiceStatus, lbserver.EndpointStatus, bool) {
	for _, st := range l.server().Status() {
		if st.Service != svc {
			continue
		}
		for _, e := range st.Endpoints {
			if e.ID == id {
				return st, e, true
			}
		}
	}
	return lbserver.ServiceStatus{}, lbserver.EndpointStatus{}, false
}

// logResult logs what a load did.
func logResult(t testing.TB, what string, res loadgen.Result, slowID string) {
	t.Helper()
	t.Logf("%s: %d calls, %.0f calls/s, p50 %v, p90 %v, p99 %v, slow backend %.2f%%, failures %v",
		what, res.Total(), res.Rate(), res.Percentile(0.5).Round(10*time.Microsecond), res.Percentile(0.9).Round(10*time.Microsecond),
		res.Percentile(0.99).Round(10*time.Microsecond), 100*res.Share(slowID), res.Failures)
}

// TestOutlierSlowBackend: five backends (5 ms of sleep per call), one
// four times slower: 20 ms of sleep, or 5 ms of sleep and 15 ms of CPU
// (the others then spin 0.25 ms each call). least_load ejects it as a
// latency outlier: it gets under 1 % of the calls, so the p99 is no longer
// its latency; the figures are logged next to round robin over the four
// fast ones (the oracle). When its latency is back to normal it wins its
// fair share back within 10 s.
func TestOutlierSlowBackend(t *testing.T) {
	for _, sc := range []struct {
		name          string
		fast          func(*backend.Config)
		slow, recover func(*runningBackend)
	}{
		{"sleep", nil,
			func(b *runningBackend) { b.SetLatency(20 * time.Millisecond) },
			func(b *runningBackend) { b.SetLatency(5 * time.Millisecond) }},
		{"cpu", func(c *backend.Config) { c.CallCPU = 250 * time.Microsecond },
			func(b *runningBackend) { b.SetCallCPU(15 * time.Millisecond) },
			func(b *runningBackend) { b.SetCallCPU(250 * time.Microsecond) }},
	} {
		t.Run(sc.name, func(t *testing.T) {
			svc := serviceName(t)
			var bs []*runningBackend
			for range 5 {
				bs = append(bs, loadBackend(t, svc, sc.fast))
			}
			waitPassing(t, svc, 5)
			slow := bs[0]
			sc.slow(slow)
			l := startLB(t, fastLoad(leastload.Name))
			c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
			waitSeen(t, c, bs...)
			testSlowBackend(t, svc, l, c, bs, func() { sc.recover(slow) })
		})
	}
}

// testSlowBackend is TestOutlierSlowBackend once the backends (bs[0] the
// slow one) and the balancer l run, c a client of it; recover makes the
// slow one fast again.
func testSlowBackend(t *testing.T, svc string, l *lb, c userpb.UserClient, bs []*runningBackend, recover func()) {
	slow := bs[0]
	// Reports, blackout, ejection.
	warm := closedLoop(t.Context(), c, 8, 3*time.Second)
	logResult(t, "warm-up", warm, slow.ID())
	waitFor(t, 10*time.Second, "the slow backend to be ejected", func() bool {
		_, e, ok := endpointStatus(l, svc, slow.ID())
		return ok && e.Outlier
	})
	st, e, _ := endpointStatus(l, svc, slow.ID())
	t.Logf("status: slow backend latency %v (outlier %v), median %v, %d ejection(s)", e.Latency, e.Outlier, st.MedianLatency, st.OutlierEjections)
	if e.Latency < 2*st.MedianLatency || st.MedianLatency < 5*time.Millisecond {
		t.Errorf("status: slow backend latency %v, median %v; want the median at least 5ms and the slow one above twice it", e.Latency, st.MedianLatency)
	}

	// least_load and the oracle in turns, so that they share the noise of
	// the machine.
	var fast []string
	for _, b := range bs[1:] {
		fast = append(fast, b.Addr())
	}
	oc := oracleClient(t, fast)
	var res, oracle loadgen.Result
	for range 3 {
		res.Add(closedLoop(t.Context(), c, 8, 2*time.Second))
		oracle.Add(closedLoop(t.Context(), oc, 8, 2*time.Second))
	}
	logResult(t, "least_load, one slow backend ejected", res, slow.ID())
	logResult(t, "oracle (round robin over the four fast ones)", oracle, slow.ID())
	t.Logf("oracle's p99.4: %v (the fast calls' percentile least_load's p99 falls on)", oracle.Percentile(0.994).Round(10*time.Microsecond))
	p99, rate := float64(res.Percentile(0.99))/float64(oracle.Percentile(0.99)), res.Rate()/oracle.Rate()
	t.Logf("least_load / oracle: p99 %.2f×, calls/s %.3f×", p99, rate)
	if len(res.Failures) > 0 {
		t.Errorf("calls failed: %v", res.Failures)
	}
	if s := res.Share(slow.ID()); s >= 0.01 || res.Calls[slow.ID()] == 0 {
		t.Errorf("slow backend got %.2f%% of calls (%d), want a probe share: some, under 1%%", 100*s, res.Calls[slow.ID()])
	}
	// The goal is p99 ≤ 1.5× and calls/s ≥ 0.95× the oracle's, measured in
	// docs/RELIABILITY.md. Here the bounds only catch a gross regression:
	// on a shared machine the p99 of a few thousand calls is a few dozen
	// calls in a noisy tail, and the probe's 0.6 % of slow calls move it to
	// the fast calls' 99.4th percentile.
	if p99 > 3 || rate < 0.8 {
		t.Errorf("least_load / oracle: p99 %.2f×, calls/s %.3f×; want p99 ≤ 3× and calls/s ≥ 0.8×", p99, rate)
	}

	// Recovery: the share of 500 ms windows of calls until it is back to
	// at least three quarters of a fair fifth.
	recover()
	start := time.Now()
	var took time.Duration
	for took == 0 && time.Since(start) < 20*time.Second {
		w := closedLoop(t.Context(), c, 8, 500*time.Millisecond)
		if w.Share(slow.ID()) >= 0.75*0.2 {
			took = time.Since(start)
			logResult(t, "first window at a fair share", w, slow.ID())
		}
	}
	st, e, _ = endpointStatus(l, svc, slow.ID())
	t.Logf("recovered backend back to its fair share after %v; status: latency %v, outlier %v, %d ejection(s)", took.Round(10*time.Millisecond), e.Latency, e.Outlier, st.OutlierEjections)
	if took == 0 || took > 10*time.Second {
		t.Errorf("recovered backend back to its fair share after %v (0: not within 20s), want within 10s", took)
	}
}

// TestOutlierReplicasDoNotOscillate: two balancer replicas compute weights
// independently from the same backends' reports, clients split between
// them. The slow backend is CPU-bound (its latency grows with its load:
// 5 ms of sleep and 20 ms of CPU per call, against 5 ms and 0.25 ms for
// the others): once ejected it gets little load and its latency falls, but
// not under the readmission line. Each replica ejects it once and keeps it out; the
// slow backend's share stays under 1 % for the clients of both.
func TestOutlierReplicasDoNotOscillate(t *testing.T) {
	svc := serviceName(t)
	var bs []*runningBackend
	for range 4 {
		bs = append(bs, loadBackend(t, svc, func(c *backend.Config) { c.CallCPU = 250 * time.Microsecond }))
	}
	slow := loadBackend(t, svc, func(c *backend.Config) { c.CallCPU = 20 * time.Millisecond })
	bs = append(bs, slow)
	waitPassing(t, svc, 5)
	lbs := []*lb{startLB(t, fastLoad(leastload.Name)), startLB(t, fastLoad(leastload.Name))}
	var clients []userpb.UserClient
	for _, l := range lbs {
		c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
		waitSeen(t, c, bs...)
		clients = append(clients, c)
	}

	// Both replicas under load until both have ejected it.
	load := func(d time.Duration) []loadgen.Result {
		out := make([]loadgen.Result, len(clients))
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Go(func() { out[i] = closedLoop(t.Context(), c, 2, d) })
		}
		wg.Wait()
		return out
	}
	ejected := func(l *lb) bool {
		_, e, ok := endpointStatus(l, svc, slow.ID())
		return ok && e.Outlier
	}
	deadline := time.Now().Add(15 * time.Second)
	for !(ejected(lbs[0]) && ejected(lbs[1])) {
		if time.Now().After(deadline) {
			t.Fatalf("the CPU-bound backend was not ejected by both replicas within 15s (%v, %v)", ejected(lbs[0]), ejected(lbs[1]))
		}
		load(500 * time.Millisecond)
	}

	// A 12 s window in which the replicas' view is sampled every 100 ms
	// while both sets of clients call.
	var flips [2]int
	var samples int
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		was := [2]bool{true, true}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			samples++
			for i, l := range lbs {
				if now := ejected(l); now != was[i] {
					flips[i]++
					was[i] = now
				}
			}
		}
	})
	res := load(12 * time.Second)
	close(stop)
	sampler.Wait()
	for i, l := range lbs {
		st, e, _ := endpointStatus(l, svc, slow.ID())
		logResult(t, fmt.Sprintf("replica %d's clients", i), res[i], slow.ID())
		t.Logf("replica %d: slow backend latency %v (median %v), outlier %v; %d ejection(s) in all, %d readmission/ejection flips in %d samples",
			i, e.Latency, st.MedianLatency, e.Outlier, st.OutlierEjections, flips[i], samples)
		if st.OutlierEjections != 1 || flips[i] != 0 || !e.Outlier {
			t.Errorf("replica %d: %d ejections, %d flips, outlier now %v; want it ejected once and kept out", i, st.OutlierEjections, flips[i], e.Outlier)
		}
		if s := res[i].Share(slow.ID()); s >= 0.01 {
			t.Errorf("replica %d's clients sent %.2f%% of their calls to the CPU-bound backend, want under 1%%", i, 100*s)
		}
		if len(res[i].Failures) > 0 {
			t.Errorf("replica %d's clients: calls failed: %v", i, res[i].Failures)
		}
	}
}

// TestOutlierEqualBackends: with equal backends nobody is ejected, and
// least_load (outliers on) serves as many calls as round_robin within
// the noise of a shared machine; the ratio is logged.
func TestOutlierEqualBackends(t *testing.T) {
	svc := serviceName(t)
	var bs []*runningBackend
	for range 5 {
		bs = append(bs, loadBackend(t, svc, nil))
	}
	waitPassing(t, svc, 5)
	ll := startLB(t, fastLoad(leastload.Name))
	rr := startLB(t, fastLoad("round_robin"))
	cll := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{ll.addr}})
	crr := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{rr.addr}})
	waitSeen(t, cll, bs...)
	waitSeen(t, crr, bs...)
	closedLoop(t.Context(), cll, 8, 3*time.Second) // reports, blackout
	// In turns, to share the machine's noise.
	var rll, rrr loadgen.Result
	for range 3 {
		rll.Add(closedLoop(t.Context(), cll, 8, time.Second))
		rrr.Add(closedLoop(t.Context(), crr, 8, time.Second))
	}
	logResult(t, "least_load", rll, "")
	logResult(t, "round_robin", rrr, "")
	t.Logf("equal backends: least_load / round_robin: calls/s %.3f×, p99 %.2f×", rll.Rate()/rrr.Rate(), float64(rll.Percentile(0.99))/float64(rrr.Percentile(0.99)))
	st, _, _ := endpointStatus(ll, svc, bs[0].ID())
	if st.OutlierEjections != 0 {
		t.Errorf("%d ejections among equal backends, want none", st.OutlierEjections)
	}
	if r := rll.Rate() / rrr.Rate(); r < 0.9 {
		t.Errorf("least_load served %.3f× the calls of round_robin, want about as many (≥ 0.9 on a shared machine)", r)
	}
}
