package lbserver

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
)

// discardStream is a balancer stream whose sends go nowhere, so a benchmark
// measures list building alone.
type discardStream struct {
	grpc.ServerStream
	sent int
}

func (d *discardStream) Send(*lbpb.LoadBalanceResponse) error { d.sent++; return nil }
func (d *discardStream) Recv() (*lbpb.LoadBalanceRequest, error) {
	return nil, context.Canceled
}

// BenchmarkUpdate measures the fan-out of a change: what each stream of a
// service does with a new plan (build its list with the service's policy,
// compare it with the last one sent, send it). Each iteration is another
// stream (its own seed) taking the same new plan, as after a change.
func BenchmarkUpdate(b *testing.B) {
	for _, pol := range []string{roundrobin.Name, weightedroundrobin.Name, leastload.Name} {
		for _, n := range []int{10, 100} {
			b.Run(fmt.Sprintf("%s/%d", pol, n), func(b *testing.B) {
				p, err := policy.Build(pol, policy.DefaultOptions())
				if err != nil {
					b.Fatal(err)
				}
				var eps []discovery.Endpoint
				for i := range n {
					eps = append(eps, discovery.Endpoint{ID: fmt.Sprintf("ep-%03d", i), Weight: 1 + i%5,
						Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i%250 + 1)}), 8080)})
				}
				pl := newPlan(discovery.Snapshot{Service: "svc", Endpoints: eps}, pol, p, nil)
				pl.prepared = pl.prepare() // as the planner does, once per plan
				cfg := testConfig(newFakeSource())
				cfg.Logger = slog.New(slog.DiscardHandler)
				srv, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer srv.Close()
				svc := &service{name: "svc", assigned: map[string]int{}}
				stream := &discardStream{}
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					st := &streamState{srv: srv, stream: stream, svc: svc, ctx: context.Background(), log: srv.log, client: policy.Client{Seed: uint64(i)}}
					err := st.update(pl)
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
