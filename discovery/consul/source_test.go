package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var cmpAddr = cmpopts.EquateComparable(netip.AddrPort{}, netip.Addr{})

// ignoreIndex leaves Snapshot.Index out of comparisons.
var ignoreIndex = cmpopts.IgnoreFields(discovery.Snapshot{}, "Index")

var (
	entryA = entry("n1", "10.0.0.1", "a", "", 8080)
	entryB = entry("n2", "10.0.0.2", "b", "", 8080)
)

func ep(id, addr string) discovery.Endpoint {
	return discovery.Endpoint{ID: id, Addr: netip.MustParseAddrPort(addr), Weight: 1}
}

var (
	epA = ep("a", "10.0.0.1:8080")
	epB = ep("b", "10.0.0.2:8080")
)

func snapOf(service string, eps ...discovery.Endpoint) discovery.Snapshot {
	return discovery.Snapshot{Service: service, Endpoints: eps}
}

// watching is one Watch call of a test.
type watching struct {
	snaps  chan discovery.Snapshot
	cancel context.CancelFunc
	done   chan error
}

// watch starts a Watch call that ends with the test.
func watch(t *testing.T, s *Source, service string) *watching {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watching{snaps: make(chan discovery.Snapshot, 100), cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- s.Watch(ctx, service, func(snap discovery.Snapshot) { w.snaps <- snap }) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

func (w *watching) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	select {
	case err, ok := <-w.done:
		if ok && !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want %v", err, context.Canceled)
		}
		if ok {
			close(w.done)
		}
	case <-time.After(testTimeout):
		t.Errorf("Watch did not return after cancel")
	}
}

// next returns the next snapshot published.
func (w *watching) next(t *testing.T) discovery.Snapshot {
	t.Helper()
	select {
	case s := <-w.snaps:
		return s
	case <-time.After(testTimeout):
		t.Fatalf("no snapshot in %v", testTimeout)
		return discovery.Snapshot{}
	}
}

// expect checks the next snapshot.
func (w *watching) expect(t *testing.T, want discovery.Snapshot) discovery.Snapshot {
	t.Helper()
	got := w.next(t)
	if diff := cmp.Diff(want, got, cmpAddr, ignoreIndex); diff != "" {
		t.Fatalf("snapshot mismatch (-want +got):\n%s", diff)
	}
	return got
}

// quiet checks that nothing is published for a while.
func (w *watching) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case s := <-w.snaps:
		t.Fatalf("unexpected snapshot %+v", s)
	case <-time.After(d):
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchPublishesChanges(t *testing.T) {
	f := newFake()
	f.set("svc", withCheck(entryA, "c-a", api.HealthPassing), withCheck(entryB, "c-b", api.HealthPassing))
	f.set("other", entry("n3", "10.0.0.3", "o", "", 80))
	s := newTestSource(t, f, testConfig(f), 0.5)
	w := watch(t, s, "svc")
	o := watch(t, s, "other")
	w.expect(t, snapOf("svc", epA, epB))
	o.next(t)
	waitUntil(t, "the hub to settle", func() bool { return f.fetchCount("other") >= 1 })
	time.Sleep(50 * time.Millisecond)
	otherFetches := f.fetchCount("other")

	// A check turns critical: only its service is fetched again.
	f.setStatus("n2", "c-b", api.HealthCritical)
	w.expect(t, snapOf("svc", epA))
	f.setStatus("n2", "c-b", api.HealthPassing)
	w.expect(t, snapOf("svc", epA, epB))
	// A node check concerns every service on the node.
	f.setStatus("n1", "serfHealth", api.HealthCritical)
	w.expect(t, snapOf("svc", epB))
	time.Sleep(100 * time.Millisecond)
	if got := f.fetchCount("other"); got != otherFetches {
		t.Errorf("other fetched %d more times for changes of svc's checks", got-otherFetches)
	}
	w.quiet(t, 100*time.Millisecond)
	o.quiet(t, 0)
}

