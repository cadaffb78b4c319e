package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	grpclbstate "google.golang.org/grpc/balancer/grpclb/state"
	"google.golang.org/grpc/resolver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func addrs(s ...string) []string { return s }

func addrsOf(as []resolver.Address) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, a.Addr)
	}
	return out
}

// balancersOf returns the grpclb balancer addresses of st, or nil without
// grpclb state.
func balancersOf(t *testing.T, st resolver.State) []string {
	t.Helper()
	gs := grpclbstate.Get(st)
	if gs == nil {
		return nil
	}
	for _, a := range gs.BalancerAddresses {
		if a.ServerName == "" {
			t.Errorf("balancer %s has no ServerName", a.Addr)
		}
	}
	return addrsOf(gs.BalancerAddresses)
}

func scJSON(t *testing.T, st resolver.State) string {
	t.Helper()
	if st.ServiceConfig == nil {
		return ""
	}
	return st.ServiceConfig.Config.(fakeSC).json
}

// TestFirstState: the first state carries the passing, tagged instances
// sorted by address, the Lookaside replicas as grpclb balancers, and the
// service config that selects grpclb with the Consul service name.
func TestFirstState(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 7,
		instance{addr: "10.0.0.3", port: 50051, tags: []string{"srv", "v2"}},
		instance{addr: "10.0.0.1", port: 50051, tags: []string{"srv", "v2"}},
		instance{addr: "10.0.0.2", port: 50051, tags: []string{"srv"}},                           // lacks v2
		instance{addr: "10.0.0.4", port: 50051, tags: []string{"srv", "v2"}, status: "critical"}, // not passing
		instance{node: "10.0.1.9", port: 50052, tags: []string{"srv", "v2"}},                     // node address
		instance{addr: "2001:db8::7", port: 50051, tags: []string{"srv", "v2"}},                  // IPv6
		instance{addr: "10.0.0.5", port: 0, tags: []string{"srv", "v2"}},                         // no port: skipped
	)
	fh.set("lookaside", 3, instance{addr: "10.0.2.1", port: 7000}, instance{addr: "10.0.2.2", port: 7000, status: "critical"})
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv?wait=14s&tag=srv,v2", fh, cc, resolver.BuildOptions{})

	st := cc.next(t)
	if diff := cmp.Diff(addrs("10.0.0.1:50051", "10.0.0.3:50051", "10.0.1.9:50052", "[2001:db8::7]:50051"), addrsOf(st.Addresses)); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(addrs("10.0.2.1:7000"), balancersOf(t, st)); diff != "" {
		t.Errorf("balancers (-want +got):\n%s", diff)
	}
	if got := grpclbstate.Get(st).BalancerAddresses[0].ServerName; got != "lookaside" {
		t.Errorf("balancer ServerName %q, want lookaside", got)
	}
	var sc map[string]any
	if err := json.Unmarshal([]byte(scJSON(t, st)), &sc); err != nil {
		t.Fatalf("service config %q: %v", scJSON(t, st), err)
	}
	// The balancer is asked for the service with the target's tag filter,
	// so its lists hold the same instances as the fallback addresses.
	want := map[string]any{"loadBalancingConfig": []any{map[string]any{"grpclb": map[string]any{
		"serviceName": "user-srv@srv,v2", "childPolicy": []any{map[string]any{"round_robin": map[string]any{}}},
	}}}}
	if diff := cmp.Diff(want, sc); diff != "" {
		t.Errorf("service config (-want +got):\n%s", diff)
	}

	// The queries carry the target's options.
	calls := fh.callsTo("user-srv")
	if len(calls) == 0 {
		t.Fatal("no query for user-srv")
	}
	c := calls[0]
	if diff := cmp.Diff([]string{"srv", "v2"}, c.tags); diff != "" || !c.passingOnly || c.q.Near != "_agent" || c.q.WaitTime != 14*time.Second {
		t.Errorf("first query: tags %v, passingOnly %v, near %q, wait %v; want [srv v2], true, _agent, 14s", c.tags, c.passingOnly, c.q.Near, c.q.WaitTime)
	}
	lb := fh.callsTo("lookaside")
	if len(lb) == 0 || !lb[0].passingOnly || len(lb[0].tags) != 0 {
		t.Errorf("balancer queries %+v: want passing only, no tags", lb)
	}
}

