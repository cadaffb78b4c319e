package consul

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/internal/clock"
	"github.com/lookaside-lb/lookaside/internal/consulwatch"
)

// adviceHints name the settings of lbserver, which a Source serves, in
// the ERROR lines about errors that retrying cannot fix.
var adviceHints = consulwatch.Hints{Token: "-consul-token-file or CONSUL_HTTP_TOKEN", Datacenter: "-consul-dc"}

// EmptyCatalogAdvice is the ERROR line for a catalog that lists no
// service at all.
const EmptyCatalogAdvice = "Consul's catalog lists no service, not even \"consul\": ACLs hide everything from this replica's token (or it has none); give the token service:read and node:read (for example service_prefix \"\" { policy = \"read\" } and node_prefix \"\" { policy = \"read\" }) with -consul-token-file or CONSUL_HTTP_TOKEN"

// notReadyPoll paces the reads of the catalog while it lists no service.
const notReadyPoll = time.Second

// explainWait bounds how long a change of the catalog's index waits for
// the health-state poll to reach the same index before every watched
// service is fetched again.
const explainWait = 250 * time.Millisecond

// explainedSweep bounds how long a catalog change can go unseen when a
// change of checks at the same index seemed to explain it: two changes
// between two reads of the catalog show as one, so a registration with
// checks can hide an earlier change without any (a port, an address, meta
// of another service). Such a catalog change owes a fetch of every watched
// service, made at most once per explainedSweep. A variable for tests.
var explainedSweep = 10 * time.Second

// keptChanges is how many indexes of health-state changes are remembered
// to explain catalog changes.
const keptChanges = 64

// healthState is what the health-state poll saw last.
type healthState struct {
	index    uint64
	services map[string]uint64   // lowercase service → digest of its checks
	nodes    map[string]uint64   // node → digest of its node checks
	onNode   map[string][]string // node → lowercase services with a check on it
	changes  []uint64            // latest indexes at which a digest changed, at most keptChanges
	advanced chan struct{}       // closed when index moves; never nil once started
}

// startHub starts the hub's goroutines under ctx and returns the group to
// wait for.
func (s *Source) startHub(ctx context.Context) *sync.WaitGroup {
	mon := consulwatch.NewMonitor(s.probe, s.clock, s.logger, adviceHints)
	opts := func(name string) consulwatch.Options {
		return consulwatch.Options{
			Name: name, WaitTime: s.cfg.WaitTime, MinInterval: s.cfg.MinInterval,
			BackoffBase: s.cfg.BackoffBase, BackoffMax: s.cfg.BackoffMax, Timeout: s.cfg.Timeout,
			Monitor: mon, Clock: s.clock, Rand: s.rand, Logger: s.logger,
		}
	}
	copts := opts("catalog services")
	copts.Urgent = func() bool { return !s.dir.Load().ready }
	catalog, err := consulwatch.New(copts, s.fetchServices)
	if err != nil {
		panic(err) // the options were validated by New
	}
	state, err := consulwatch.New(opts("health state"), s.fetchState)
	if err != nil {
		panic(err)
	}
	s.mu.Lock()
	s.health = healthState{advanced: make(chan struct{})}
	s.mu.Unlock()

	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	run(func() {
		catalog.Run(ctx, func(u consulwatch.Update[map[string][]string]) {
			s.onServices(ctx, mon, u)
			// An empty catalog blocks until the services table changes,
			// not when ACLs start to let this token see it: until the
			// directory is ready, read it afresh about once a second.
			if !s.dir.Load().ready && consulwatch.Sleep(ctx, s.clock, notReadyPoll) == nil {
				catalog.Kick()
			}
		}, nil)
	})
	run(func() { state.Run(ctx, s.onState, nil) })
	for range s.cfg.MaxFetches {
		run(func() { s.worker(ctx, mon) })
	}
	all := func(*watched) bool { return true }
	run(func() { s.every(ctx, s.cfg.ResyncInterval, nil, all) })
	run(func() { s.every(ctx, s.cfg.ResolveInterval, nil, func(e *watched) bool { return e.hostnames }) })
	run(func() {
		s.every(ctx, explainedSweep, func() bool {
			owed := s.owed
			s.owed = false
			return owed
		}, all)
	})
	return &wg
}

// probe asks Consul for its leader: cheap, and needs no ACL.
func (s *Source) probe(ctx context.Context) error {
	leader, err := s.cfg.Client.LeaderWithQueryOptions((&api.QueryOptions{Datacenter: s.cfg.Datacenter}).WithContext(ctx))
	if err == nil && leader == "" {
		err = fmt.Errorf("no cluster leader")
	}
	return err
}

func (s *Source) queryOptions(ctx context.Context, index uint64, wait time.Duration) *api.QueryOptions {
	q := &api.QueryOptions{
		Datacenter: s.cfg.Datacenter,
		AllowStale: s.cfg.AllowStale,
		WaitIndex:  index,
		WaitTime:   wait,
	}
	return q.WithContext(ctx)
}