func TestUnknownServiceCostsNoQuery(t *testing.T) {
	f := newFake()
	f.set("svc", entryA)
	s := newTestSource(t, f, testConfig(f), 0.5)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if s.dir.Load().ready {
		t.Fatal("ready before the catalog was read")
	}
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	var exists, ready bool
	waitUntil(t, "the directory", func() bool { exists, ready, _ = s.Lookup("SVC"); return ready })
	if !exists {
		t.Error(`Lookup("SVC") = not found, want found (Consul names are case-insensitive)`)
	}
	if exists, _, _ := s.Lookup("nope"); exists {
		t.Error(`Lookup("nope") = found`)
	}
	_, _, changed := s.Lookup("nope")

	w := watch(t, s, "nope")
	w.expect(t, snapOf("nope"))
	if n := f.fetchCount("nope"); n != 0 {
		t.Errorf("an unknown service was fetched %d times", n)
	}

	// Once registered, it is fetched and published.
	f.set("nope", entryB)
	select {
	case <-changed:
	case <-time.After(testTimeout):
		t.Fatal("Lookup's changed channel was not closed")
	}
	w.expect(t, snapOf("nope", epB))
	if exists, _, _ := s.Lookup("nope"); !exists {
		t.Error(`Lookup("nope") = not found after registration`)
	}
	// Deregistered: empty again.
	f.set("nope")
	w.expect(t, snapOf("nope"))
}

func TestCaseVariantsShareOneFetch(t *testing.T) {
	f := newFake()
	f.set("user-srv", withTags(entryA, "SRV"), entryB)
	s := newTestSource(t, f, testConfig(f), 0.5)
	a := watch(t, s, "user-srv@srv,v2")
	a.quiet(t, 0)
	b := watch(t, s, "USER-SRV@V2,Srv")
	all := watch(t, s, "User-Srv")
	tagged := watch(t, s, "user-srv@SRV")
	a.expect(t, snapOf("user-srv@srv,v2"))
	b.expect(t, snapOf("USER-SRV@V2,Srv"))
	all.expect(t, snapOf("User-Srv", epA, epB))
	tagged.expect(t, snapOf("user-srv@SRV", epA))
	s.mu.Lock()
	var names []string
	for n := range s.entries {
		names = append(names, n)
	}
	s.mu.Unlock()
	slices.Sort(names)
	if diff := cmp.Diff([]string{"user-srv", "user-srv@srv", "user-srv@srv,v2"}, names); diff != "" {
		t.Errorf("watched entries (-want +got):\n%s", diff)
	}
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	// Each canonical name is fetched at most once per long poll's first
	// answer.
	if got := f.fetches["user-srv"]; got > 6 {
		t.Errorf("%d fetches, want at most 6 (three canonical names, two first answers)", got)
	}
}

func TestRegistrationWithoutChecksRefetchesAll(t *testing.T) {
	f := newFake()
	f.set("svc", entryA)
	s := newTestSource(t, f, testConfig(f), 0.5)
	w := watch(t, s, "svc")
	w.expect(t, snapOf("svc", epA))
	// A changed port moves the catalog but no check: every watched service
	// is fetched again.
	moved := entry("n1", "10.0.0.1", "a", "", 9090)
	f.change(true, false, func() { f.services["svc"] = []*api.ServiceEntry{moved} })
	w.expect(t, snapOf("svc", ep("a", "10.0.0.1:9090")))
}