// TestQueryOptions: dc, allow-stale, require-consistent, healthy=false and
// limit reach the queries; limit keeps the nearest instances (Consul's
// order) before they are sorted.
func TestQueryOptions(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2,
		instance{addr: "10.0.0.9", port: 1},
		instance{addr: "10.0.0.1", port: 1, status: "critical"},
		instance{addr: "10.0.0.5", port: 1},
	)
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv?dc=dc2&allow-stale=true&healthy=false&limit=2&near=n1&lb=off", fh, cc, resolver.BuildOptions{})
	st := cc.next(t)
	if diff := cmp.Diff(addrs("10.0.0.1:1", "10.0.0.9:1"), addrsOf(st.Addresses)); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	c := fh.callsTo("user-srv")[0]
	if c.passingOnly || c.q.Datacenter != "dc2" || !c.q.AllowStale || c.q.RequireConsistent || c.q.Near != "n1" {
		t.Errorf("query %+v: want all instances, dc2, stale, near n1", c)
	}

	fh2 := newFakeHealth()
	fh2.set("user-srv", 2, instance{addr: "10.0.0.9", port: 1})
	cc2 := newFakeCC()
	build(t, "consul:///user-srv?require-consistent=true&lb-service=lb-eu&dc=dc3", fh2, cc2, resolver.BuildOptions{})
	cc2.next(t)
	if c := fh2.callsTo("user-srv")[0]; !c.q.RequireConsistent || c.q.AllowStale {
		t.Errorf("query %+v: want consistent", c)
	}
	if lb := fh2.callsTo("lb-eu"); len(lb) == 0 || lb[0].q.Datacenter != "dc3" {
		t.Errorf("balancer queries %+v: want lb-eu in dc3", lb)
	}
}

// TestLBOff: lb=off sends only the instances, with no service config and
// no grpclb state, and never asks for the balancers.
func TestLBOff(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
	fh.set("lookaside", 2, instance{addr: "10.0.2.1", port: 7000})
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv?lb=off", fh, cc, resolver.BuildOptions{})
	st := cc.next(t)
	if st.ServiceConfig != nil || grpclbstate.Get(st) != nil {
		t.Errorf("state %+v: want no service config and no grpclb state", st)
	}
	if diff := cmp.Diff(addrs("10.0.0.1:1"), addrsOf(st.Addresses)); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if n := len(fh.callsTo("lookaside")); n != 0 {
		t.Errorf("%d queries for the balancers, want none", n)
	}
}

// TestDisabledServiceConfig: a channel that ignores resolver service
// configs gets none, but still the balancer addresses (its own policy may
// be grpclb).
func TestDisabledServiceConfig(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
	fh.set("lookaside", 2, instance{addr: "10.0.2.1", port: 7000})
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv", fh, cc, resolver.BuildOptions{DisableServiceConfig: true})
	st := cc.next(t)
	if st.ServiceConfig != nil {
		t.Errorf("service config %q, want none", scJSON(t, st))
	}
	if diff := cmp.Diff(addrs("10.0.2.1:7000"), balancersOf(t, st)); diff != "" {
		t.Errorf("balancers (-want +got):\n%s", diff)
	}
}

// TestChanges: each change of either list sends one state; a new index
// with the same data sends nothing.
func TestChanges(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 10, instance{addr: "10.0.0.1", port: 1})
	fh.set("lookaside", 10, instance{addr: "10.0.2.1", port: 7000})
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv", fh, cc, resolver.BuildOptions{})
	cc.next(t)

	fh.set("user-srv", 11, instance{addr: "10.0.0.1", port: 1}, instance{addr: "10.0.0.2", port: 1})
	st := cc.next(t)
	if diff := cmp.Diff(addrs("10.0.0.1:1", "10.0.0.2:1"), addrsOf(st.Addresses)); diff != "" {
		t.Errorf("addresses after an instance joined (-want +got):\n%s", diff)
	}

	// Every replica gone: the state says so (grpclb falls back at once).
	fh.set("lookaside", 11)
	st = cc.next(t)
	if got := balancersOf(t, st); len(got) != 0 || grpclbstate.Get(st) == nil {
		t.Errorf("balancers %v (grpclb state %v), want an empty list", got, grpclbstate.Get(st))
	}
	if len(st.Addresses) != 2 {
		t.Errorf("addresses %v, want the two instances", addrsOf(st.Addresses))
	}

	fh.set("user-srv", 12, instance{addr: "10.0.0.2", port: 1}, instance{addr: "10.0.0.1", port: 1})
	cc.none(t, 200*time.Millisecond)
}

