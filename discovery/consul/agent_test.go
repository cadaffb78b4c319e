package consul

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/consultest"
)

// watchAgent watches service on a real agent and returns the channel of
// published snapshots and a function that stops the watch and checks that
// it ended well.
func watchAgent(t *testing.T, ctx context.Context, s *Source, service string) (<-chan discovery.Snapshot, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	snaps := make(chan discovery.Snapshot, 100)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, service, func(snap discovery.Snapshot) { snaps <- snap }) }()
	return snaps, func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch(%q) returned %v, want %v", service, err, context.Canceled)
			}
		case <-time.After(testTimeout):
			t.Errorf("Watch(%q) did not return after cancel", service)
		}
	}
}

// ids returns the endpoint IDs of snap.
func ids(snap discovery.Snapshot) []string {
	var out []string
	for _, ep := range snap.Endpoints {
		out = append(out, ep.ID)
	}
	return out
}

// nextSnapshot waits for the next snapshot.
func nextSnapshot(t *testing.T, ctx context.Context, snaps <-chan discovery.Snapshot) discovery.Snapshot {
	t.Helper()
	select {
	case snap := <-snaps:
		return snap
	case <-ctx.Done():
		t.Fatalf("no snapshot: %v", ctx.Err())
		return discovery.Snapshot{}
	}
}

func TestWatchRealAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Consul agent")
	}
	agent := consultest.Start(t)
	defer agent.Stop() // before goleak's check, which runs after the test
	client := agent.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const service = "lookaside-it"
	regs := []*api.AgentServiceRegistration{
		{
			ID: "it-1", Name: service, Address: "127.0.0.1", Port: 50051,
			Meta:    map[string]string{"zone": "a"},
			Weights: &api.AgentWeights{Passing: 3, Warning: 1},
		},
		{
			ID: "it-2", Name: service, Address: "::1", Port: 50052,
			Check: &api.AgentServiceCheck{CheckID: "it-2-ttl", TTL: "10m", Status: api.HealthPassing},
		},
	}
	for _, r := range regs {
		if err := client.Agent().ServiceRegister(r); err != nil {
			t.Fatalf("registering %s: %v", r.ID, err)
		}
	}

	cfg := DefaultConfig()
	cfg.Client = API(client)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("unknown service publishes an empty snapshot", func(t *testing.T) {
		snaps, stop := watchAgent(t, ctx, s, "lookaside-none")
		defer stop()
		snap := nextSnapshot(t, ctx, snaps)
		if len(snap.Endpoints) != 0 || snap.Service != "lookaside-none" || snap.Index == 0 {
			t.Errorf("first snapshot = %+v, want an empty one with an index", snap)
		}
	})

	snaps, stop := watchAgent(t, ctx, s, service)
	defer stop()
	want := discovery.Snapshot{
		Service: service,
		Meta:    map[string]string{"zone": "a"},
		Endpoints: []discovery.Endpoint{
			epw("it-1", "127.0.0.1:50051", 3, map[string]string{"zone": "a"}),
			epw("it-2", "[::1]:50052", 1, nil),
		},
	}
	first := nextSnapshot(t, ctx, snaps)
	if diff := cmp.Diff(want, first, cmpAddr, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Index" }, cmp.Ignore())); diff != "" {
		t.Fatalf("first snapshot mismatch (-want +got):\n%s", diff)
	}

	// A failing check takes the instance out; passing again brings it back.
	if err := client.Agent().UpdateTTL("it-2-ttl", "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	if got := ids(nextSnapshot(t, ctx, snaps)); !cmp.Equal(got, []string{"it-1"}) {
		t.Fatalf("after it-2 failed: endpoints %q, want [it-1]", got)
	}
	if err := client.Agent().UpdateTTL("it-2-ttl", "up", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	if got := ids(nextSnapshot(t, ctx, snaps)); !cmp.Equal(got, []string{"it-1", "it-2"}) {
		t.Fatalf("after it-2 passed again: endpoints %q, want [it-1 it-2]", got)
	}

	// Give the watcher time to be blocked in its query, so that the delay
	// measured is that of a change reaching a waiting watcher.
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	if err := client.Agent().ServiceDeregister("it-1"); err != nil {
		t.Fatal(err)
	}
	snap := nextSnapshot(t, ctx, snaps)
	delay := time.Since(start)
	if got := ids(snap); !cmp.Equal(got, []string{"it-2"}) {
		t.Fatalf("after deregistering it-1: endpoints %q, want [it-2]", got)
	}
	if snap.Index <= first.Index {
		t.Errorf("index after deregistration %d, want more than %d", snap.Index, first.Index)
	}
	t.Logf("deregistration to snapshot: %v", delay)
	if delay > 5*time.Second {
		t.Errorf("deregistration took %v to reach the watcher", delay)
	}

	// Nothing else is published for the same data.
	select {
	case extra := <-snaps:
		t.Errorf("unexpected snapshot %+v", extra)
	case <-time.After(300 * time.Millisecond):
	}
}