func TestFetchesBounded(t *testing.T) {
	f := newFake()
	f.fetchDelay = 5 * time.Millisecond
	const n = 200
	for i := range n {
		f.set(fmt.Sprintf("s%d", i), entry("n1", "10.0.0.1", fmt.Sprintf("i%d", i), "", 80))
	}
	cfg := testConfig(f)
	cfg.MaxFetches = 4
	s := newTestSource(t, f, cfg, 0.5)
	var ws []*watching
	for i := range n {
		ws = append(ws, watch(t, s, fmt.Sprintf("s%d", i)))
	}
	for i, w := range ws {
		if got := w.next(t); len(got.Endpoints) != 1 {
			t.Errorf("s%d: %+v", i, got)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.maxInFlight > cfg.MaxFetches || f.maxInFlight < 2 {
		t.Errorf("%d fetches ran at once, want 2..%d", f.maxInFlight, cfg.MaxFetches)
	}
}

func TestOutageKeepsSnapshotAndRecovers(t *testing.T) {
	f := newFake()
	f.set("svc", withCheck(entryA, "c-a", api.HealthPassing), entryB)
	cfg := testConfig(f)
	logs := &syncbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s := newTestSource(t, f, cfg, 0.5)
	w := watch(t, s, "svc")
	w.expect(t, snapOf("svc", epA, epB))
	f.setErr(errors.New("connection refused"))
	f.setStatus("n1", "c-a", api.HealthCritical) // wakes the polls into the error
	w.quiet(t, 300*time.Millisecond)             // errors publish nothing
	f.setErr(nil)
	f.setStatus("n1", "c-a", api.HealthCritical)
	w.expect(t, snapOf("svc", epB))
	waitUntil(t, "the recovery line", func() bool { return strings.Contains(logs.String(), "Consul reachable again") })
}

func TestLookupIsAPureRead(t *testing.T) {
	f := newFake()
	f.set("svc", entryA)
	s := newTestSource(t, f, testConfig(f), 0.5)
	hubStopped := func() bool {
		s.life.Lock()
		defer s.life.Unlock()
		return s.users == 0 && s.hubCancel == nil
	}

	// Without Run or Watch, Lookup reads nothing and starts nothing.
	for range 100 {
		if exists, ready, _ := s.Lookup("svc"); exists || ready {
			t.Fatalf("Lookup before any read = exists %v, ready %v", exists, ready)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := f.catalogReadCount(); n != 0 {
		t.Errorf("Lookup without Run read the catalog %d times", n)
	}
	if !hubStopped() {
		t.Error("Lookup started the hub")
	}

	// Run reads the directory.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitUntil(t, "the directory", func() bool { _, ready, _ := s.Lookup("svc"); return ready })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want %v", err, context.Canceled)
	}
	if !hubStopped() {
		t.Error("hub still running after Run returned")
	}

	// After Run, Lookup answers from the last read, and reads nothing.
	reads := f.catalogReadCount()
	f.set("other", entryB)
	exists, ready, changed := s.Lookup("svc")
	if !exists || !ready {
		t.Errorf(`Lookup("svc") after Run = exists %v, ready %v, want the last read (true, true)`, exists, ready)
	}
	if exists, _, _ := s.Lookup("other"); exists {
		t.Error(`Lookup("other") found a service registered after Run returned`)
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case <-changed:
		t.Error("changed closed with no hub running")
	default:
	}
	if n := f.catalogReadCount() - reads; n != 0 {
		t.Errorf("Lookup after Run read the catalog %d times", n)
	}
	if !hubStopped() {
		t.Error("Lookup started the hub after Run returned")
	}
}

func TestACLErrorsLogged(t *testing.T) {
	f := newFake()
	f.set("svc", entryA)
	f.setErr(api.StatusError{Code: 403, Body: "ACL not found"})
	cfg := testConfig(f)
	rec := &recorder{}
	cfg.Logger = slog.New(rec)
	s := newTestSource(t, f, cfg, 0.5)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitUntil(t, "an ERROR line", func() bool { return len(rec.atLeast(slog.LevelError)) > 0 })
	time.Sleep(200 * time.Millisecond) // many more failures, still one line
	cancel()
	<-done
	errs := rec.atLeast(slog.LevelError)
	if len(errs) != 1 || !strings.Contains(errs[0], "service:read") || !strings.Contains(errs[0], "-consul-token-file") {
		t.Errorf("ERROR lines %q, want one saying what to do with lbserver's flags", errs)
	}
	if _, ready, _ := s.Lookup("svc"); ready {
		t.Error("ready without ever reading the catalog")
	}
}

func TestEmptyCatalogIsNotReady(t *testing.T) {
	for _, filtered := range []bool{false, true} {
		t.Run(fmt.Sprint("filtered=", filtered), func(t *testing.T) {
			f := newFake()
			f.set("svc", entryA)
			// Without a token Consul answers {} without the filtered header;
			// with one it sets the header.
			f.hidden, f.filtered = true, filtered
			cfg := testConfig(f)
			rec := &recorder{}
			cfg.Logger = slog.New(rec)
			s := newTestSource(t, f, cfg, 0.5)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			waitUntil(t, "an ERROR line", func() bool { return len(rec.atLeast(slog.LevelError)) > 0 })
			time.Sleep(50 * time.Millisecond)
			if _, ready, _ := s.Lookup("svc"); ready {
				t.Error("ready on a catalog without any service")
			}
			cancel()
			<-done
			if errs := rec.atLeast(slog.LevelError); !strings.Contains(strings.Join(errs, "\n"), "service:read") {
				t.Errorf("ERROR lines %q", errs)
			}
			// Once ACLs let the token see the services (no index moves),
			// the source is ready within about a second.
			ctx, cancel = context.WithCancel(context.Background())
			go func() { done <- s.Run(ctx) }()
			time.Sleep(100 * time.Millisecond)
			f.mu.Lock()
			f.hidden = false
			f.mu.Unlock()
			allowed := time.Now()
			waitUntil(t, "readiness", func() bool { _, ready, _ := s.Lookup("svc"); return ready })
			if d := time.Since(allowed); d > 2*time.Second {
				t.Errorf("ready %v after the catalog became visible", d)
			}
			cancel()
			<-done
		})
	}
}

func TestHostnameKeepsLastGoodAndIsReResolved(t *testing.T) {
	f := newFake()
	f.set("svc", withCheck(entry("n1", "10.0.0.1", "h", "backend.example", 80), "c-h", api.HealthPassing))
	cfg := testConfig(f)
	r := &fakeResolver{}
	r.set("backend.example", netip.MustParseAddr("192.0.2.1"))
	cfg.Resolver = r
	cfg.ResolveInterval = MinResolveInterval
	s := newTestSource(t, f, cfg, 0.5)
	w := watch(t, s, "svc")
	w.expect(t, snapOf("svc", ep("h", "192.0.2.1:80")))

	// The name stops resolving: a change in Consul does not drop it.
	r.set("backend.example")
	f.setStatus("n1", "c-h", api.HealthPassing) // same status: no new data
	f.change(true, false, func() {})            // an unexplained catalog change: refetch
	w.quiet(t, 300*time.Millisecond)

	// It resolves to a new address: the timer publishes it.
	r.set("backend.example", netip.MustParseAddr("192.0.2.2"))
	start := time.Now()
	w.expect(t, snapOf("svc", ep("h", "192.0.2.2:80")))
	if d := time.Since(start); d > MinResolveInterval+time.Second {
		t.Errorf("re-resolution took %v", d)
	}
}

func TestDuplicateIDsKeepTheirInstance(t *testing.T) {
	f := newFake()
	f.set("svc", entry("n1", "10.0.0.1", "dup", "", 80), entry("n2", "10.0.0.2", "dup", "", 80))
	s := newTestSource(t, f, testConfig(f), 0.5)
	w := watch(t, s, "svc")
	got := w.next(t)
	var tokens []string
	for _, e := range got.Endpoints {
		tokens = append(tokens, e.ID+"="+e.TokenID())
	}
	if diff := cmp.Diff([]string{"n1/dup=dup", "n2/dup=dup"}, tokens); diff != "" {
		t.Errorf("IDs and token IDs mismatch (-want +got):\n%s", diff)
	}
}

func TestWatchesEndWithTheirContext(t *testing.T) {
	f := newFake()
	f.set("svc", entryA)
	s := newTestSource(t, f, testConfig(f), 0.5)
	var wg sync.WaitGroup
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i)*5*time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			if err := s.Watch(ctx, "svc", func(discovery.Snapshot) {}); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Watch returned %v", err)
			}
		}()
	}
	wg.Wait()
	s.life.Lock()
	defer s.life.Unlock()
	if s.users != 0 || s.hubCancel != nil {
		t.Errorf("hub still running with %d users", s.users)
	}
}

