package lbserver

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/xds"
)

func TestXDSAssignmentOfPolicy(t *testing.T) {
	eps := []discovery.Endpoint{
		{ID: "a", Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1},
		{ID: "b", Addr: netip.MustParseAddrPort("10.0.0.2:80"), Weight: 1},
		{ID: "c", Addr: netip.MustParseAddrPort("10.0.0.3:80"), Weight: 2},
	}
	w := func(ws ...uint32) []xds.Endpoint {
		out := make([]xds.Endpoint, len(eps))
		for i, e := range eps {
			out[i] = xds.Endpoint{ID: e.ID, Addr: e.Addr, Weight: ws[i]}
		}
		return out
	}
	for _, tc := range []struct {
		policy      string
		loadWeights []float64
		drop        float64
		token       string
		want        xds.Shape
		weights     []xds.Endpoint
		drops       []xds.Drop
	}{
		{policy: "round_robin", want: xds.ShapeRoundRobin, weights: w(1, 1, 2)},
		{policy: "random", want: xds.ShapeRoundRobin, weights: w(1, 1, 2)},
		{policy: "weighted_round_robin", want: xds.ShapeWeighted, weights: w(1, 1, 2)},
		{policy: "weighted_random", want: xds.ShapeWeighted, weights: w(1, 1, 2)},
		{policy: "least_load", want: xds.ShapeWeighted, weights: w(1, 1, 2)},
		{policy: "least_load", loadWeights: []float64{0.5, 0.25, 0.125}, want: xds.ShapeWeighted,
			weights: w(xds.MaxWeight, xds.MaxWeight/2, xds.MaxWeight/4)},
		// A probe weight far below the others stays at least 1.
		{policy: "least_load", loadWeights: []float64{1, 1e-9, 0.5}, want: xds.ShapeWeighted,
			weights: w(xds.MaxWeight, 1, xds.MaxWeight/2)},
		{policy: "source_hash", want: xds.ShapeRingHash, weights: w(1, 1, 2)},
		{policy: "least_connections", want: xds.ShapeLeastRequest, weights: w(1, 1, 2)},
		{policy: "no_such_policy", want: xds.ShapeRoundRobin, weights: w(1, 1, 2)},
		{policy: "round_robin", drop: 0.25, token: policy.DropTokenOverload, want: xds.ShapeRoundRobin, weights: w(1, 1, 2),
			drops: []xds.Drop{{Category: "drop-overload", Share: 0.25}}},
		{policy: "weighted_round_robin", drop: 0.1, token: policy.DropTokenRateLimit, want: xds.ShapeWeighted, weights: w(1, 1, 2),
			drops: []xds.Drop{{Category: "drop-ratelimit", Share: 0.1}}},
	} {
		p := newPlan(discovery.Snapshot{Service: "svc", Endpoints: eps}, tc.policy, nil, nil)
		p.loadWeights, p.dropShare, p.dropToken = tc.loadWeights, tc.drop, tc.token
		a := p.xdsAssignment("svc")
		if a.Cluster != "svc" || a.Shape != tc.want || !reflect.DeepEqual(a.Endpoints, tc.weights) || !reflect.DeepEqual(a.Drops, tc.drops) {
			t.Errorf("%s %v drop %v: got %+v, want shape %v endpoints %+v drops %+v", tc.policy, tc.loadWeights, tc.drop, a, tc.want, tc.weights, tc.drops)
		}
		if err := a.Validate(); err != nil {
			t.Errorf("%s: %v", tc.policy, err)
		}
	}
}

func TestXDSAssignmentDuplicateAddresses(t *testing.T) {
	eps := []discovery.Endpoint{
		{ID: "a", Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1},
		{ID: "b", Addr: netip.MustParseAddrPort("[::ffff:10.0.0.1]:80"), Weight: 1},
		{ID: "c", Addr: netip.MustParseAddrPort("10.0.0.3:80"), Weight: 1 << 20},
	}
	a := newPlan(discovery.Snapshot{Service: "svc", Endpoints: eps}, "weighted_round_robin", nil, nil).xdsAssignment("svc")
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(a.Endpoints) != 2 || a.Endpoints[1].Weight != xds.MaxWeight {
		t.Errorf("endpoints %+v: want a and c, c's weight capped at %d", a.Endpoints, xds.MaxWeight)
	}
}

