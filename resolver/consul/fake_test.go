package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// fakeHealth is an in-memory Consul health endpoint with blocking-query
// semantics: a query whose WaitIndex is at least the service's index
// blocks until the service changes (then it answers, whatever the new
// index, like a server restored from an older snapshot), its wait ends or
// its context is done; any other query answers at once.
type fakeHealth struct {
	mu       sync.Mutex
	services map[string]*fakeService // guarded by mu
	changed  chan struct{}           // guarded by mu; closed and replaced on every change
	fail     int                     // guarded by mu; fail this many of the next queries
	calls    []fakeCall              // guarded by mu
}

type fakeService struct {
	index   uint64
	entries []*api.ServiceEntry
}

type fakeCall struct {
	service     string
	tags        []string
	passingOnly bool
	q           api.QueryOptions // without its context
	at          time.Time
}

func newFakeHealth() *fakeHealth {
	return &fakeHealth{services: map[string]*fakeService{}, changed: make(chan struct{})}
}

// instance is one fake instance.
type instance struct {
	addr   string // service address; empty uses the node's
	node   string // node address
	port   int
	tags   []string
	status string // "passing" unless set
}

// set replaces a service's instances and sets its index.
func (f *fakeHealth) set(service string, index uint64, insts ...instance) {
	entries := make([]*api.ServiceEntry, 0, len(insts))
	for i, in := range insts {
		status := in.status
		if status == "" {
			status = api.HealthPassing
		}
		entries = append(entries, &api.ServiceEntry{
			Node:    &api.Node{Node: fmt.Sprintf("node-%d", i), Address: in.node},
			Service: &api.AgentService{ID: fmt.Sprintf("%s-%d", service, i), Service: service, Address: in.addr, Port: in.port, Tags: in.tags},
			Checks:  api.HealthChecks{{Status: status}},
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services[service] = &fakeService{index: index, entries: entries}
	close(f.changed)
	f.changed = make(chan struct{})
}

// failNext makes the next n queries fail.
func (f *fakeHealth) failNext(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = n
}

func (f *fakeHealth) callsTo(service string) []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCall
	for _, c := range f.calls {
		if c.service == service {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeHealth) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx := q.Context()
	qc := *q
	qc = *qc.WithContext(context.Background())
	f.mu.Lock()
	f.calls = append(f.calls, fakeCall{service, slices.Clone(tags), passingOnly, qc, time.Now()})
	if f.fail > 0 {
		f.fail--
		f.mu.Unlock()
		return nil, nil, errors.New("fake: Consul is down")
	}
	var timeout <-chan time.Time
	woken := false
	for {
		s := f.services[service]
		if s == nil {
			s = &fakeService{index: 1}
		}
		if q.WaitIndex == 0 || s.index > q.WaitIndex || woken {
			var out []*api.ServiceEntry
			for _, e := range s.entries {
				if passingOnly && e.Checks.AggregatedStatus() != api.HealthPassing {
					continue
				}
				if !containsAll(e.Service.Tags, tags) {
					continue
				}
				out = append(out, e)
			}
			f.mu.Unlock()
			return out, &api.QueryMeta{LastIndex: s.index}, nil
		}
		ch := f.changed
		f.mu.Unlock()
		if timeout == nil {
			t := time.NewTimer(q.WaitTime)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ch:
			woken = true
		case <-timeout:
			return nil, &api.QueryMeta{LastIndex: s.index}, nil
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		f.mu.Lock()
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// fakeCC records what a resolver tells the channel. UpdateState returns
// the error of reject, if set.
type fakeCC struct {
	resolver.ClientConn // unexpected calls panic

	states chan resolver.State
	errs   chan error

	mu     sync.Mutex
	reject func(resolver.State) error // guarded by mu
}

func newFakeCC() *fakeCC {
	return &fakeCC{states: make(chan resolver.State, 1000), errs: make(chan error, 1000)}
}

func (f *fakeCC) UpdateState(s resolver.State) error {
	f.states <- s
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reject != nil {
		return f.reject(s)
	}
	return nil
}

func (f *fakeCC) setReject(fn func(resolver.State) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reject = fn
}

func (f *fakeCC) ReportError(err error) { f.errs <- err }

// fakeSC stands for a parsed service config.
type fakeSC struct {
	serviceconfig.Config
	json string
}

func (f *fakeCC) ParseServiceConfig(js string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{Config: fakeSC{json: js}}
}

// next waits for the next state.
func (f *fakeCC) next(t *testing.T) resolver.State {
	t.Helper()
	select {
	case s := <-f.states:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no state within 5s")
		return resolver.State{}
	}
}

// none checks that no state comes within d.
func (f *fakeCC) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case s := <-f.states:
		t.Fatalf("unexpected state %+v", s)
	case <-time.After(d):
	}
}

func (f *fakeCC) nextErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-f.errs:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no error reported within 5s")
		return nil
	}
}

var testTuning = tuning{minInterval: time.Millisecond, backoffBase: 10 * time.Millisecond}

func testLogger() *slog.Logger {
	if os.Getenv("LOOKASIDE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// build builds a resolver for target on fh and cc; Close runs at cleanup.
func build(t *testing.T, target string, fh *fakeHealth, cc *fakeCC, opts resolver.BuildOptions) *consulResolver {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	b := &builder{scheme: Scheme, logger: testLogger(), tune: testTuning,
		newHealth: func(Target) (healthClient, func(context.Context) error, func(), error) {
			return fh, nil, func() {}, nil
		}}
	r, err := b.Build(resolver.Target{URL: *u}, cc, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r.(*consulResolver)
}
