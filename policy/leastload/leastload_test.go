package leastload

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func TestList(t *testing.T) {
	abc := policytest.Endpoints("a", "b", "c")
	w312 := policytest.Weighted(3, 1, 2)
	lw := []float64{1.5, 0.5, 1} // 3, 1, 2 entries: sequence 0 2 0 1 2 0
	tests := []struct {
		name string
		max  int
		in   policy.Input
		want []int
	}{
		{"empty", 512, policy.Input{}, []int{}},
		{"one", 512, policy.Input{Endpoints: abc[:1], LoadWeights: []float64{0.2}, Assigned: []int{7}}, []int{0}},
		// Not counted: the start drawn from the seed stands (seed 0 draws
		// position 2, seed 1 position 1).
		{"not counted: seed 0", 512, policy.Input{Endpoints: abc, LoadWeights: lw}, []int{0, 1, 2, 0, 0, 2}},
		{"not counted: seed 1", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Client: policy.Client{Seed: 1}}, []int{2, 0, 1, 2, 0, 0}},
		// None assigned: a has the most capacity, 1/1.5.
		{"none assigned", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{0, 0, 0}, Client: policy.Client{Seed: 1}}, []int{0, 1, 2, 0, 0, 2}},
		// Predicted loads 4/1.5, 1/0.5, 2/1: b and c tie at 2; the seed 0
		// rotation (a b c) meets b first.
		{"tie in the seed 0 rotation", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{3, 0, 1}}, []int{1, 2, 0, 0, 2, 0}},
		{"tie in the seed 2 rotation", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{3, 0, 1}, Client: policy.Client{Seed: 2}}, []int{2, 0, 1, 2, 0, 0}},
		// Predicted loads 2/1.5, 2/0.5, 2/1.
		{"capacity counts", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{1, 1, 1}, Client: policy.Client{Seed: 1}}, []int{0, 1, 2, 0, 0, 2}},
		// Predicted loads 6/1.5, 1/0.5, 1/1.
		{"short Assigned counts zero", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{5}}, []int{2, 0, 0, 2, 0, 1}},
		{"previous first kept though busiest", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{0, 9, 0}, Previous: []string{"b", "a"}}, []int{1, 2, 0, 0, 2, 0}},
		{"previous first gone", 512, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{3, 0, 1}, Previous: []string{"z", "b"}}, []int{1, 2, 0, 0, 2, 0}},
		// Without load weights the Consul weights 3, 1, 2 stand in:
		// predicted loads 4/3, 1/1, 2/2, a tie that b wins.
		{"no load weights", 512, policy.Input{Endpoints: w312, Assigned: []int{3, 0, 1}}, []int{1, 2, 0, 0, 2, 0}},
		{"load weights of another length", 512, policy.Input{Endpoints: w312, LoadWeights: []float64{1, 1}, Assigned: []int{3, 0, 1}}, []int{1, 2, 0, 0, 2, 0}},
		{"zero load weight", 512, policy.Input{Endpoints: w312, LoadWeights: []float64{1, 0, 1}, Assigned: []int{3, 0, 1}}, []int{1, 2, 0, 0, 2, 0}},
		{"NaN load weight", 512, policy.Input{Endpoints: w312, LoadWeights: []float64{1, math.NaN(), 1}, Assigned: []int{3, 0, 1}}, []int{1, 2, 0, 0, 2, 0}},
		{"infinite load weight", 512, policy.Input{Endpoints: w312, LoadWeights: []float64{1, math.Inf(1), 1}, Assigned: []int{3, 0, 1}}, []int{1, 2, 0, 0, 2, 0}},
		// Load weights override Consul weights.
		{"load weights override", 512, policy.Input{Endpoints: w312, LoadWeights: []float64{1, 1, 1}, Assigned: []int{0, 0, 0}, Client: policy.Client{Seed: 1}}, []int{1, 2, 0}},
		// 1.004 rounds to 100 hundredths of 1, like 1: one entry each.
		{"rounded to hundredths of the smallest", 512, policy.Input{Endpoints: abc[:2], LoadWeights: []float64{1, 1.004}, Assigned: []int{0, 0}}, []int{1, 0}},
		// 3, 1, 2 in at most 4 entries: 2, 1, 1, sequence 0 1 2 0.
		{"bound scales", 4, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{0, 0, 0}}, []int{0, 0, 1, 2}},
		// One entry each; predicted loads 2/1.5, 1/0.5, 1/1.
		{"more endpoints than the bound", 2, policy.Input{Endpoints: abc, LoadWeights: lw, Assigned: []int{1, 0, 0}}, []int{2, 0, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := policytest.Indexes((&leastLoad{maxEntries: tc.max}).List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundedWeights(t *testing.T) {
	p := &leastLoad{maxEntries: 512}
	eps := policytest.Endpoints("a", "b")
	// 1.006 rounds to 101 hundredths of 1: 100 and 101 entries.
	l := p.List(policy.Input{Endpoints: eps, LoadWeights: []float64{1, 1.006}})
	counts := make([]int, 2)
	for _, e := range l {
		counts[e.Index]++
	}
	if diff := cmp.Diff([]int{100, 101}, counts); diff != "" {
		t.Errorf("entries per endpoint mismatch (-want +got):\n%s", diff)
	}
}

func TestSticky(t *testing.T) {
	p := &leastLoad{maxEntries: 512}
	policytest.CheckSticky(t, p, policytest.Weighted(3, 1, 2, 5, 1), 200)

	// The first entry also stays when the load weights and the counts
	// change.
	eps := policytest.Endpoints("a", "b", "c", "d")
	for s := range uint64(50) {
		c := policy.Client{Seed: s}
		l := p.List(policy.Input{Endpoints: eps, Client: c, LoadWeights: []float64{1, 2, 3, 4}, Assigned: []int{0, 0, 0, 0}})
		first := eps[l[0].Index].ID
		nl := p.List(policy.Input{Endpoints: eps, Client: c, LoadWeights: []float64{4, 3, 2, 0.5}, Assigned: []int{0, 5, 5, 5},
			Previous: policytest.IDs(eps, l)})
		if got := eps[nl[0].Index].ID; got != first {
			t.Errorf("seed %d: load weights changed: first entry %s, want %s kept", s, got, first)
		}
	}
}

// TestCallShares drives round_robin clients through the grpc-go picker
// model: one client making 10 000 calls, and 1 000 clients making 10 each
// from random SubConn offsets. Calls go to endpoints in proportion to their
// load weights, within 2 percentage points, whatever the Consul weights.
func TestCallShares(t *testing.T) {
	p := &leastLoad{maxEntries: policy.DefaultMaxEntries}
	r := rand.New(rand.NewPCG(1, 0))
	for _, tc := range []struct {
		name           string
		eps            []discovery.Endpoint
		lw             []float64
		streams, picks int
	}{
		{"one client", policytest.Weighted(5, 4, 3, 2, 1), []float64{0.37, 1.9, 0.81, 1.2, 0.72}, 1, 10000},
		{"many clients", policytest.Weighted(5, 4, 3, 2, 1), []float64{0.37, 1.9, 0.81, 1.2, 0.72}, 1000, 10},
		{"many clients, 20 endpoints", policytest.Ramp(20), randomWeights(r, 20), 1000, 10},
		{"one client, 100 endpoints", policytest.Ramp(100), randomWeights(r, 100), 1, 10000},
	} {
		calls := make([]int, len(tc.eps))
		offsets := rand.New(rand.NewPCG(2, 0))
		for s := range tc.streams {
			l := p.List(policy.Input{Endpoints: tc.eps, LoadWeights: tc.lw, Client: policy.Client{Seed: uint64(s)}, Assigned: make([]int, len(tc.eps))})
			c := policytest.NewRoundRobinClient(l, len(tc.eps), offsets.IntN(len(l)))
			for range tc.picks {
				c.Pick()
			}
			for i, n := range c.Picks {
				calls[i] += n
			}
		}
		worst, at := policytest.MaxShareError(calls, shares(tc.lw))
		t.Logf("%s: worst share error %.4f (endpoint %d)", tc.name, worst, at)
		if worst > 0.02 {
			t.Errorf("%s: calls %v: share of endpoint %d off by %.4f, want ≤ 0.02", tc.name, calls, at, worst)
		}
	}
}

func randomWeights(r *rand.Rand, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = 0.1 + 2*r.Float64()
	}
	return out
}

func shares(lw []float64) []float64 {
	sum := 0.0
	for _, w := range lw {
		sum += w
	}
	out := make([]float64, len(lw))
	for i, w := range lw {
		out[i] = w / sum
	}
	return out
}

// TestLeastLoaded plays a balancer that counts first entries: pick_first
// clients come and go at random, the load weights change halfway, and each
// new client must go to an endpoint with the lowest (Assigned+1)/weight.
func TestLeastLoaded(t *testing.T) {
	p := &leastLoad{maxEntries: policy.DefaultMaxEntries}
	eps := policytest.Weighted(1, 1, 1, 1, 1) // Consul weights do not count
	lw := []float64{1, 2, 0.5, 1.5, 1}
	assigned := make([]int, len(eps))
	var streams []int // first endpoint per live stream
	r := rand.New(rand.NewPCG(5, 6))
	for step := range 4000 {
		if step == 2000 {
			lw = []float64{2, 0.5, 1, 1, 1.5}
		}
		if len(streams) > 0 && r.IntN(3) == 0 {
			i := r.IntN(len(streams))
			assigned[streams[i]]--
			streams = slices.Delete(streams, i, i+1)
			continue
		}
		l := p.List(policy.Input{Endpoints: eps, LoadWeights: lw, Client: policy.Client{Seed: r.Uint64()}, Assigned: slices.Clone(assigned)})
		got := policytest.PickFirst(l, nil)
		for i := range eps {
			if float64(assigned[i]+1)/lw[i] < float64(assigned[got]+1)/lw[got] {
				t.Fatalf("step %d: assigned %v, weights %v: new client sent to %d, but %d is less loaded", step, assigned, lw, got, i)
			}
		}
		assigned[got]++
		streams = append(streams, got)
	}
	// Clients that stay keep their endpoint, so those from before the
	// change are spread by the old weights until they leave: the live
	// clients are within 2 % of the new shares. 1000 clients arriving at
	// once are spread by load weight to within one.
	want := shares(lw)
	worst, at := policytest.MaxShareError(assigned, want)
	t.Logf("live clients %v: worst share error %.4f (endpoint %d)", assigned, worst, at)
	if worst > 0.02 {
		t.Errorf("live clients %v: share of endpoint %d off by %.4f, want ≤ 0.02", assigned, at, worst)
	}
	fresh := make([]int, len(eps))
	for range 1000 {
		l := p.List(policy.Input{Endpoints: eps, LoadWeights: lw, Client: policy.Client{Seed: r.Uint64()}, Assigned: slices.Clone(fresh)})
		fresh[policytest.PickFirst(l, nil)]++
	}
	for i, a := range fresh {
		if math.Abs(float64(a)-1000*want[i]) > 1 {
			t.Errorf("1000 new clients: %v; endpoint %d has %d, want %.1f ± 1", fresh, i, a, 1000*want[i])
		}
	}
}

func TestRegistered(t *testing.T) {
	o := policy.DefaultOptions()
	o.MaxEntries = 4
	p, err := policy.Build(Name, o)
	if err != nil {
		t.Fatal(err)
	}
	in := policy.Input{Endpoints: policytest.Endpoints("a", "b", "c"), LoadWeights: []float64{3, 1, 2}}
	if got := len(p.List(in)); got != 4 {
		t.Errorf("built policy returned %d entries, want 4 (MaxEntries)", got)
	}
}

// TestSharedSequence has goroutines ask one policy for lists of services
// with different weights at once: the shared sequence must never leak from
// one service into another's list.
func TestSharedSequence(t *testing.T) {
	p := &leastLoad{maxEntries: policy.DefaultMaxEntries}
	type service struct {
		eps []discovery.Endpoint
		lw  []float64
	}
	services := []service{
		{policytest.Weighted(3, 1, 2), []float64{1, 2, 3}},
		{policytest.Weighted(3, 1, 2), nil},
		{policytest.Weighted(1, 1, 4), []float64{1, 2, 3}},
		{policytest.Ramp(7), []float64{0.5, 1, 1, 2, 0.3, 0.9, 1.4}},
	}
	want := make([][][]int, len(services))
	for i, sv := range services {
		for s := range uint64(50) {
			l := (&leastLoad{maxEntries: policy.DefaultMaxEntries}).List(policy.Input{Endpoints: sv.eps, LoadWeights: sv.lw, Client: policy.Client{Seed: s}})
			want[i] = append(want[i], policytest.Indexes(l))
		}
	}
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for round := range 200 {
				i := (g + round) % len(services)
				s := uint64(round % 50)
				sv := services[i]
				got := policytest.Indexes(p.List(policy.Input{Endpoints: sv.eps, LoadWeights: sv.lw, Client: policy.Client{Seed: s}}))
				if diff := cmp.Diff(want[i][s], got); diff != "" {
					t.Errorf("service %d, seed %d: List() mismatch (-want +got):\n%s", i, s, diff)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkList measures first lists of streams with varying seeds, load
// weights and counts, for Ramp(10) and Ramp(100): "shared" reuses the
// service's sequence as the streams of a service do, "rebuilt" alternates
// two sets of weights so that every call builds its sequence.
func BenchmarkList(b *testing.B) {
	for _, n := range []int{10, 100} {
		eps := policytest.Ramp(n)
		r := rand.New(rand.NewPCG(3, 0))
		lws := [][]float64{randomWeights(r, n), randomWeights(r, n)}
		assigned := make([]int, n)
		for i := range assigned {
			assigned[i] = r.IntN(20)
		}
		for _, mode := range []string{"shared", "rebuilt"} {
			b.Run(fmt.Sprintf("endpoints=%d/%s", n, mode), func(b *testing.B) {
				b.ReportAllocs()
				p := &leastLoad{maxEntries: policy.DefaultMaxEntries}
				seed := uint64(0)
				for b.Loop() {
					seed++
					lw := lws[0]
					if mode == "rebuilt" {
						lw = lws[seed%2]
					}
					p.List(policy.Input{Endpoints: eps, LoadWeights: lw, Assigned: assigned, Client: policy.Client{Seed: seed}})
				}
			})
		}
	}
}

// TestProbeShare: the weights a loadweight.Weigher gives a latency outlier
// (a 0.5 % probe share, at most a tenth of an even share) survive the
// list's rounding and its bound of 512 entries: the outlier keeps at least
// one entry, and clients calling round the list send it under 1 % of the
// calls, about the probe share, or one entry when the list is too short
// for less.
func TestProbeShare(t *testing.T) {
	for _, tc := range []struct {
		n, slow int
		want    float64 // the outlier's share of the entries
	}{
		{3, 1, 2.0 / 400},   // 0.5 %, reduced by the common divisor
		{5, 1, 3.0 / 511},   // 0.59 %: rounding in 512 entries
		{5, 2, 1.0 / 200},   // 0.5 % each
		{10, 1, 1.0 / 253},  // 0.4 %
		{50, 1, 1.0 / 491},  // 0.1/50 = 0.2 %: one entry
		{200, 1, 1.0 / 399}, // 0.05 % is under one entry: one in 399
	} {
		t.Run(fmt.Sprintf("%d endpoints, %d slow", tc.n, tc.slow), func(t *testing.T) {
			cfg := loadweight.DefaultConfig()
			cfg.BlackoutPeriod, cfg.Outliers.EjectAfter = 0, 0
			w, err := loadweight.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, tc.n)
			reps := map[string]loadreport.Report{}
			for i := range ids {
				ids[i] = fmt.Sprintf("e%03d", i)
				lat := 0.005
				if i < tc.slow {
					lat = 0.020
				}
				reps[ids[i]] = loadreport.Report{QPS: 100, CPU: 0.5, Concurrency: 100 * lat, At: time.Unix(0, 0)}
			}
			eps := policytest.Endpoints(ids...)
			res, _ := w.Update(time.Unix(0, 0), eps, reps)
			if res.Ejected != tc.slow {
				t.Fatalf("%d ejected, want %d", res.Ejected, tc.slow)
			}
			l := (&leastLoad{maxEntries: 512}).List(policy.Input{Endpoints: eps, LoadWeights: res.Weights})
			counts := make([]int, tc.n)
			for _, e := range l {
				counts[e.Index]++
			}
			for i := range tc.slow {
				got := float64(counts[i]) / float64(len(l))
				t.Logf("outlier %d: %d of %d entries (%.2f %%)", i, counts[i], len(l), 100*got)
				if math.Abs(got-tc.want) > 1e-9 || got >= 0.01 || counts[i] < 1 {
					t.Errorf("outlier %d: %d of %d entries (%.3f %%), want %.3f %% (under 1 %%, at least one)", i, counts[i], len(l), 100*got, 100*tc.want)
				}
			}
		})
	}
}