func TestXDSFeed(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	dir := newFakeDir(true, "svc")
	cfg := testConfig(dirSrc{src, dir})
	cfg.WatchLinger = 0
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	feed := s.XDSFeed()

	for _, name := range []string{"nope", "nope:80", "NOPE.", "bad name"} {
		if _, err := feed.Subscribe(name, func() {}); !errors.Is(err, xds.ErrUnknown) {
			t.Errorf("Subscribe(%q) = %v, want ErrUnknown", name, err)
		}
	}
	if w, _ := src.counts("nope"); w != 0 {
		t.Errorf("unknown name started %d watches, want 0", w)
	}

	notified := make(chan struct{}, 1)
	sub, err := feed.Subscribe("SVC:443", func() {
		select {
		case notified <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(want int) xds.Assignment {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			if a, ok := sub.Assignment(); ok && len(a.Endpoints) == want {
				return a
			}
			select {
			case <-notified:
			case <-deadline:
				a, ok := sub.Assignment()
				t.Fatalf("assignment %+v (ready %v), want %d endpoints", a, ok, want)
			}
		}
	}
	if a := wait(1); a.Cluster != "svc" {
		t.Errorf("cluster %q, want the canonical service name svc", a.Cluster)
	}
	// Drain the notification of the first plan, then a new plan notifies.
	select {
	case <-notified:
	default:
	}
	src.Push(snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.2:1")))
	select {
	case <-notified:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification of the new plan")
	}
	wait(2)
	// Same plan, same assignment (made once).
	p := s.reg.all()[0].cur.Load()
	if a, b := p.xdsAssignment("svc"), p.xdsAssignment("svc"); &a.Endpoints[0] != &b.Endpoints[0] {
		t.Error("assignment made twice for one plan")
	}
	if _, active := src.counts("svc"); active != 1 {
		t.Errorf("%d watches active, want 1", active)
	}
	sub.Close()
	sub.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, active := src.counts("svc"); active == 0 && s.reg.watched() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("service still watched after the last subscription closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestXDSFeedLimit(t *testing.T) {
	src := newFakeSource(snap("a", ep("a", "127.0.0.1:1")), snap("b", ep("b", "127.0.0.1:2")))
	cfg := testConfig(src)
	cfg.MaxServices = 1
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sub, err := s.XDSFeed().Subscribe("a", func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := s.XDSFeed().Subscribe("b", func() {}); err == nil || errors.Is(err, xds.ErrUnknown) {
		t.Errorf("second service over the limit: %v, want a refusal", err)
	}
}

func TestXDSNACKsCounted(t *testing.T) {
	s, err := New(testConfig(newFakeSource()))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.countNACK(xds.ClusterType, "bad policy")
	s.countNACK(xds.ClusterType, "bad policy")
	s.countNACK(xds.EndpointType, "weights")
	s.countNACK("type.googleapis.com/other", "ignored")
	want := map[string]int64{"listener": 0, "route": 0, "cluster": 2, "endpoint": 1}
	if got := s.Stats().XDSNACKs; !reflect.DeepEqual(got, want) {
		t.Errorf("XDSNACKs = %v, want %v", got, want)
	}
}

// FuzzXDSSubscribe: any name an xDS client sends either maps to the one
// service the directory lists or is unknown, starting no watch for
// anything else; a subscription closes cleanly.
func FuzzXDSSubscribe(f *testing.F) {
	for _, s := range []string{"svc", "SVC:443", "svc.", "svc@b,a", "", "a/b", "svc:", ":80", "svc.lb.internal", "\xff", "svc%20"} {
		f.Add(s)
	}
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(dirSrc{src, newFakeDir(true, "svc")})
	cfg.WatchLinger = 0
	cfg.Zones = []string{"lb.internal"}
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.Close)
	feed := s.XDSFeed()
	f.Fuzz(func(t *testing.T, name string) {
		sub, err := feed.Subscribe(name, func() {})
		if err != nil {
			if !errors.Is(err, xds.ErrUnknown) {
				t.Fatalf("Subscribe(%q) = %v, want ErrUnknown or success", name, err)
			}
			return
		}
		defer sub.Close()
		if a, ok := sub.Assignment(); ok && a.Cluster != "svc" && !strings.HasPrefix(a.Cluster, "svc@") {
			t.Fatalf("Subscribe(%q): cluster %q", name, a.Cluster)
		}
		for _, svc := range s.reg.all() {
			if base, _ := discovery.SplitName(svc.name); base != "svc" {
				t.Fatalf("Subscribe(%q) watches %q", name, svc.name)
			}
		}
	})
}

// TestXDSFeedMoved: a subscription reports Moved once the settings map
// its name to another service, and its notify is called; one whose name
// maps to the same service does not.
func TestXDSFeedMoved(t *testing.T) {
	src := newFakeSource(snap("user-srv", ep("u", "127.0.0.1:1")), snap("orders", ep("o", "127.0.0.2:2")))
	cfg := testConfig(src)
	cfg.Aliases = map[string]string{"users": "user-srv"}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	feed := s.XDSFeed()
	notified := make(chan struct{}, 1)
	users, err := feed.Subscribe("USERS:443", func() {
		select {
		case notified <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer users.Close()
	same, err := feed.Subscribe("user-srv", func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer same.Close()
	mover := func(sub xds.Subscription) xds.Mover {
		m, ok := sub.(xds.Mover)
		if !ok {
			t.Fatalf("%T is not an xds.Mover", sub)
		}
		return m
	}
	if mover(users).Moved() || mover(same).Moved() {
		t.Fatal("Moved before any reload")
	}
	set := s.Settings()
	set.Policy = "random" // not a mapping change
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	if mover(users).Moved() || mover(same).Moved() {
		t.Fatal("Moved after a reload that maps every name as before")
	}
	select {
	case <-notified: // the planner's new plan
	case <-time.After(5 * time.Second):
	}
	set.Aliases = map[string]string{"users": "orders"}
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	select {
	case <-notified:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification after the reload that moved the name")
	}
	if !mover(users).Moved() {
		t.Error("users not Moved after the reload mapped it to orders")
	}
	if mover(same).Moved() {
		t.Error("user-srv Moved, yet it still maps to user-srv")
	}
}