// TestIndexReset: an index lower than the last one is taken as fresh data,
// and the next query waits on it.
func TestIndexReset(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 100, instance{addr: "10.0.0.1", port: 1})
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv?lb=off", fh, cc, resolver.BuildOptions{})
	cc.next(t)
	// Like Consul, the fake answers a lower index only to a query that
	// was already waiting when the data changed.
	waitFor(t, "a query waiting on index 100", func() bool { return len(fh.callsTo("user-srv")) == 2 })

	fh.set("user-srv", 5, instance{addr: "10.0.0.7", port: 1})
	st := cc.next(t)
	if diff := cmp.Diff(addrs("10.0.0.7:1"), addrsOf(st.Addresses)); diff != "" {
		t.Errorf("addresses after the reset (-want +got):\n%s", diff)
	}
	waitFor(t, "a query waiting on index 5", func() bool {
		calls := fh.callsTo("user-srv")
		return calls[len(calls)-1].q.WaitIndex == 5
	})
	// Still watching: a later change arrives.
	fh.set("user-srv", 6, instance{addr: "10.0.0.8", port: 1})
	if got := addrsOf(cc.next(t).Addresses); !cmp.Equal(got, addrs("10.0.0.8:1")) {
		t.Errorf("addresses %v, want [10.0.0.8:1]", got)
	}
}

// TestIndexZero: an answer with index 0 makes the next query wait on 1,
// not spin.
func TestIndexZero(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 0, instance{addr: "10.0.0.1", port: 1})
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv?lb=off&wait=1s", fh, cc, resolver.BuildOptions{})
	cc.next(t)
	time.Sleep(100 * time.Millisecond)
	for _, c := range fh.callsTo("user-srv")[1:] {
		if c.q.WaitIndex != 1 {
			t.Errorf("query waits on %d, want 1", c.q.WaitIndex)
		}
	}
	if n := len(fh.callsTo("user-srv")); n > 5 {
		t.Errorf("%d queries in 100ms: the loop spins", n)
	}
}

// TestConsulErrors: before any state, failures are reported to the
// channel; the loop backs off (no hammering) and recovers; later failures
// keep the last state and report nothing.
func TestConsulErrors(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
	fh.failNext(5)
	cc := newFakeCC()
	start := time.Now()
	// Backoff 10ms, 20ms, 40ms, 80ms, 80ms (±20%) with max-backoff=80ms.
	build(t, "consul://127.0.0.1:8500/user-srv?lb=off&max-backoff=80ms", fh, cc, resolver.BuildOptions{})
	if err := cc.nextErr(t); !strings.Contains(err.Error(), "Consul is down") || !strings.Contains(err.Error(), "user-srv") {
		t.Errorf("reported error %q: want the cause and the service", err)
	}
	st := cc.next(t)
	elapsed := time.Since(start)
	if len(st.Addresses) != 1 {
		t.Errorf("addresses %v after recovery", addrsOf(st.Addresses))
	}
	if min := time.Duration(0.8 * float64(10+20+40+80+80) * float64(time.Millisecond)); elapsed < min {
		t.Errorf("recovered after %v: the retries did not back off (want ≥ %v)", elapsed, min)
	}
	calls := fh.callsTo("user-srv")
	for i := 1; i < 6 && i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < 8*time.Millisecond {
			t.Errorf("retry %d came %v after the failure, want ≥ 8ms", i, gap)
		}
	}
	if n := len(cc.errs); n != 4 {
		// One report per failed fetch before the first state.
		t.Errorf("%d more errors reported, want 4", n)
	}
	drain(cc.errs)

	// After a good state: failures are only logged.
	fh.failNext(3)
	fh.set("user-srv", 3, instance{addr: "10.0.0.1", port: 1}, instance{addr: "10.0.0.2", port: 1})
	st = cc.next(t)
	if len(st.Addresses) != 2 {
		t.Errorf("addresses %v, want 2", addrsOf(st.Addresses))
	}
	if n := len(cc.errs); n != 0 {
		t.Errorf("%d errors reported after a good state, want none", n)
	}
}

// TestBalancersFailFirst: when the balancer list cannot be read, the
// instances go out alone, without waiting.
func TestBalancersFailFirst(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
	fh.set("lookaside", 2, instance{addr: "10.0.2.1", port: 7000})
	fh.failNext(1)
	cc := newFakeCC()
	build(t, "consul://127.0.0.1:8500/user-srv?max-backoff=50ms", fh, cc, resolver.BuildOptions{})
	// Whichever query failed, a state with the instances comes, then one
	// with the balancers.
	var st resolver.State
	waitFor(t, "a state with instances and balancers", func() bool {
		select {
		case st = <-cc.states:
		case <-time.After(10 * time.Millisecond):
		}
		return len(st.Addresses) == 1 && len(balancersOf(t, st)) == 1
	})
	if n := len(cc.errs); n > 1 {
		t.Errorf("%d errors reported, want at most 1", n)
	}
}

