package backend

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// consulWait bounds each wait for Consul to reflect a change: a check runs
// every second, and a dev agent syncs at once.
const consulWait = 30 * time.Second

// waitFor polls cond every 100 ms until it holds or consulWait passes.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), consulWait)
	defer cancel()
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v (last error: %v)", what, consulWait, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// instances returns the IDs of the instances of service that Consul lists,
// only the passing ones if passing is set.
func instances(c *api.Client, service string, passing bool) (map[string]*api.AgentService, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	entries, _, err := c.Health().Service(service, "", passing, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	m := make(map[string]*api.AgentService, len(entries))
	for _, e := range entries {
		m[e.Service.ID] = e.Service
	}
	return m, nil
}

func TestConsulRegistrationLifecycle(t *testing.T) {
	skipInShort(t)
	agent := consultest.Start(t)
	c := agent.Client()

	cfg := testConfig(t)
	cfg.Service = "user-srv-lifecycle"
	cfg.Consul = c
	cfg.CheckInterval = time.Second
	cfg.DrainDelay = time.Second
	cfg.Weight = 3
	cfg.Tags = []string{"v1", "zone-a"}
	cfg.Meta = map[string]string{"version": "test"}
	r := serve(t, cfg)

	waitFor(t, "backend passing in Consul", func() (bool, error) {
		m, err := instances(c, cfg.Service, true)
		return m[r.ID()] != nil, err
	})
	m, err := instances(c, cfg.Service, true)
	if err != nil {
		t.Fatal(err)
	}
	got := m[r.ID()]
	if addr := fmt.Sprintf("%s:%d", got.Address, got.Port); addr != r.Addr() || got.Weights.Passing != 3 ||
		fmt.Sprint(got.Tags) != "[v1 zone-a]" || got.Meta["version"] != "test" {
		t.Errorf("registered as %s weight %d tags %v meta %v; want %s weight 3 tags [v1 zone-a] meta version=test",
			addr, got.Weights.Passing, got.Tags, got.Meta, r.Addr())
	}

	r.SetServing(false)
	waitFor(t, "unhealthy backend out of the passing list", func() (bool, error) {
		m, err := instances(c, cfg.Service, true)
		return err == nil && m[r.ID()] == nil, err
	})
	if m, err := instances(c, cfg.Service, false); err != nil || m[r.ID()] == nil {
		t.Errorf("unhealthy backend no longer registered at all (%v), want it listed as critical", err)
	}
	r.SetServing(true)
	waitFor(t, "healthy again", func() (bool, error) {
		m, err := instances(c, cfg.Service, true)
		return m[r.ID()] != nil, err
	})

	// Cancelling Serve deregisters at once and keeps serving for the drain
	// delay, then stops.
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	uc := userpb.NewUserClient(dial(t, r.Addr()))
	r.cancel()
	waitFor(t, "deregistered", func() (bool, error) {
		m, err := instances(c, cfg.Service, false)
		return err == nil && len(m) == 0, err
	})
	select {
	case err := <-r.done:
		t.Fatalf("Serve returned (%v) before the drain delay had passed", err)
	default:
	}
	if _, err := uc.GetUserList(ctx, &userpb.PageInfo{}); err != nil {
		t.Errorf("call during the drain: %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if _, err := uc.GetUserList(ctx, &userpb.PageInfo{}, grpc.WaitForReady(false)); status.Code(err) != codes.Unavailable {
		t.Errorf("call after Serve returned: %v, want Unavailable", err)
	}
}

func TestDeregisterKeepsServing(t *testing.T) {
	skipInShort(t)
	agent := consultest.Start(t)
	c := agent.Client()
	cfg := testConfig(t)
	cfg.Service = "user-srv-deregister"
	cfg.Consul = c
	cfg.CheckInterval = time.Second
	r := serve(t, cfg)

	if m, err := instances(c, cfg.Service, false); err != nil || m[r.ID()] == nil {
		t.Fatalf("not registered once ready (%v)", err)
	}
	for range 2 {
		if err := r.Deregister(); err != nil {
			t.Fatalf("Deregister: %v", err)
		}
	}
	if m, err := instances(c, cfg.Service, false); err != nil || len(m) != 0 {
		t.Errorf("instances after Deregister = %v (%v), want none", m, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	if _, err := userpb.NewUserClient(dial(t, r.Addr())).GetUserList(ctx, &userpb.PageInfo{}); err != nil {
		t.Errorf("call after Deregister: %v", err)
	}
}

func TestServeFailsWhenConsulIsDown(t *testing.T) {
	skipInShort(t)
	agent := consultest.Start(t)
	cfg := testConfig(t)
	cfg.Consul = agent.Client()
	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	if err := b.Serve(ctx); err == nil {
		t.Error("Serve with Consul down succeeded, want a registration error")
	}
}

// skipInShort skips tests that start a real Consul agent in -short mode.
func skipInShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real Consul agent; skipped in -short mode")
	}
}
