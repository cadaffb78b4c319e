package consul

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/clock"
)

// Source is the discovery.Source and discovery.Directory backed by Consul.
// Create it with New. All its Watch calls share one hub: two long polls
// (the catalog's service list and the health state of every check) that
// tell which services changed, and a pool of at most Config.MaxFetches
// workers that fetch those services. The hub runs while anyone uses it: a
// Run call, or a Watch call; it starts nothing on its own, and Lookup only
// reads what the hub last stored. Whoever uses the Source as a
// discovery.Directory runs it with Run (lbserver.Serve does). Safe for
// concurrent use.
type Source struct {
	// Read-only after construction (tests set clock and rand before use).
	cfg    Config
	logger *slog.Logger
	clock  clock.Clock
	rand   func() float64 // in [0, 1), for jitter

	dir atomic.Pointer[directory] // the latest directory; never nil

	life      sync.Mutex         // serializes starting and stopping the hub
	users     int                // guarded by life: Run and Watch calls in progress
	hubCancel context.CancelFunc // guarded by life: stops the running hub; nil when stopped
	hubWG     *sync.WaitGroup    // guarded by life: the running hub's goroutines

	wake chan struct{} // a token per enqueue, up to MaxFetches: wakes workers

	mu      sync.Mutex
	entries map[string]*watched              // guarded by mu: watched canonical names
	byBase  map[string]map[*watched]struct{} // guarded by mu: entries by lowercase service
	queue   []*watched                       // guarded by mu: entries to fetch, in order
	health  healthState                      // guarded by mu: what the health-state poll saw
	owed    bool                             // guarded by mu: a sweep of every watched service is owed (see explainedSweep)

	hmu     sync.Mutex
	contact contact // guarded by hmu: what requests told of Consul (see Health)
}

var (
	_ discovery.Source    = (*Source)(nil)
	_ discovery.Directory = (*Source)(nil)
)

// directory is one read of the catalog's service list. Immutable once
// stored.
type directory struct {
	names   map[string]struct{} // lowercase service names
	index   uint64
	ready   bool
	changed chan struct{} // closed when a newer directory is stored
}

// entryState says where an entry is in the fetch queue.
type entryState int

const (
	idle       entryState = iota // nothing owed
	queued                       // in Source.queue
	fetching                     // a worker fetches it
	fetchAgain                   // a worker fetches it, and it changed since the fetch began
)

// watched is one watched canonical name, shared by the Watch calls that
// name it in any case or tag order.
type watched struct {
	// Read-only after construction.
	name string   // canonical
	base string   // lowercase service
	tags []string // Config.Tags and the name's tags

	// Guarded by Source.mu.
	subs      map[chan struct{}]struct{} // one per Watch call; signalled on a new snapshot
	snap      discovery.Snapshot         // latest; Service is the canonical name
	version   uint64                     // incremented with every new snap; 0: none yet
	state     entryState
	index     uint64              // X-Consul-Index of the latest answer
	nodes     map[string]struct{} // nodes of the instances in the latest answer
	hostnames bool                // whether the latest answer had hostname addresses
	removed   bool                // no Watch call names it any more
	since     time.Time           // when the first Watch call named it
	lastGood  time.Time           // start of the latest successful fetch, or the directory read that found it absent

	conv *converter // used only by the worker that fetches the entry
}

// New validates cfg and returns a Source. It does not contact Consul.
func New(cfg Config) (*Source, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Tags = slices.Clone(cfg.Tags)
	s := &Source{
		cfg:     cfg,
		logger:  cfg.Logger.With("component", "discovery.consul"),
		clock:   clock.Real{},
		rand:    clock.RandFloat,
		wake:    make(chan struct{}, cfg.MaxFetches),
		entries: make(map[string]*watched),
		byBase:  make(map[string]map[*watched]struct{}),
	}
	s.dir.Store(&directory{changed: make(chan struct{})})
	// Every request goes through the observed client: Health and
	// Config.Observer see them all.
	s.cfg.Client = observedClient{inner: cfg.Client, s: s}
	return s, nil
}

// Lookup implements discovery.Directory: whether Consul's catalog lists
// service (compared in lower case, as Consul does), in the last read of the
// catalog's service list. It is a pure read: it starts nothing and sends
// no query. The list is read only while the hub runs, that is while a Run
// or a Watch call holds it, so a Source used as a Directory must be run
// with Run (lbserver.Serve does it for as long as it serves).
//
// ready is false until the hub has read the catalog once; an answer
// without any service does not count (every Consul lists "consul": ACLs
// hid everything), since it tells nothing. Once ready, it stays ready,
// through Consul outages and while the hub is stopped too (the last list
// read is kept). changed is closed at the next read of the list, which
// comes only while the hub runs. Safe for concurrent use; does not block.
func (s *Source) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	d := s.dir.Load()
	if !d.ready {
		return false, false, d.changed
	}
	_, ok := d.names[strings.ToLower(service)]
	return ok, true, d.changed
}

// Run runs the hub (the long polls, the fetch pool, the timers) until ctx
// is done. The hub reads the catalog's service list only while it runs, so
// Lookup answers, and its readiness comes, only once something runs it:
// Run is how an owner that uses the Source as a discovery.Directory keeps
// it read with no Watch call (lbserver.Serve runs it while it serves).
// Without Run the hub runs only while a Watch call does. It blocks until
// ctx is done and returns ctx.Err(); when it was the hub's last user, only
// after the hub's goroutines have stopped. Safe to call concurrently with
// Watch and with other Run calls.
func (s *Source) Run(ctx context.Context) error {
	s.acquire()
	defer s.release()
	<-ctx.Done()
	return ctx.Err()
}