// TestRejectedState: when the channel rejects a state, the resolver
// reports it and re-resolves with backoff (fresh fetches, same state sent
// again) until the channel accepts.
func TestRejectedState(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2)
	cc := newFakeCC()
	rejected := errors.New("bad resolver state")
	cc.setReject(func(s resolver.State) error {
		if len(s.Addresses) == 0 {
			return rejected
		}
		return nil
	})
	build(t, "consul://127.0.0.1:8500/user-srv?lb=off&max-backoff=40ms", fh, cc, resolver.BuildOptions{})

	// The empty list is sent, rejected, reported and sent again with
	// growing delays: 10ms, 20ms, 40ms, 40ms (±20%).
	var at []time.Time
	for range 5 {
		st := cc.next(t)
		at = append(at, time.Now())
		if len(st.Addresses) != 0 {
			t.Fatalf("addresses %v, want none", addrsOf(st.Addresses))
		}
		if err := cc.nextErr(t); !errors.Is(err, rejected) {
			t.Errorf("reported %v, want the rejection", err)
		}
	}
	for i, want := range []time.Duration{10, 20, 40, 40} {
		if gap := at[i+1].Sub(at[i]); gap < want*time.Millisecond*8/10 {
			t.Errorf("re-resolution %d after %v, want ≥ %v", i+1, gap, want*time.Millisecond*8/10)
		}
	}
	// Each re-resolution fetched afresh.
	fresh := 0
	for _, c := range fh.callsTo("user-srv") {
		if c.q.WaitIndex == 0 {
			fresh++
		}
	}
	if fresh < 5 {
		t.Errorf("%d fresh fetches, want ≥ 5 (one per re-resolution)", fresh)
	}

	// An instance appears: accepted, and the retries stop.
	fh.set("user-srv", 3, instance{addr: "10.0.0.1", port: 1})
	waitFor(t, "the instance", func() bool {
		select {
		case st := <-cc.states:
			return len(st.Addresses) == 1
		case <-time.After(10 * time.Millisecond):
			return false
		}
	})
	drain(cc.errs)
	cc.none(t, 200*time.Millisecond)
}

// TestRejectedStateAndConsulError: a re-resolution whose fetch fails
// still ends with the state sent again once Consul answers.
func TestRejectedStateAndConsulError(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2)
	cc := newFakeCC()
	cc.setReject(func(resolver.State) error { return errors.New("bad resolver state") })
	build(t, "consul://127.0.0.1:8500/user-srv?lb=off&max-backoff=20ms", fh, cc, resolver.BuildOptions{})
	cc.next(t)
	fh.failNext(2) // the fetches of the next re-resolution
	for range 3 {
		cc.next(t)
	}
	if n := len(fh.callsTo("user-srv")); n < 6 {
		t.Errorf("%d queries, want ≥ 6 (two failed)", n)
	}
}

// TestCloseDuringBlockingQuery: Close ends both loops while their queries
// block (wait=5m), promptly; goleak (TestMain) checks that nothing is left.
func TestCloseDuringBlockingQuery(t *testing.T) {
	fh := newFakeHealth()
	fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
	fh.set("lookaside", 2, instance{addr: "10.0.2.1", port: 7000})
	cc := newFakeCC()
	r := build(t, "consul://127.0.0.1:8500/user-srv", fh, cc, resolver.BuildOptions{})
	cc.next(t)
	waitFor(t, "blocking queries on both services", func() bool {
		a, b := fh.callsTo("user-srv"), fh.callsTo("lookaside")
		return len(a) > 1 && len(b) > 1
	})
	start := time.Now()
	r.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	r.Close() // twice is fine
	r.ResolveNow(resolver.ResolveNowOptions{})
}

// TestCloseWhileBackingOff: Close returns even when the run loop is
// retrying and the loops are backing off.
func TestCloseWhileBackingOff(t *testing.T) {
	fh := newFakeHealth()
	fh.failNext(1000)
	cc := newFakeCC()
	r := build(t, "consul://127.0.0.1:8500/user-srv?max-backoff=10m", fh, cc, resolver.BuildOptions{})
	cc.nextErr(t)
	waitFor(t, "a few failures", func() bool { return len(fh.callsTo("user-srv")) >= 3 })
	start := time.Now()
	r.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
}

