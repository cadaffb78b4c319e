package dnsserver

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/static"
)

// pushSource publishes the snapshots sent on its channel.
type pushSource struct{ snaps chan discovery.Snapshot }

func (p pushSource) Watch(ctx context.Context, service string, publish func(discovery.Snapshot)) error {
	for {
		select {
		case s := <-p.snaps:
			publish(s)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func snapOf(addrs ...string) discovery.Snapshot {
	s := discovery.Snapshot{Service: "lookaside"}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{ID: a, Addr: netip.MustParseAddrPort(a), Weight: 1})
	}
	return s
}

func TestReplicas(t *testing.T) {
	src := pushSource{snaps: make(chan discovery.Snapshot)}
	r := NewReplicas(src, "lookaside", slog.New(slog.DiscardHandler))
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	r.now = clock.now
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// No first answer yet: Balancers waits for its context.
	short, scancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	if got, ok := r.Balancers(short); ok {
		t.Fatalf("Balancers before the first answer = %v, true", got)
	}
	scancel()

	check := func(what string, want ...string) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(t.Context(), time.Second)
		defer wcancel()
		got, ok := r.Balancers(wctx)
		var gs []string
		for _, a := range got {
			gs = append(gs, a.String())
		}
		if diff := cmp.Diff(want, gs); !ok || diff != "" {
			t.Errorf("%s: ok %v (-want +got):\n%s", what, ok, diff)
		}
	}
	push := func(s discovery.Snapshot) {
		t.Helper()
		select {
		case src.snaps <- s:
		case <-time.After(5 * time.Second):
			t.Fatal("Run is not watching")
		}
		src.snaps <- s // the second send returns once the first was published
	}
	push(snapOf("127.0.0.1:7001", "[::ffff:127.0.0.1]:7000", "127.0.0.1:7001", "127.0.0.1:7002"))
	check("first answer, sorted, unmapped, deduplicated", "127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002")
	push(snapOf("127.0.0.1:7000", "127.0.0.1:7001"))
	check("one left", "127.0.0.1:7000", "127.0.0.1:7001")
	clock.advance(10 * time.Minute)
	push(snapOf("127.0.0.1:7001"))
	clock.advance(30 * time.Second)
	push(snapOf())
	check("none passing: the last two to leave, within a minute", "127.0.0.1:7000", "127.0.0.1:7001")
	push(snapOf("[2001:db8::1]:7000"))
	check("a new one", "[2001:db8::1]:7000")
	clock.advance(time.Hour)
	push(snapOf())
	check("none passing again: the last to leave", "[2001:db8::1]:7000")
	push(snapOf("127.0.0.1:7002"))
	check("one comes back", "127.0.0.1:7002")

	if err := r.Run(ctx); err == nil {
		t.Error("second Run: want an error")
	}
}

func TestReplicasEmptyFirst(t *testing.T) {
	r := NewReplicas(static.New(nil), "lookaside", nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer wcancel()
	if got, ok := r.Balancers(wctx); !ok || len(got) != 0 {
		t.Errorf("Balancers = %v, %v; want none, true", got, ok)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestReplicasWatchError(t *testing.T) {
	r := NewReplicas(static.New(nil), "", nil) // static rejects an empty name
	if err := r.Run(t.Context()); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want the watch error", err)
	}
}

// fakeClock is a clock the test moves; only the watch goroutine reads it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
