package consul

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// testTimeout bounds every wait of a test.
const testTimeout = 10 * time.Second

// fakeConsul is an in-memory Consul: a catalog of service entries (with
// their checks, node checks included) and blocking queries on the
// catalog's and the checks' indexes, as Consul keeps them.
type fakeConsul struct {
	mu           sync.Mutex
	index        uint64                         // guarded by mu: the last Raft index
	catalogIndex uint64                         // guarded by mu: of the services table
	stateIndex   uint64                         // guarded by mu: of the checks table
	services     map[string][]*api.ServiceEntry // guarded by mu: by name as registered
	changed      chan struct{}                  // guarded by mu: closed at every change
	err          error                          // guarded by mu: when set, every query fails with it
	filtered     bool                           // guarded by mu: answers are marked filtered by ACLs
	hidden       bool                           // guarded by mu: the catalog and state answers are empty
	fetches      map[string]int                 // guarded by mu: ServiceMultipleTags calls per service
	fetchTags    map[string][]string            // guarded by mu: the tags of the last fetch per service
	inFlight     int                            // guarded by mu: ServiceMultipleTags calls running
	maxInFlight  int                            // guarded by mu
	probes       int                            // guarded by mu
	catalogReads int                            // guarded by mu: Services calls
	fetchDelay   time.Duration                  // guarded by mu: how long a fetch takes
}

func newFake() *fakeConsul {
	return &fakeConsul{
		index: 10, catalogIndex: 10, stateIndex: 10,
		services:  map[string][]*api.ServiceEntry{},
		changed:   make(chan struct{}),
		fetches:   map[string]int{},
		fetchTags: map[string][]string{},
	}
}

// newHarness is a fake with nothing registered.
func newHarness() *fakeConsul { return newFake() }

// change applies f under the lock as one Raft transaction that moves the
// services table's index (catalog) and/or the checks table's (state).
func (f *fakeConsul) change(catalog, state bool, fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
	f.index++
	if catalog {
		f.catalogIndex = f.index
	}
	if state {
		f.stateIndex = f.index
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

// set registers the entries of a service (with their checks), replacing
// its previous ones; no entries deregisters it.
func (f *fakeConsul) set(service string, entries ...*api.ServiceEntry) {
	f.change(true, true, func() {
		if len(entries) == 0 {
			delete(f.services, service)
			return
		}
		f.services[service] = entries
	})
}

// setStatus changes the status of every check with the id on node.
func (f *fakeConsul) setStatus(node, checkID, status string) {
	f.change(false, true, func() {
		for name, es := range f.services {
			for i, e := range es {
				c := *e
				c.Checks = slices.Clone(e.Checks)
				for j, ch := range c.Checks {
					if ch.Node == node && ch.CheckID == checkID {
						cc := *ch
						cc.Status = status
						c.Checks[j] = &cc
					}
				}
				es[i] = &c
			}
			f.services[name] = es
		}
	})
}

func (f *fakeConsul) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeConsul) fetchCount(service string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches[service]
}

func (f *fakeConsul) catalogReadCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.catalogReads
}

func (f *fakeConsul) totalFetches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.fetches {
		n += c
	}
	return n
}

// block waits, as a blocking query does, until index passes q.WaitIndex,
// q.WaitTime passes or the context ends. f.mu must be held; it is held
// again on return.
func (f *fakeConsul) block(q *api.QueryOptions, index func() uint64) error {
	if q.WaitIndex == 0 {
		return nil
	}
	timeout := time.NewTimer(q.WaitTime)
	defer timeout.Stop()
	for index() <= q.WaitIndex {
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-timeout.C:
			f.mu.Lock()
			return nil
		case <-q.Context().Done():
			f.mu.Lock()
			return q.Context().Err()
		}
		f.mu.Lock()
	}
	return nil
}

func (f *fakeConsul) meta(index uint64) *api.QueryMeta {
	return &api.QueryMeta{LastIndex: index, ResultsFilteredByACLs: f.filtered}
}

// Services implements Client.
func (f *fakeConsul) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.catalogReads++
	if err := f.block(q, func() uint64 { return f.catalogIndex }); err != nil {
		return nil, nil, err
	}
	if f.err != nil {
		return nil, nil, f.err
	}
	out := map[string][]string{}
	if !f.hidden {
		for name := range f.services {
			out[name] = nil
		}
	}
	return out, f.meta(f.catalogIndex), nil
}