// TestBalancerOrder: each resolver orders the replicas its own way, so
// that channels spread over them, and keeps its order as the list changes.
func TestBalancerOrder(t *testing.T) {
	fh := newFakeHealth()
	var lbs []instance
	for i := range 4 {
		lbs = append(lbs, instance{addr: fmt.Sprintf("10.0.2.%d", i+1), port: 7000})
	}
	fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
	fh.set("lookaside", 2, lbs...)
	firsts := map[string]int{}
	const n = 40
	for range n {
		cc := newFakeCC()
		r := build(t, "consul://127.0.0.1:8500/user-srv", fh, cc, resolver.BuildOptions{})
		got := balancersOf(t, cc.next(t))
		if len(got) != 4 {
			t.Fatalf("balancers %v, want 4", got)
		}
		firsts[got[0]]++
		// The order of the remaining replicas is kept when one leaves.
		w := r.balancers
		rest := addrsOf(w.addresses(entries(lbs[1:]...)))
		var want []string
		for _, a := range got {
			if a != "10.0.2.1:7000" {
				want = append(want, a)
			}
		}
		if diff := cmp.Diff(want, rest); diff != "" {
			t.Errorf("order after a replica left (-want +got):\n%s", diff)
		}
		r.Close()
	}
	t.Logf("first balancer over %d resolvers: %v", n, firsts)
	if len(firsts) < 3 {
		t.Errorf("first balancers %v: want the resolvers spread over at least 3 of 4 replicas", firsts)
	}
}

func entries(insts ...instance) []*api.ServiceEntry {
	fh := newFakeHealth()
	fh.set("x", 1, insts...)
	return fh.services["x"].entries
}

func drain(ch chan error) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// waitFor polls cond every 5 ms for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkAddresses: turning a Consul answer of 100 instances into the
// list sent to the channel, for each kind of list.
func BenchmarkAddresses(b *testing.B) {
	var insts []instance
	for i := range 100 {
		insts = append(insts, instance{addr: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), port: 50051})
	}
	es := entries(insts...)
	r := &consulResolver{target: defaults(), log: testLogger(), lbSeed: 42, tune: testTuning}
	for _, kind := range []listKind{instanceList, balancerList} {
		w, err := r.newWatcher(kind)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(kind.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got := w.addresses(es); len(got) != 100 {
					b.Fatalf("%d addresses", len(got))
				}
			}
		})
	}
}

// TestProbeEndsLongBackoff: after a failure whose backoff is longer than
// consulwatch.ProbeAfter, the loop asks the probe about once a second and
// fetches as soon as it succeeds, instead of sleeping the backoff out.
func TestProbeEndsLongBackoff(t *testing.T) {
	for _, tc := range []struct {
		name       string
		probe      bool
		minT, maxT time.Duration
	}{
		// The backoff is 2 s ±20 %: at least 1.6 s without a probe.
		{name: "no probe", probe: false, minT: 1600 * time.Millisecond, maxT: 3 * time.Second},
		// With one: the first probe, 1 s into the backoff, ends it.
		{name: "probe", probe: true, minT: 900 * time.Millisecond, maxT: 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fh := newFakeHealth()
			fh.set("user-srv", 2, instance{addr: "10.0.0.1", port: 1})
			fh.failNext(1)
			var probes atomic.Int64
			var probe func(context.Context) error
			if tc.probe {
				probe = func(context.Context) error { probes.Add(1); return nil }
			}
			u, err := url.Parse("consul://127.0.0.1:8500/user-srv?lb=off&max-backoff=1m")
			if err != nil {
				t.Fatal(err)
			}
			b := &builder{scheme: Scheme, logger: testLogger(), tune: tuning{minInterval: time.Millisecond, backoffBase: 2 * time.Second},
				newHealth: func(Target) (healthClient, func(context.Context) error, func(), error) {
					return fh, probe, func() {}, nil
				}}
			cc := newFakeCC()
			start := time.Now()
			r, err := b.Build(resolver.Target{URL: *u}, cc, resolver.BuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			cc.nextErr(t)
			st := cc.next(t)
			took := time.Since(start)
			if len(st.Addresses) != 1 {
				t.Errorf("addresses %v, want 1", addrsOf(st.Addresses))
			}
			if took < tc.minT || took > tc.maxT {
				t.Errorf("first state %v after a failure, want within [%v, %v]", took, tc.minT, tc.maxT)
			}
			if tc.probe && probes.Load() == 0 {
				t.Error("the probe was never called")
			}
		})
	}
}
