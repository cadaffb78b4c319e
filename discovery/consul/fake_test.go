package consul

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
)

// testTimeout bounds every wait of a test.
const testTimeout = 10 * time.Second

// query is what the fake client records of one call.
type query struct {
	Service    string
	Tags       []string
	Passing    bool
	WaitIndex  uint64
	WaitTime   time.Duration
	AllowStale bool
	Datacenter string
	Near       string
}

// reply answers one fetch.
type reply struct {
	entries []*api.ServiceEntry
	index   uint64
	err     error
	noMeta  bool          // answer without QueryMeta
	took    time.Duration // fake time the query blocked for
}

type fetchCall struct {
	q     query
	reply chan reply
}

// event is one thing the watcher did, in order: a fetch, a sleep or a
// publish. The watcher blocks on fetches and sleeps until the test answers,
// so a test sees every event in order and knows exactly what happened
// between two of them.
type event struct {
	fetch   *fetchCall
	sleep   time.Duration
	fire    func() // for sleeps: advance the clock and fire the timer
	publish *discovery.Snapshot
}

func (e event) String() string {
	switch {
	case e.fetch != nil:
		return fmt.Sprintf("fetch(index=%d)", e.fetch.q.WaitIndex)
	case e.publish != nil:
		return fmt.Sprintf("publish(%+v)", *e.publish)
	default:
		return fmt.Sprintf("sleep(%v)", e.sleep)
	}
}

// harness holds the fakes of one watcher.
type harness struct {
	events chan event
	mu     sync.Mutex
	now    time.Time // guarded by mu
}

func newHarness() *harness {
	return &harness{
		events: make(chan event, 100),
		now:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func (h *harness) advance(d time.Duration) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.now = h.now.Add(d)
	return h.now
}

// Now implements clock.
func (h *harness) Now() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

// NewTimer implements clock.
func (h *harness) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c := make(chan time.Time, 1)
	h.events <- event{sleep: d, fire: func() { c <- h.advance(d) }}
	return c, func() bool { return false }
}

// ServiceMultipleTags implements Client.
func (h *harness) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx := q.Context()
	call := &fetchCall{
		q: query{
			Service: service, Tags: tags, Passing: passingOnly,
			WaitIndex: q.WaitIndex, WaitTime: q.WaitTime,
			AllowStale: q.AllowStale, Datacenter: q.Datacenter, Near: q.Near,
		},
		reply: make(chan reply),
	}
	h.events <- event{fetch: call}
	select {
	case r := <-call.reply:
		h.advance(r.took)
		if r.err != nil {
			return nil, nil, r.err
		}
		if r.noMeta {
			return r.entries, nil, nil
		}
		return r.entries, &api.QueryMeta{LastIndex: r.index}, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// next returns the next event, failing the test after testTimeout.
func (h *harness) next(t *testing.T) event {
	t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(testTimeout):
		t.Fatalf("no event from the watcher in %v", testTimeout)
		return event{}
	}
}

// fakeResolver resolves from a map; missing hosts fail.
type fakeResolver struct {
	mu    sync.Mutex
	hosts map[string][]netip.Addr
	calls map[string]int // guarded by mu
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.calls == nil {
		r.calls = make(map[string]int)
	}
	r.calls[host]++
	if network != "ip" {
		return nil, fmt.Errorf("unexpected network %q", network)
	}
	if _, ok := ctx.Deadline(); !ok {
		return nil, fmt.Errorf("lookup of %q without a deadline", host)
	}
	addrs, ok := r.hosts[host]
	if !ok {
		return nil, fmt.Errorf("lookup %s: no such host", host)
	}
	return addrs, nil
}

// testConfig returns a valid config whose client is h.
func testConfig(h *harness) Config {
	cfg := DefaultConfig()
	cfg.Client = h
	cfg.Resolver = &fakeResolver{}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// newTestSource builds a Source on the harness's clock with a constant
// jitter input.
func newTestSource(t *testing.T, h *harness, cfg Config, r float64) *Source {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.clock = h
	s.rand = func() float64 { return r }
	return s
}

// entry builds a passing service entry.
func entry(node, nodeAddr, id, addr string, port int) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node: &api.Node{Node: node, Address: nodeAddr},
		Service: &api.AgentService{
			ID: id, Service: "svc", Address: addr, Port: port,
			Weights: api.AgentWeights{Passing: 1, Warning: 1},
		},
		Checks: api.HealthChecks{
			{Node: node, CheckID: "serfHealth", Status: api.HealthPassing},
		},
	}
}
