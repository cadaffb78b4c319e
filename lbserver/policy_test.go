package lbserver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/discovery"
	_ "github.com/lookaside-lb/lookaside/policy/all"
	"github.com/lookaside-lb/lookaside/policy/leastconn"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
)

func TestChoosePolicy(t *testing.T) {
	cfg := testConfig(newFakeSource())
	cfg.Services = map[string]ServiceSettings{"configured": {Policy: leastconn.Name}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	meta := func(svc, pol string) discovery.Snapshot {
		return discovery.Snapshot{Service: svc, Meta: map[string]string{PolicyMetaKey: pol}}
	}
	tests := []struct {
		name    string
		snap    discovery.Snapshot
		want    string
		wantBad string
	}{
		{"default", discovery.Snapshot{Service: "plain"}, roundrobin.Name, ""},
		{"configured", discovery.Snapshot{Service: "configured"}, leastconn.Name, ""},
		{"meta wins", meta("configured", weightedroundrobin.Name), weightedroundrobin.Name, ""},
		{"unknown meta ignored", meta("configured", "fastest"), leastconn.Name, "fastest"},
		{"unknown meta, default", meta("plain", "fastest"), roundrobin.Name, "fastest"},
	}
	for _, tc := range tests {
		name, p, bad := s.choosePolicy(tc.snap)
		if name != tc.want || bad != tc.wantBad || p == nil {
			t.Errorf("%s: choosePolicy = %q, %v, bad %q; want %q, bad %q", tc.name, name, p, bad, tc.want, tc.wantBad)
		}
	}
	cfg.Services = map[string]ServiceSettings{"x": {Policy: "fastest"}}
	if _, err := New(cfg); err == nil {
		t.Error("New accepted an unknown per-service policy")
	}
}

// TestWeightedPolicyFromMeta: a service whose Consul meta selects
// weighted_round_robin gets entries repeated by weight.
func TestWeightedPolicyFromMeta(t *testing.T) {
	a, b := ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")
	b.Weight = 3
	sn := snap("svc", a, b)
	sn.Meta = map[string]string{PolicyMetaKey: weightedroundrobin.Name}
	_, c := startServer(t, testConfig(newFakeSource(sn)))
	s := open(t, c, "svc")
	recv(t, s)
	got := map[string]int{}
	for _, addr := range recvList(t, s) {
		got[addr]++
	}
	if diff := cmp.Diff(map[string]int{"127.0.0.1:1": 1, "127.0.0.1:2": 3}, got); diff != "" {
		t.Errorf("entries per endpoint (-want +got):\n%s", diff)
	}
}

// TestLeastConnectionsSpreadsStreams: with least_connections, each new
// stream's first entry is an endpoint no other stream has first, and a
// stream that ends frees its endpoint for the next.
func TestLeastConnectionsSpreadsStreams(t *testing.T) {
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2"), ep("c", "127.0.0.1:3"))))
	cfg.Policy = leastconn.Name
	srv, c := startServer(t, cfg)
	firsts := map[string]bool{}
	var order []string
	var cancels []context.CancelFunc
	for i := range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		s, err := c.BalanceLoad(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(initial("svc")); err != nil {
			t.Fatal(err)
		}
		recv(t, s)
		first := recvList(t, s)[0]
		if firsts[first] {
			t.Fatalf("stream %d got first entry %s, already another stream's first", i, first)
		}
		firsts[first] = true
		order = append(order, first)
	}
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	// End the stream on the first of them; the next stream takes its place.
	cancels[0]()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().StreamsActive != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the server did not see the stream end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s := open(t, c, "svc")
	recv(t, s)
	if got := recvList(t, s)[0]; got != order[0] {
		t.Fatalf("new stream's first entry %s, want %s, freed by the stream that ended", got, order[0])
	}
}

// TestLeastConnectionsStreamsArrivingTogether: streams that open at the
// same moment, and all wait for the service's first plan, still each get a
// first entry no other stream has: each chooses knowing the others'
// choices.
func TestLeastConnectionsStreamsArrivingTogether(t *testing.T) {
	const n = 12
	var eps []discovery.Endpoint
	for i := range n {
		eps = append(eps, ep(fmt.Sprintf("e%02d", i), fmt.Sprintf("127.0.0.1:%d", i+1)))
	}
	cfg := testConfig(newFakeSource(snap("svc", eps...)))
	cfg.Policy = leastconn.Name
	_, c := startServer(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	firsts := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := c.BalanceLoad(ctx)
			if err == nil {
				err = s.Send(initial("svc"))
			}
			if err == nil {
				_, err = s.Recv() // the initial response
			}
			var r *lbpb.LoadBalanceResponse
			if err == nil {
				r, err = s.Recv()
			}
			switch {
			case err != nil:
				errs[i] = err
			case r.GetServerList() == nil:
				errs[i] = fmt.Errorf("got %v, want a server list", r)
			default:
				firsts[i] = addrs(r.GetServerList())[0]
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, f := range firsts {
		seen[f]++
	}
	if len(seen) != n {
		t.Errorf("%d streams got %d distinct first entries, want %d: %v", n, len(seen), n, seen)
	}
}

func TestEndpoints(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	cfg.FirstListTimeout = 100 * time.Millisecond
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, ok := s.Endpoints(context.Background(), "svc")
	if !ok || len(got.Endpoints) != 1 || got.Endpoints[0].ID != "a" {
		t.Fatalf("Endpoints(svc) = %+v, %v", got, ok)
	}
	if _, ok := s.Endpoints(context.Background(), "never-answers"); ok {
		t.Fatal("Endpoints of a service with no answer reported ok")
	}
}

// TestReplicasAgree: two balancers with the same endpoints give every
// endpoint the same number of entries, whatever the stream; only the order
// differs, so a client gets the same balance from any replica.
func TestReplicasAgree(t *testing.T) {
	a, b, c := ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2"), ep("c", "127.0.0.1:3")
	a.Weight, b.Weight, c.Weight = 2, 3, 5
	for _, pol := range []string{roundrobin.Name, weightedroundrobin.Name, "weighted_random", "random", leastconn.Name} {
		t.Run(pol, func(t *testing.T) {
			counts := func(seed uint64) map[string]int {
				cfg := testConfig(newFakeSource(snap("svc", a, b, c)))
				cfg.Policy = pol
				_, cl := startServer(t, cfg, func(s *Server) { s.seed = func() uint64 { return seed } })
				s := open(t, cl, "svc")
				recv(t, s)
				out := map[string]int{}
				for _, addr := range recvList(t, s) {
					out[addr]++
				}
				return out
			}
			first := counts(1)
			for _, seed := range []uint64{2, 99, 12345} {
				if diff := cmp.Diff(first, counts(seed)); diff != "" {
					t.Errorf("entries per endpoint differ between replicas/streams (-seed 1 +seed %d):\n%s", seed, diff)
				}
			}
		})
	}
}
