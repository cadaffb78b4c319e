package all_test

import (
	"fmt"
	"testing"

	"github.com/lookaside-lb/lookaside/policy"
)

// BenchmarkStreamList measures what a stream does with a new plan:
// Prepared.List for 100 endpoints, for one service and for two services
// whose streams alternate, as BenchmarkOneStepList does in one step.
func BenchmarkStreamList(b *testing.B) {
	for _, name := range benchPolicies {
		for _, n := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/services=%d", name, n), func(b *testing.B) {
				p, err := policy.Build(name, policy.DefaultOptions())
				if err != nil {
					b.Fatal(err)
				}
				ins := benchServices(n)
				prepared := make([]policy.Prepared, n)
				for i, in := range ins {
					prepared[i] = p.Prepare(in.Plan())
				}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					in := ins[i%n].Stream()
					in.Client.Seed = uint64(i)
					prepared[i%n].List(in)
				}
			})
		}
	}
}

// BenchmarkPrepare measures what the planner does once per plan: Prepare
// for 100 endpoints.
func BenchmarkPrepare(b *testing.B) {
	for _, name := range benchPolicies {
		b.Run(name, func(b *testing.B) {
			p, err := policy.Build(name, policy.DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			in := benchServices(1)[0].Plan()
			b.ReportAllocs()
			for b.Loop() {
				p.Prepare(in)
			}
		})
	}
}