// fetchServices is the catalog's long poll.
func (s *Source) fetchServices(ctx context.Context, index uint64, wait time.Duration) (map[string][]string, consulwatch.Meta, error) {
	m, qm, err := s.cfg.Client.Services(s.queryOptions(ctx, index, wait))
	if err != nil {
		return nil, consulwatch.Meta{}, fmt.Errorf("consul: catalog services: %w", err)
	}
	meta, err := consulwatch.MetaOf(qm)
	return m, meta, err
}

// fetchState is the health-state long poll.
func (s *Source) fetchState(ctx context.Context, index uint64, wait time.Duration) (api.HealthChecks, consulwatch.Meta, error) {
	checks, qm, err := s.cfg.Client.State(api.HealthAny, s.queryOptions(ctx, index, wait))
	if err != nil {
		return nil, consulwatch.Meta{}, fmt.Errorf("consul: health state: %w", err)
	}
	meta, err := consulwatch.MetaOf(qm)
	return checks, meta, err
}

// onServices takes a new read of the catalog's service list: it stores the
// directory, publishes empty snapshots for watched services that are gone,
// fetches those that appeared, and fetches every watched service when the
// change is not explained by a change of health checks at the same index
// (a registration without checks, a changed port, address or meta).
func (s *Source) onServices(ctx context.Context, mon *consulwatch.Monitor, u consulwatch.Update[map[string][]string]) {
	names := make(map[string]struct{}, len(u.Value))
	for n := range u.Value {
		names[strings.ToLower(n)] = struct{}{}
	}
	old := s.dir.Load()
	// Every Consul server registers the service "consul", so a catalog
	// without any service means that ACLs hide everything from this token
	// (without a token Consul does not even set the filtered header): it
	// tells nothing and does not make the directory ready.
	ready := old.ready || len(names) > 0
	if len(names) == 0 {
		mon.Error("empty catalog", EmptyCatalogAdvice, "query", "catalog services", "filtered_by_acls", u.Filtered)
	}
	d := &directory{names: names, index: u.Index, ready: ready, changed: make(chan struct{})}
	s.dir.Store(d)
	close(old.changed)
	if !ready {
		return
	}

	s.mu.Lock()
	if u.Fresh || !old.ready {
		s.enqueueAllLocked(d)
		s.mu.Unlock()
		return
	}
	for _, e := range s.entries {
		_, was := old.names[e.base]
		_, is := names[e.base]
		if was != is {
			s.refreshLocked(e, d)
		}
	}
	s.mu.Unlock()

	explained := s.explained(ctx, u.Index)
	s.mu.Lock()
	if explained {
		s.owed = true
	} else {
		s.enqueueAllLocked(d)
	}
	s.mu.Unlock()
}

// explained waits (up to explainWait) for the health-state poll to reach
// index and reports whether a service's checks changed at exactly that
// index: then the registration or deregistration that moved the catalog
// also moved those checks, and the services they belong to are fetched
// already.
func (s *Source) explained(ctx context.Context, index uint64) bool {
	timer, stop := s.clock.NewTimer(explainWait)
	defer stop()
	for {
		s.mu.Lock()
		h := s.health
		s.mu.Unlock()
		if h.index >= index {
			for _, i := range h.changes {
				if i == index {
					return true
				}
			}
			return false
		}
		select {
		case <-h.advanced:
		case <-timer:
			return false
		case <-ctx.Done():
			return true // stopping: nothing to fetch
		}
	}
}

// onState takes a new read of every health check: the services whose
// checks changed, and those on nodes whose node checks changed, are
// fetched.
func (s *Source) onState(u consulwatch.Update[api.HealthChecks]) {
	services, nodes, onNode := Digest(u.Value)
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.health
	changed := false
	mark := func(base string) {
		for e := range s.byBase[base] {
			s.enqueueLocked(e)
		}
	}
	if u.Fresh || old.services == nil {
		if d := s.dir.Load(); d.ready {
			s.enqueueAllLocked(d)
		}
		changed = true
	} else {
		// An answer fetched after the state poll's previous read may show
		// a change that this read no longer shows (it went and came back
		// in between): fetch those again.
		for _, e := range s.entries {
			if e.index > old.index {
				s.enqueueLocked(e)
			}
		}
		for svc, dg := range services {
			if old.services[svc] != dg {
				mark(svc)
				changed = true
			}
		}
		for svc := range old.services {
			if _, ok := services[svc]; !ok {
				mark(svc)
				changed = true
			}
		}
		nodeChanged := func(node string) {
			changed = true
			for _, svc := range onNode[node] {
				mark(svc)
			}
			for _, svc := range old.onNode[node] {
				mark(svc)
			}
			for _, e := range s.entries {
				if _, ok := e.nodes[node]; ok {
					s.enqueueLocked(e)
				}
			}
		}
		for n, dg := range nodes {
			if old.nodes[n] != dg {
				nodeChanged(n)
			}
		}
		for n := range old.nodes {
			if _, ok := nodes[n]; !ok {
				nodeChanged(n)
			}
		}
	}
	h := healthState{index: u.Index, services: services, nodes: nodes, onNode: onNode, changes: old.changes, advanced: make(chan struct{})}
	if changed {
		h.changes = append(h.changes, u.Index)
		if len(h.changes) > keptChanges {
			h.changes = h.changes[len(h.changes)-keptChanges:]
		}
	}
	s.health = h
	close(old.advanced)
}

