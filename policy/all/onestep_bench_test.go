package all_test

import (
	"fmt"
	"testing"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
)

// benchServices returns the inputs of n services of 100 endpoints each,
// with Consul weights, load weights and counts that differ between the
// services, as the streams of a balancer see them.
func benchServices(n int) []policy.Input {
	var out []policy.Input
	for s := range n {
		in := policy.Input{Assigned: make([]int, 100), LoadWeights: make([]float64, 100)}
		for i := range 100 {
			in.Endpoints = append(in.Endpoints, discovery.Endpoint{ID: fmt.Sprintf("s%d-ep-%03d", s, i), Weight: 1 + i%(5+2*s)})
			in.LoadWeights[i] = 0.5 + float64(i%(10+3*s))*0.1
			in.Assigned[i] = i % 3
		}
		out = append(out, in)
	}
	return out
}

// benchPolicies are the policies whose per-stream cost the benchmarks
// compare: the two that build a weighted sequence.
var benchPolicies = []string{weightedroundrobin.Name, leastload.Name}

// BenchmarkOneStepList measures Policy.List, one whole list per call, for
// 100 endpoints: for one service, and for two services whose streams
// alternate. Each iteration is another stream (its own seed).
func BenchmarkOneStepList(b *testing.B) {
	for _, name := range benchPolicies {
		for _, n := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/services=%d", name, n), func(b *testing.B) {
				p, err := policy.Build(name, policy.DefaultOptions())
				if err != nil {
					b.Fatal(err)
				}
				ins := benchServices(n)
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					in := ins[i%n]
					in.Client.Seed = uint64(i)
					p.List(in)
				}
			})
		}
	}
}