// Watch watches one service until ctx is done, calling publish from the
// calling goroutine with the first answer and then with every change (see
// the package documentation for the rules). It blocks, and returns ctx.Err()
// once ctx is done, or at once an error when service is not a valid name
// (see ValidateServiceName). Names that differ only in case or tag order
// share one entry and one fetch; snapshots carry the name as given.
//
// A name may carry a tag filter ("user-srv@srv,v2", see
// discovery.SplitName): only instances with those tags, and with
// Config.Tags, are published.
func (s *Source) Watch(ctx context.Context, service string, publish func(discovery.Snapshot)) error {
	base, _ := discovery.SplitName(service)
	if err := ValidateServiceName(base); err != nil {
		return err
	}
	if publish == nil {
		return errors.New("consul: Watch: nil publish func")
	}
	s.acquire()
	defer s.release()
	e, notify := s.subscribe(discovery.Canonical(service))
	defer s.unsubscribe(e, notify)

	var (
		seen      uint64             // version last looked at
		last      discovery.Snapshot // last published
		published bool
	)
	for {
		select {
		case <-notify:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
		snap, version := e.snap, e.version
		s.mu.Unlock()
		if version == seen {
			continue
		}
		seen = version
		snap.Service = service
		if published && snap.Equal(last) {
			continue
		}
		last, published = snap, true
		publish(snap)
	}
}

// subscribe registers a Watch call of name and returns its entry and the
// channel signalled when the entry has a new snapshot.
func (s *Source) subscribe(name string) (*watched, chan struct{}) {
	notify := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[name]
	if e == nil {
		base, tags := discovery.SplitName(name)
		e = &watched{
			name:  name,
			base:  base,
			tags:  append(slices.Clone(s.cfg.Tags), tags...),
			subs:  make(map[chan struct{}]struct{}),
			conv:  s.newConverter(name),
			since: s.clock.Now(),
		}
		s.entries[name] = e
		if s.byBase[base] == nil {
			s.byBase[base] = make(map[*watched]struct{})
		}
		s.byBase[base][e] = struct{}{}
		if d := s.dir.Load(); d.ready {
			s.refreshLocked(e, d)
		}
		// Otherwise the first read of the directory starts it.
	}
	e.subs[notify] = struct{}{}
	if e.version > 0 {
		notify <- struct{}{}
	}
	return e, notify
}

// unsubscribe ends a Watch call; the last one removes the entry.
func (s *Source) unsubscribe(e *watched, notify chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(e.subs, notify)
	if len(e.subs) > 0 {
		return
	}
	e.removed = true
	delete(s.entries, e.name)
	delete(s.byBase[e.base], e)
	if len(s.byBase[e.base]) == 0 {
		delete(s.byBase, e.base)
	}
	if e.state == queued {
		s.queue = slices.DeleteFunc(s.queue, func(q *watched) bool { return q == e })
		e.state = idle
	}
}

// refreshLocked brings e up to date with the directory d: a service the
// catalog lists is fetched; one it does not is positively absent and
// publishes an empty snapshot without any query. s.mu must be held.
func (s *Source) refreshLocked(e *watched, d *directory) {
	if _, ok := d.names[e.base]; ok {
		s.enqueueLocked(e)
		return
	}
	e.lastGood = s.clock.Now()
	s.setLocked(e, discovery.Snapshot{Service: e.name, Index: d.index})
}

// setLocked stores a new snapshot of e and wakes its Watch calls, unless
// it equals the current one. s.mu must be held.
func (s *Source) setLocked(e *watched, snap discovery.Snapshot) {
	if e.removed || (e.version > 0 && snap.Equal(e.snap)) {
		return
	}
	e.snap = snap
	e.version++
	for c := range e.subs {
		select {
		case c <- struct{}{}:
		default: // already signalled
		}
	}
}

// enqueueLocked marks e for a fetch. s.mu must be held.
func (s *Source) enqueueLocked(e *watched) {
	if e.removed {
		return
	}
	switch e.state {
	case idle:
		e.state = queued
		s.queue = append(s.queue, e)
		select {
		case s.wake <- struct{}{}:
		default: // enough workers are awake already
		}
	case fetching:
		e.state = fetchAgain
	}
}

// enqueueAllLocked marks every watched entry for a refresh against the
// directory. s.mu must be held.
func (s *Source) enqueueAllLocked(d *directory) {
	for _, e := range s.entries {
		s.refreshLocked(e, d)
	}
}

// acquire starts the hub if nobody uses it yet.
func (s *Source) acquire() {
	s.life.Lock()
	defer s.life.Unlock()
	s.users++
	if s.users == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		s.hubCancel, s.hubWG = cancel, s.startHub(ctx)
	}
}

// release stops the hub, and waits for it, when its last user leaves.
func (s *Source) release() {
	s.life.Lock()
	defer s.life.Unlock()
	s.users--
	if s.users == 0 {
		s.hubCancel()
		s.hubWG.Wait()
		s.hubCancel, s.hubWG = nil, nil
	}
}

// newConverter returns the converter of the watched name.
func (s *Source) newConverter(name string) *converter {
	return &converter{
		service:        name,
		includeWarning: s.cfg.IncludeWarning,
		resolver:       s.cfg.Resolver,
		timeout:        s.cfg.ResolveTimeout,
		log:            s.logger.With("service", name),
	}
}
