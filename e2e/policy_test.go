package e2e

import (
	"context"
	"fmt"
	"math"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy/leastconn"
	"github.com/lookaside-lb/lookaside/policy/random"
	"github.com/lookaside-lb/lookaside/policy/sourcehash"
	"github.com/lookaside-lb/lookaside/policy/weightedrandom"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// startWeighted starts one backend per weight, with meta on each, and
// waits until Consul reports them passing.
func startWeighted(t *testing.T, svc string, meta map[string]string, weights ...int) []*runningBackend {
	t.Helper()
	var bs []*runningBackend
	for _, w := range weights {
		bs = append(bs, startBackend(t, svc, func(c *backend.Config) { c.Weight = w; c.Meta = meta }))
	}
	waitPassing(t, svc, len(weights))
	return bs
}

func withPolicy(name string) func(*lbserver.Config) {
	return func(c *lbserver.Config) { c.Policy = name }
}

// fromIP makes a client's connections (to the balancer and to backends)
// come from a loopback address of its own, so the balancer sees one client
// IP per client, as it would across machines.
func fromIP(ip string) grpc.DialOption {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	})
}

// firstBackend returns the backend that a pick_first client settles on.
func firstBackend(t *testing.T, c userpb.UserClient) string {
	t.Helper()
	var id string
	waitFor(t, 10*time.Second, "a call that carries an lb-token", func() bool {
		r, err := call(t.Context(), c)
		if err == nil && r.LbToken != "" {
			id = r.BackendId
			return true
		}
		return false
	})
	return id
}

// checkShares fails unless each backend's share of got is within tol of
// its weight's share.
func checkShares(t *testing.T, what string, bs []*runningBackend, weights []int, got map[string]int, tol float64) {
	t.Helper()
	total, wsum := 0, 0
	for _, b := range bs {
		total += got[b.ID()]
	}
	for _, w := range weights {
		wsum += w
	}
	for i, b := range bs {
		share, want := float64(got[b.ID()])/float64(total), float64(weights[i])/float64(wsum)
		t.Logf("%s: backend weight %d: %d of %d (%.1f%%, target %.1f%%)", what, weights[i], got[b.ID()], total, 100*share, 100*want)
		if math.Abs(share-want) > tol {
			t.Errorf("%s: backend with weight %d got %.1f%%, want %.1f%% ± %.0f%%", what, weights[i], 100*share, 100*want, 100*tol)
		}
	}
}

// TestWeightedRoundRobinCalls: a round_robin client's calls follow the
// Consul weights.
func TestWeightedRoundRobinCalls(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	weights := []int{1, 2, 3}
	bs := startWeighted(t, svc, nil, weights...)
	l := startLB(t, withPolicy(weightedroundrobin.Name))
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)
	checkShares(t, "calls", bs, weights, spread(t, c, 600), 0.02)
}

// TestWeightedRandomFromConsulMeta: the policy comes from the services'
// Consul meta (lb-policy), and pick_first clients are spread over the
// backends in proportion to weight.
func TestWeightedRandomFromConsulMeta(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	weights := []int{1, 3}
	bs := startWeighted(t, svc, map[string]string{lbserver.PolicyMetaKey: weightedrandom.Name}, weights...)
	l := startLB(t, nil) // default round_robin; the meta wins
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}})
	waitSeen(t, c, bs...)
	checkShares(t, "calls of a round_robin client", bs, weights, spread(t, c, 400), 0.03)

	// 80 pick_first clients: each settles on its list's first entry. The
	// first entry is drawn per stream, so allow for chance (3 σ ≈ 15 %).
	got := map[string]int{}
	for range 80 {
		got[firstBackend(t, client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}, PickFirst: true}))]++
	}
	checkShares(t, "pick_first clients", bs, weights, got, 0.15)
}

// TestRandomPickFirstClients: pick_first clients land on every backend.
func TestRandomPickFirstClients(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, withPolicy(random.Name))
	got := map[string]int{}
	for range 30 {
		got[firstBackend(t, client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}, PickFirst: true}))]++
	}
	t.Logf("pick_first clients per backend: %v", got)
	for _, b := range bs {
		if got[b.ID()] == 0 {
			t.Errorf("no pick_first client landed on %s: %v", b.ID(), got)
		}
	}
}

// TestLeastConnectionsPickFirst: each new pick_first client goes to the
// backend with the fewest clients, so nine clients split 3/3/3.
func TestLeastConnectionsPickFirst(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, withPolicy(leastconn.Name))
	got := map[string]int{}
	for range 9 {
		got[firstBackend(t, client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}, PickFirst: true}))]++
	}
	for _, b := range bs {
		if got[b.ID()] != 3 {
			t.Errorf("clients per backend %v: want 3 each", got)
			break
		}
	}
}

// TestSourceHashSticky: clients from 30 different IPs are spread by hash;
// each stays on its backend when another backend joins or leaves, and
// only the clients of a removed backend move.
func TestSourceHashSticky(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	bs := startBackends(t, svc, 3)
	l := startLB(t, withPolicy(sourcehash.Name))
	type cl struct {
		ip string
		c  userpb.UserClient
	}
	var clients []cl
	home := map[string]string{}
	perBackend := map[string]int{}
	for i := range 30 {
		ip := fmt.Sprintf("127.0.%d.%d", 10+i/200, 2+i%200)
		c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}, PickFirst: true, DialOptions: []grpc.DialOption{fromIP(ip)}})
		clients = append(clients, cl{ip, c})
		home[ip] = firstBackend(t, c)
		perBackend[home[ip]]++
	}
	t.Logf("30 client IPs per backend: %v", perBackend)
	if len(perBackend) < 2 {
		t.Errorf("30 client IPs all hashed to one backend: %v", perBackend)
	}
	// Round-robin clients from one IP stay on one backend (k = 1).
	rr := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{l.addr}, DialOptions: []grpc.DialOption{fromIP("127.0.9.9")}})
	firstBackend(t, rr)
	if got := spread(t, rr, 30); len(got) != 1 {
		t.Errorf("a round_robin client from one IP used %d backends: %v", len(got), got)
	}

	// A new backend joins: nobody moves (existing streams are sticky).
	nb := startBackend(t, svc, nil)
	waitPassing(t, svc, 4)
	waitFor(t, 10*time.Second, "the balancer to send the 4-backend list", func() bool {
		s, ok := l.server().Endpoints(t.Context(), svc)
		return ok && len(s.Endpoints) == 4
	})
	time.Sleep(300 * time.Millisecond) // lists reach the clients
	for _, c := range clients {
		if got := firstBackend(t, c.c); got != home[c.ip] {
			t.Errorf("client %s moved from %s to %s when %s joined", c.ip, home[c.ip], got, nb.ID())
		}
	}
	// A backend leaves: only its clients move.
	gone := bs[0]
	if err := gone.Deregister(); err != nil {
		t.Fatal(err)
	}
	waitPassing(t, svc, 3)
	waitFor(t, 10*time.Second, "the clients of the removed backend to move", func() bool {
		for _, c := range clients {
			if home[c.ip] == gone.ID() && firstBackend(t, c.c) == gone.ID() {
				return false
			}
		}
		return true
	})
	for _, c := range clients {
		if home[c.ip] != gone.ID() {
			if got := firstBackend(t, c.c); got != home[c.ip] {
				t.Errorf("client %s moved from %s to %s when another backend left", c.ip, home[c.ip], got)
			}
		}
	}
}