// Digest sums up health checks: per lowercase service name, a digest of
// its checks' (node, service ID, check ID, status); per node, the same of
// its node checks (which concern every service on the node); and the
// services with a check on each node. Digests do not depend on the order
// of checks. Safe for concurrent use.
func Digest(checks api.HealthChecks) (services, nodes map[string]uint64, onNode map[string][]string) {
	services = make(map[string]uint64)
	nodes = make(map[string]uint64)
	onNode = make(map[string][]string)
	seen := make(map[[2]string]bool)
	for _, c := range checks {
		if c == nil {
			continue
		}
		h := fnv.New64a()
		for _, f := range []string{c.Node, c.ServiceID, c.CheckID, c.Status} {
			fmt.Fprintf(h, "%d:%s", len(f), f)
		}
		sum := h.Sum64()
		if c.ServiceName == "" && c.ServiceID == "" {
			nodes[c.Node] += sum
			continue
		}
		svc := strings.ToLower(c.ServiceName)
		services[svc] += sum
		if k := [2]string{c.Node, svc}; !seen[k] {
			seen[k] = true
			onNode[c.Node] = append(onNode[c.Node], svc)
		}
	}
	return services, nodes, onNode
}

// worker fetches queued entries until ctx is done.
func (s *Source) worker(ctx context.Context, mon *consulwatch.Monitor) {
	for {
		e := s.pop(ctx)
		if e == nil {
			return
		}
		s.fetchEntry(ctx, mon, e)
	}
}

// pop takes the next queued entry, waiting for one; nil once ctx is done.
func (s *Source) pop(ctx context.Context) *watched {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			e.state = fetching
			s.mu.Unlock()
			return e
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
			return nil
		}
	}
}

// fetchEntry fetches e until a fetch succeeds (backing off between
// failures) or e is no longer watched, and publishes the answer.
func (s *Source) fetchEntry(ctx context.Context, mon *consulwatch.Monitor, e *watched) {
	what := "health of " + e.base
	for failures := 0; ; failures++ {
		s.mu.Lock()
		removed := e.removed
		if e.state == fetchAgain {
			e.state = fetching // this fetch covers the change
		}
		s.mu.Unlock()
		if removed || ctx.Err() != nil {
			s.doneEntry(e)
			return
		}
		started := s.clock.Now()
		fctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		q := &api.QueryOptions{Datacenter: s.cfg.Datacenter, AllowStale: s.cfg.AllowStale, Near: s.cfg.Near}
		entries, qm, err := s.cfg.Client.ServiceMultipleTags(e.base, e.tags, !s.cfg.IncludeWarning, q.WithContext(fctx))
		var meta consulwatch.Meta
		if err == nil {
			meta, err = consulwatch.MetaOf(qm)
		}
		if err == nil {
			mon.Succeeded(what, meta.FilteredByACLs)
			snap, hostnames, cerr := e.conv.snapshot(fctx, entries, max(meta.Index, 1))
			cancel()
			if cerr == nil {
				nodes := make(map[string]struct{}, len(entries))
				for _, se := range entries {
					if se != nil && se.Node != nil {
						nodes[se.Node.Node] = struct{}{}
					}
				}
				s.mu.Lock()
				e.nodes, e.hostnames, e.index = nodes, hostnames, meta.Index
				e.lastGood = started
				s.setLocked(e, snap)
				s.mu.Unlock()
				s.doneEntry(e)
				return
			}
			err = cerr
		}
		cancel()
		if ctx.Err() != nil {
			s.doneEntry(e)
			return
		}
		kind := mon.Failed(what, err)
		delay := clock.Backoff(s.cfg.BackoffBase, s.cfg.BackoffMax, failures, s.rand())
		e.conv.log.Debug("Consul query failed; keeping the last snapshot", "error", err, "failures", failures+1, "retry_in", delay.Round(time.Millisecond))
		if mon.Sleep(ctx, delay, kind == consulwatch.Transient) != nil {
			s.doneEntry(e)
			return
		}
	}
}

// doneEntry ends a fetch of e: it is queued again if it changed meanwhile.
func (s *Source) doneEntry(e *watched) {
	s.mu.Lock()
	defer s.mu.Unlock()
	again := e.state == fetchAgain
	e.state = idle
	if again {
		s.enqueueLocked(e)
	}
}

// every marks the entries that match for a fetch every d, when due (nil:
// always; called under s.mu) says so, until ctx is done.
func (s *Source) every(ctx context.Context, d time.Duration, due func() bool, match func(*watched) bool) {
	for consulwatch.Sleep(ctx, s.clock, d) == nil {
		s.mu.Lock()
		if due != nil && !due() {
			s.mu.Unlock()
			continue
		}
		for _, e := range s.entries {
			if match(e) {
				s.enqueueLocked(e)
			}
		}
		s.mu.Unlock()
	}
}