// State implements Client.
func (f *fakeConsul) State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if state != api.HealthAny {
		return nil, nil, fmt.Errorf("state %q", state)
	}
	if err := f.block(q, func() uint64 { return f.stateIndex }); err != nil {
		return nil, nil, err
	}
	if f.err != nil {
		return nil, nil, f.err
	}
	var out api.HealthChecks
	seen := map[string]bool{}
	if !f.hidden {
		for name, es := range f.services {
			for _, e := range es {
				for _, c := range e.Checks {
					k := c.Node + "\x00" + c.CheckID
					if seen[k] {
						continue
					}
					seen[k] = true
					cc := *c
					if cc.ServiceID != "" {
						cc.ServiceName = name
					}
					out = append(out, &cc)
				}
			}
		}
	}
	return out, f.meta(f.stateIndex), nil
}

// ServiceMultipleTags implements Client: case-insensitive service and tags,
// like Consul.
func (f *fakeConsul) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	if q.WaitIndex != 0 {
		return nil, nil, fmt.Errorf("blocking fetch of %q", service)
	}
	f.mu.Lock()
	f.fetches[service]++
	f.fetchTags[service] = tags
	f.inFlight++
	f.maxInFlight = max(f.maxInFlight, f.inFlight)
	delay := f.fetchDelay
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-q.Context().Done():
			return nil, nil, q.Context().Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, nil, f.err
	}
	var out []*api.ServiceEntry
	for name, es := range f.services {
		if !strings.EqualFold(name, service) {
			continue
		}
	next:
		for _, e := range es {
			for _, t := range tags {
				if !slices.ContainsFunc(e.Service.Tags, func(x string) bool { return strings.EqualFold(x, t) }) {
					continue next
				}
			}
			if passingOnly && e.Checks.AggregatedStatus() != api.HealthPassing {
				continue
			}
			out = append(out, e)
		}
	}
	return out, f.meta(max(f.catalogIndex, f.stateIndex)), nil
}

// LeaderWithQueryOptions implements Client.
func (f *fakeConsul) LeaderWithQueryOptions(q *api.QueryOptions) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	if f.err != nil {
		return "", f.err
	}
	return "127.0.0.1:8300", nil
}

// fakeResolver resolves from a map; missing hosts fail.
type fakeResolver struct {
	mu    sync.Mutex
	hosts map[string][]netip.Addr // guarded by mu
	calls map[string]int          // guarded by mu
}

func (r *fakeResolver) set(host string, addrs ...netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil {
		r.hosts = map[string][]netip.Addr{}
	}
	if len(addrs) == 0 {
		delete(r.hosts, host)
		return
	}
	r.hosts[host] = addrs
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
	return slices.Clone(addrs), nil
}

// testConfig returns a valid config whose client is f, with short pauses.
func testConfig(f *fakeConsul) Config {
	cfg := DefaultConfig()
	cfg.Client = f
	cfg.Resolver = &fakeResolver{}
	cfg.MinInterval = 10 * time.Millisecond
	cfg.BackoffBase = 10 * time.Millisecond
	cfg.BackoffMax = 100 * time.Millisecond
	cfg.WaitTime = 5 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// newTestSource builds a Source with a constant jitter input.
func newTestSource(t *testing.T, _ *fakeConsul, cfg Config, r float64) *Source {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.clock = clock.Real{}
	s.rand = func() float64 { return r }
	return s
}

// entry builds a passing service entry with a node check.
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

// withCheck adds a service check to a copy of e.
func withCheck(e *api.ServiceEntry, checkID, status string) *api.ServiceEntry {
	c := *e
	c.Checks = append(slices.Clone(e.Checks), &api.HealthCheck{
		Node: e.Node.Node, CheckID: checkID, Status: status, ServiceID: e.Service.ID, ServiceName: e.Service.Service,
	})
	return &c
}

// withTags sets the tags of a copy of e.
func withTags(e *api.ServiceEntry, tags ...string) *api.ServiceEntry {
	c := *e
	s := *e.Service
	s.Tags = tags
	c.Service = &s
	return &c
}

// recorder is a slog handler that keeps the records.
type recorder struct {
	mu      sync.Mutex
	records []slog.Record // guarded by mu
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) atLeast(level slog.Level) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var msgs []string
	for _, rec := range r.records {
		if rec.Level >= level {
			msgs = append(msgs, rec.Message)
		}
	}
	return msgs
}
