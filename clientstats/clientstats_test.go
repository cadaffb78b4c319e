package clientstats

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
)

func TestRegistry(t *testing.T) {
	r := New()
	a := ClientKey{Service: "s", Stream: 1, Peer: "127.0.0.1:1"}
	b := ClientKey{Service: "s", Stream: 2, Peer: "127.0.0.1:2"}
	r.Add(a, &lbpb.ClientStats{NumCallsStarted: 10, NumCallsFinished: 9, NumCallsFinishedKnownReceived: 8,
		CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{LoadBalanceToken: "drop-x", NumCalls: 1}}})
	r.Add(a, &lbpb.ClientStats{NumCallsStarted: 5, NumCallsFinished: 5, NumCallsFinishedWithClientFailedToSend: 1})
	r.Add(b, &lbpb.ClientStats{NumCallsStarted: 1, CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{LoadBalanceToken: "drop-x", NumCalls: 2}}})

	want := Counters{Reports: 3, Started: 16, Finished: 14, FailedToSend: 1, KnownReceived: 8, Dropped: map[string]int64{"drop-x": 3}}
	if diff := cmp.Diff(want, r.Service("s")); diff != "" {
		t.Errorf("Service(s) (-want +got):\n%s", diff)
	}
	got, ok := r.Client(a)
	wantA := Counters{Reports: 2, Started: 15, Finished: 14, FailedToSend: 1, KnownReceived: 8, Dropped: map[string]int64{"drop-x": 1}}
	if diff := cmp.Diff(wantA, got); !ok || diff != "" {
		t.Errorf("Client(a) ok=%v (-want +got):\n%s", ok, diff)
	}
	// A copy must not alias the registry's map.
	got.Dropped["drop-x"] = 100
	if c, _ := r.Client(a); c.Dropped["drop-x"] != 1 {
		t.Error("Client returned a map that aliases the registry")
	}
	r.Forget(a)
	if _, ok := r.Client(a); ok {
		t.Error("Client(a) still known after Forget")
	}
	if r.Service("s").Started != 16 {
		t.Error("Forget changed the service totals")
	}
	if diff := cmp.Diff([]string{"s"}, r.Services()); diff != "" {
		t.Errorf("Services (-want +got):\n%s", diff)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		s    *lbpb.ClientStats
		want bool
	}{
		{&lbpb.ClientStats{}, true},
		{&lbpb.ClientStats{NumCallsStarted: 3, NumCallsFinished: 3}, true},
		{&lbpb.ClientStats{NumCallsStarted: -1}, false},
		{&lbpb.ClientStats{NumCallsFinishedKnownReceived: -5}, false},
		{&lbpb.ClientStats{CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{NumCalls: -1}}}, false},
	}
	for i, tc := range tests {
		if got := Validate(tc.s); got != tc.want {
			t.Errorf("%d: Validate(%v) = %v, want %v", i, tc.s, got, tc.want)
		}
	}
}
