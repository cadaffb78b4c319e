package roundrobin

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/policytest"
)

func eps(ids ...string) []discovery.Endpoint {
	out := make([]discovery.Endpoint, len(ids))
	for i, id := range ids {
		out[i] = discovery.Endpoint{ID: id, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}), 9000), Weight: 1}
	}
	return out
}

func indexes(es []policy.Entry) []int {
	out := make([]int, len(es))
	for i, e := range es {
		if e.Drop {
			out[i] = -1
			continue
		}
		out[i] = e.Index
	}
	return out
}

func TestList(t *testing.T) {
	tests := []struct {
		name string
		in   policy.Input
		want []int
	}{
		{"empty", policy.Input{}, []int{}},
		{"one", policy.Input{Endpoints: eps("a")}, []int{0}},
		{"seed 0", policy.Input{Endpoints: eps("a", "b", "c")}, []int{0, 1, 2}},
		{"seed 4 rotates by 1", policy.Input{Endpoints: eps("a", "b", "c"), Client: policy.Client{Seed: 4}}, []int{1, 2, 0}},
		{"previous first kept", policy.Input{Endpoints: eps("a", "b", "c"), Client: policy.Client{Seed: 0}, Previous: []string{"c", "a"}}, []int{2, 0, 1}},
		{"previous first gone falls back to seed", policy.Input{Endpoints: eps("a", "b", "c"), Client: policy.Client{Seed: 2}, Previous: []string{"z", "a"}}, []int{2, 0, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := indexes(rr{}.List(tc.in))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("List() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPickFirstSpread checks what pick_first clients see: over many streams
// with consecutive seeds, every endpoint is first equally often.
func TestPickFirstSpread(t *testing.T) {
	e := eps("a", "b", "c", "d")
	first := make([]int, len(e))
	for seed := range uint64(400) {
		l := rr{}.List(policy.Input{Endpoints: e, Client: policy.Client{Seed: seed}})
		first[l[0].Index]++
	}
	if diff := cmp.Diff([]int{100, 100, 100, 100}, first); diff != "" {
		t.Errorf("first entries (-want +got):\n%s", diff)
	}
}

func TestRegistered(t *testing.T) {
	p, err := policy.Build(Name, policy.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got := len(p.List(policy.Input{Endpoints: eps("a", "b")})); got != 2 {
		t.Fatalf("built policy returned %d entries, want 2", got)
	}
	if _, err := policy.Build("no_such_policy", policy.DefaultOptions()); err == nil {
		t.Fatal("Build(no_such_policy) succeeded")
	}
}

func TestSticky(t *testing.T) {
	policytest.CheckSticky(t, rr{}, policytest.Endpoints("a", "b", "c", "d", "e"), 200)
}

func BenchmarkList(b *testing.B) {
	policytest.Benchmark(b, rr{})
}