func TestWatchBadService(t *testing.T) {
	f := newFake()
	s := newTestSource(t, f, testConfig(f), 0.5)
	for _, name := range []string{"", "a/b", "a b", strings.Repeat("x", MaxServiceNameLen+1)} {
		if err := s.Watch(context.Background(), name, func(discovery.Snapshot) {}); err == nil {
			t.Errorf("Watch(%q) accepted", name)
		}
	}
	if err := s.Watch(context.Background(), "svc", nil); err == nil {
		t.Error("Watch with a nil publish accepted")
	}
}

// BenchmarkLookupUnknown is what a name nobody registered costs.
func BenchmarkLookupUnknown(b *testing.B) {
	f := newFake()
	for i := range 1000 {
		f.set(fmt.Sprintf("s%d", i), entryA)
	}
	s, err := New(testConfig(f))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	for {
		if _, ready, _ := s.Lookup("s1"); ready {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		if exists, _, _ := s.Lookup("no-such-service"); exists {
			b.Fatal("found")
		}
	}
}

func TestRegistrationWithChecksFetchesOnlyItsService(t *testing.T) {
	f := newFake()
	f.set("svc", withCheck(entryA, "c-a", api.HealthPassing))
	f.set("other", withCheck(entryB, "c-b", api.HealthPassing))
	s := newTestSource(t, f, testConfig(f), 0.5)
	w := watch(t, s, "svc")
	o := watch(t, s, "other")
	w.expect(t, snapOf("svc", epA))
	o.expect(t, snapOf("other", epB))
	time.Sleep(100 * time.Millisecond)
	before := f.fetchCount("other")
	// One transaction registers an instance and its check: the catalog
	// and the checks move at the same index, which explains the change.
	c := withCheck(entry("n3", "10.0.0.3", "c", "", 8080), "c-c", api.HealthPassing)
	f.set("svc", withCheck(entryA, "c-a", api.HealthPassing), c)
	w.expect(t, snapOf("svc", epA, ep("c", "10.0.0.3:8080")))
	time.Sleep(explainWait + 100*time.Millisecond)
	if got := f.fetchCount("other"); got != before {
		t.Errorf("other fetched %d more times for a registration in svc", got-before)
	}
}

// TestHiddenCatalogChangeSeenWithinASweep: two changes between two reads
// of the catalog look like one. Here one service's port changes (no check
// moves), and at the next index another service gains an instance with a
// check, which explains the catalog's new index. The first change is still
// published, within explainedSweep.
func TestHiddenCatalogChangeSeenWithinASweep(t *testing.T) {
	old := explainedSweep
	explainedSweep = 300 * time.Millisecond
	// Restored after the source's goroutines stop (cleanups run last
	// first), not when the test function returns while they still run.
	t.Cleanup(func() { explainedSweep = old })
	f := newFake()
	f.set("svc", withCheck(entryA, "c-a", api.HealthPassing))
	f.set("other", entry("n3", "10.0.0.3", "o", "", 80))
	s := newTestSource(t, f, testConfig(f), 0.5)
	w := watch(t, s, "svc")
	o := watch(t, s, "other")
	w.expect(t, snapOf("svc", epA))
	o.expect(t, snapOf("other", ep("o", "10.0.0.3:80")))

	// Both changes in one hold of the fake's lock, so that the long polls
	// only see the second index.
	f.mu.Lock()
	f.services["other"] = []*api.ServiceEntry{entry("n3", "10.0.0.3", "o", "", 81)}
	f.index++
	f.catalogIndex = f.index
	f.services["svc"] = append(f.services["svc"], withCheck(entryB, "c-b", api.HealthPassing))
	f.index++
	f.catalogIndex, f.stateIndex = f.index, f.index
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()

	w.expect(t, snapOf("svc", epA, epB))
	start := time.Now()
	o.expect(t, snapOf("other", ep("o", "10.0.0.3:81")))
	if d := time.Since(start); d > explainedSweep+time.Second {
		t.Errorf("the hidden port change was published %v after the explained one, want within about %v", d, explainedSweep)
	}
}
