package lbserver

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/h2bidi"
	"github.com/lookaside-lb/lookaside/internal/logthrottle"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
)

// plan is what streams of one service balance with at one moment. It is
// immutable; a change makes a new plan and closes the old one's changed.
type plan struct {
	// ready is false until the watcher has a first answer.
	ready bool
	snap  discovery.Snapshot
	// servers[i] is the grpclb entry of snap.Endpoints[i], shared by all
	// streams (proto messages are only read once built).
	servers []*lbpb.Server
	// policyName and policy are the service's policy for this snapshot,
	// policySource where its name came from (PolicyFrom*), maxEntries its
	// list bound (for drops too).
	policyName   string
	policy       policy.Policy
	policySource string
	maxEntries   int
	// prepared is policy prepared from snap.Endpoints and loadWeights, by
	// the planner as it makes the plan; nil in plans made otherwise (see
	// prepare).
	prepared policy.Prepared
	// arrived is when snap arrived from the watcher; fromSnap whether this
	// plan was made because it did (not for load weights, drop shares or
	// settings).
	arrived  time.Time
	fromSnap bool
	// rateLimit is the service's rate limit (calls/s, 0 for none);
	// overloadDrop and rateDrop the drop shares for overload and for the
	// rate limit, the larger of which is dropShare.
	rateLimit              float64
	overloadDrop, rateDrop float64
	// loadWeights, aligned with snap.Endpoints, are the weights derived
	// from load reports (policy.Input.LoadWeights); nil without them.
	loadWeights []float64
	// load is the Weigher's Result the plan's loadWeights came from (zero
	// without load weights); set by the planner.
	load loadweight.Result
	// dropShare of every list is drop entries with dropToken.
	dropShare float64
	dropToken string
	// changed is closed when a newer plan replaces this one.
	changed chan struct{}
	// lists are the lists streams were sent from this plan (see list).
	lists listCache
	// xds is the plan's xDS assignment (see xdsAssignment).
	xds xdsCache
}

// maxCachedLists bounds the distinct lists a plan keeps (see plan.list):
// a policy that gives each stream its own list (a hash subset of many
// endpoints) would otherwise keep one per stream.
const maxCachedLists = 1024

// listCache holds a plan's distinct lists by their entries (see
// listKey). The zero value is empty and ready.
type listCache struct {
	mu    sync.Mutex
	lists map[string]*encodedList // guarded by mu
}

// encodedList is one list of a plan as streams are sent it. Every field
// is read-only once made, but for msg, set once (see message).
type encodedList struct {
	// servers are the grpclb entries, ids the endpoint IDs of those that
	// are not drops, in order; resp the response that sends servers.
	servers []*lbpb.Server
	ids     []string
	resp    *lbpb.LoadBalanceResponse
	// cached is true when the list is in its plan's cache, so that other
	// streams may send the same msg.
	cached bool
	once   sync.Once
	// msg is resp encoded once, by the first shared stream that sends it,
	// for every shared stream (see shareable); nil until then, or when
	// encoding failed.
	msg *grpc.PreparedMsg
	// framed is resp encoded once as a whole gRPC message, for the shared
	// streams of the balancer's own transport; nil until the first of
	// them sends it, or when encoding failed.
	framedOnce sync.Once
	framed     framedMsg
}

// message returns what st sends for l: the encoded message when st and
// l may share it (encoding it the first time; a framedMsg for a stream of
// the balancer's own transport, a grpc.PreparedMsg for grpc's), or else
// resp, which the stream encodes for itself. Safe for concurrent use.
func (l *encodedList) message(st *streamState) any {
	if !st.shared || !l.cached {
		return l.resp
	}
	if st.framed {
		l.framedOnce.Do(func() {
			if b, err := proto.Marshal(l.resp); err == nil {
				l.framed = framedMsg(h2bidi.Frame(b))
			}
		})
		if l.framed == nil {
			return l.resp
		}
		return l.framed
	}
	l.once.Do(func() {
		var pm grpc.PreparedMsg
		if err := pm.Encode(st.stream, l.resp); err == nil {
			l.msg = &pm
		}
	})
	if l.msg == nil {
		return l.resp
	}
	return l.msg
}

// listKey appends to b a key of entries: for each, 0 for a drop, or its
// index + 1, as uvarints. ok is false when a drop entry has another token
// than the plan's (the key would not tell them apart).
func listKey(b []byte, entries []policy.Entry, dropToken string) (key []byte, ok bool) {
	for _, e := range entries {
		if e.Drop {
			if e.DropToken != dropToken {
				return b, false
			}
			b = append(b, 0)
			continue
		}
		b = binary.AppendUvarint(b, uint64(e.Index)+1)
	}
	return b, true
}

// list returns the list that entries (from p's policy, and p's drops)
// make: the one made for another stream with the same entries, or a new
// one, kept for the others while the plan holds fewer than
// maxCachedLists. Safe for concurrent use.
func (p *plan) list(entries []policy.Entry) *encodedList {
	var buf [128]byte
	key, ok := listKey(buf[:0], entries, p.dropToken)
	if ok {
		p.lists.mu.Lock()
		l := p.lists.lists[string(key)]
		p.lists.mu.Unlock()
		if l != nil {
			return l
		}
	}
	l := p.newList(entries)
	if !ok {
		return l
	}
	p.lists.mu.Lock()
	defer p.lists.mu.Unlock()
	if old := p.lists.lists[string(key)]; old != nil {
		return old
	}
	if len(p.lists.lists) < maxCachedLists {
		if p.lists.lists == nil {
			p.lists.lists = map[string]*encodedList{}
		}
		l.cached = true
		p.lists.lists[string(key)] = l
	}
	return l
}

// newList makes the list of entries.
func (p *plan) newList(entries []policy.Entry) *encodedList {
	l := &encodedList{servers: make([]*lbpb.Server, 0, len(entries)), ids: make([]string, 0, len(entries))}
	for _, e := range entries {
		if e.Drop {
			l.servers = append(l.servers, &lbpb.Server{Drop: true, LoadBalanceToken: e.DropToken})
			continue
		}
		l.servers = append(l.servers, p.servers[e.Index])
		l.ids = append(l.ids, p.snap.Endpoints[e.Index].ID)
	}
	l.resp = &lbpb.LoadBalanceResponse{
		LoadBalanceResponseType: &lbpb.LoadBalanceResponse_ServerList{ServerList: &lbpb.ServerList{Servers: l.servers}},
	}
	return l
}

func newPlan(snap discovery.Snapshot, policyName string, pol policy.Policy, key lbtoken.Key) *plan {
	p := &plan{ready: true, snap: snap, changed: make(chan struct{}),
		servers: make([]*lbpb.Server, len(snap.Endpoints)), policyName: policyName, policy: pol,
		maxEntries: policy.DefaultMaxEntries}
	for i, ep := range snap.Endpoints {
		p.servers[i] = serverEntry(ep, key)
	}
	return p
}

// prepare returns the plan's prepared policy: the planner's, or for a plan
// made without it, one prepared now. Nil for a plan without a policy. Safe
// for concurrent use.
func (p *plan) prepare() policy.Prepared {
	if p.prepared != nil || p.policy == nil {
		return p.prepared
	}
	return p.policy.Prepare(policy.PlanInput{Endpoints: p.snap.Endpoints, LoadWeights: p.loadWeights})
}

// serverEntry converts an endpoint to a grpclb entry: 4 bytes for IPv4,
// 16 for IPv6, and the endpoint's stable token, derived with key (unkeyed
// when empty) from the ID the instance knows itself by (TokenID: its
// Consul service ID, which the backend derives its expected token from),
// not from ep.ID, which tells apart two nodes registering the same ID.
func serverEntry(ep discovery.Endpoint, key lbtoken.Key) *lbpb.Server {
	ip := ep.Addr.Addr().Unmap()
	var raw []byte
	if ip.Is4() {
		b := ip.As4()
		raw = b[:]
	} else {
		b := ip.As16()
		raw = b[:]
	}
	return &lbpb.Server{IpAddress: raw, Port: int32(ep.Addr.Port()), LoadBalanceToken: key.ForID(ep.TokenID())}
}

// service is one watched service, shared by all its streams.
type service struct {
	name string
	// cur is the current plan; never nil.
	cur    atomic.Pointer[plan]
	cancel context.CancelFunc // stops the watcher and the planner

	// reconf wakes the planner to take the settings in force (a mailbox
	// of one).
	reconf chan struct{}
	// collector is the planner's, nil while the service collects no load
	// reports; the planner starts and stops it (see planner.syncLoads).
	collector atomic.Pointer[loadreport.Collector]
	// offered is the offered call rate the planner measured last, as
	// math.Float64bits.
	offered atomic.Uint64
	// streams counts the client streams on the service now.
	streams atomic.Int64

	// Guarded by registry.mu.
	refs   int
	linger *time.Timer

	assignMu sync.Mutex
	assigned map[string]int // guarded by assignMu: endpoint ID → streams whose first entry it is
	// attributed, guarded by assignMu: endpoint ID → calls clients
	// reported starting, attributed by the lists they were sent (see
	// attribute). Endpoints that left are dropped as plans are published.
	attributed map[string]float64

	watchMu sync.Mutex
	// watchers are the xDS subscriptions notified of every plan; guarded
	// by watchMu.
	watchers map[*xdsSub]struct{}

	parkMu sync.Mutex
	// parked are the streams of the service parked without a goroutine
	// (see streamState.park), woken by the next plan; guarded by parkMu.
	parked map[*streamState]struct{}
}

// park adds st to the streams the next plan wakes.
func (s *service) park(st *streamState) {
	s.parkMu.Lock()
	if s.parked == nil {
		s.parked = map[*streamState]struct{}{}
	}
	s.parked[st] = struct{}{}
	s.parkMu.Unlock()
}

// unpark removes st from them.
func (s *service) unpark(st *streamState) {
	s.parkMu.Lock()
	delete(s.parked, st)
	s.parkMu.Unlock()
}

// wakeParked wakes every parked stream of the service. Safe for
// concurrent use; does not block.
func (s *service) wakeParked() {
	s.parkMu.Lock()
	parked := s.parked
	s.parked = nil
	s.parkMu.Unlock()
	for st := range parked {
		st.wake()
	}
}

// wake asks the planner to take the settings in force. Safe for concurrent
// use; does not block.
func (s *service) wake() {
	select {
	case s.reconf <- struct{}{}:
	default:
	}
}

// assign moves one stream's first entry from endpoint ID from to to ("" for
// none). Safe for concurrent use.
func (s *service) assign(from, to string) {
	s.assignMu.Lock()
	defer s.assignMu.Unlock()
	s.assignLocked(from, to)
}

func (s *service) assignLocked(from, to string) {
	if from == to {
		return
	}
	if from != "" {
		if s.assigned[from]--; s.assigned[from] <= 0 {
			delete(s.assigned, from)
		}
	}
	if to != "" {
		s.assigned[to]++
	}
}

// choose builds a stream's list with pr, prepared from eps, from in, whose
// Assigned it fills in with how many streams other than this one (whose
// first entry is endpoint ID self, "" for none) have each endpoint first,
// and records the new list's first endpoint as the stream's. Both happen
// under one lock, so that streams arriving together each see the others'
// choices (least_connections and least_load order by them). It returns the
// list and its first endpoint's ID ("" for an empty list). Safe for
// concurrent use.
func (s *service) choose(pr policy.Prepared, eps []discovery.Endpoint, in policy.StreamInput, self string) (entries []policy.Entry, first string) {
	assigned := make([]int, len(eps))
	s.assignMu.Lock()
	defer s.assignMu.Unlock()
	for i, ep := range eps {
		assigned[i] = s.assigned[ep.ID]
		if ep.ID == self {
			assigned[i]--
		}
	}
	in.Assigned = assigned
	entries = pr.List(in)
	if len(entries) > 0 {
		first = eps[entries[0].Index].ID
	}
	s.assignLocked(self, first)
	return entries, first
}

// chooser picks a snapshot's policy; bad is a rejected meta value.
type chooser func(discovery.Snapshot) (name string, p policy.Policy, bad string)

// registry owns the watchers: one per service with streams, started on
// first use and stopped WatchLinger after the last stream leaves.
type registry struct {
	src        discovery.Source
	newPlanner func(*service, *slog.Logger) *planner
	linger     time.Duration
	max        int // services watched at most
	log        *slog.Logger
	ctx        context.Context // parent of every watcher; cancelled by close

	mu       sync.Mutex
	services map[string]*service // guarded by mu
	closed   bool                // guarded by mu
	wg       sync.WaitGroup      // counts watcher goroutines
	stop     context.CancelFunc
	started  atomic.Int64 // watches started in all
	// throttle, if set, logs what clients can trigger (names the source
	// cannot watch).
	throttle *logthrottle.Logger
}

// watched returns how many services are watched now. Safe for concurrent
// use.
func (r *registry) watched() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.services)
}

func newRegistry(src discovery.Source, linger time.Duration, max int, newPlanner func(*service, *slog.Logger) *planner, log *slog.Logger) *registry {
	ctx, stop := context.WithCancel(context.Background())
	return &registry{src: src, newPlanner: newPlanner, linger: linger, max: max, log: log, ctx: ctx, stop: stop, services: map[string]*service{}}
}

var (
	errClosed      = errors.New("lbserver: shutting down")
	errTooManySvcs = errors.New("lbserver: too many services watched")
)

// acquire returns the service for name, starting its watcher if needed, and
// counts a reference that release gives back. When max services are
// watched it stops one that only lingers to make room, or fails with
// errTooManySvcs; after close it fails with errClosed. Safe for concurrent
// use; does not block.
func (r *registry) acquire(name string) (*service, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errClosed
	}
	svc := r.services[name]
	if svc == nil {
		if len(r.services) >= r.max && !r.evictLocked() {
			return nil, errTooManySvcs
		}
		svc = r.startLocked(name)
		r.services[name] = svc
	}
	if svc.linger != nil {
		svc.linger.Stop()
		svc.linger = nil
	}
	svc.refs++
	return svc, nil
}

// evictLocked stops one service that no stream uses (it lingers), and
// reports whether there was one.
func (r *registry) evictLocked() bool {
	for _, svc := range r.services {
		if svc.refs == 0 {
			if svc.linger != nil {
				svc.linger.Stop()
			}
			r.stopLocked(svc)
			return true
		}
	}
	return false
}

// release gives back a reference taken by acquire.
func (r *registry) release(svc *service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	svc.refs--
	if svc.refs > 0 || r.closed {
		return
	}
	if r.linger == 0 {
		r.stopLocked(svc)
		return
	}
	svc.linger = time.AfterFunc(r.linger, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if svc.refs == 0 && r.services[svc.name] == svc {
			r.stopLocked(svc)
		}
	})
}

func (r *registry) stopLocked(svc *service) {
	delete(r.services, svc.name)
	svc.cancel()
	r.log.Debug("watch stopped", "service", quote(svc.name))
}

func (r *registry) startLocked(name string) *service {
	ctx, cancel := context.WithCancel(r.ctx)
	svc := &service{name: name, cancel: cancel, assigned: map[string]int{}, attributed: map[string]float64{},
		reconf: make(chan struct{}, 1)}
	svc.cur.Store(&plan{changed: make(chan struct{})})
	r.started.Add(1)
	// The name may come from a client (without a discovery.Directory).
	log := r.log.With("service", quote(name))
	pl := r.newPlanner(svc, log)
	box := make(chan arrival, 1)
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		pl.run(ctx, box)
	}()
	go func() {
		defer r.wg.Done()
		log.Debug("watch started")
		err := r.src.Watch(ctx, name, func(snap discovery.Snapshot) { offer(box, snap) })
		if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
			// The source can never watch this name: answer its streams
			// with fallback rather than leave them waiting.
			if r.throttle != nil {
				r.throttle.Warn("watch failed", "service", quote(name), "err", err)
			}
			offer(box, discovery.Snapshot{Service: name})
		}
	}()
	return svc
}

// publish makes p the current plan and wakes the streams waiting on the
// previous one. Only the planner goroutine calls it.
func (s *service) publish(p *plan) {
	old := s.cur.Swap(p)
	close(old.changed)
	s.wakeParked()
	s.notifyWatchers()
	if p.fromSnap {
		s.assignMu.Lock()
		for id := range s.attributed {
			if policy.IndexOf(p.snap.Endpoints, id) < 0 {
				delete(s.attributed, id)
			}
		}
		s.assignMu.Unlock()
	}
}

// has reports whether service name is watched now. Safe for concurrent
// use.
func (r *registry) has(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.services[name] != nil
}

// all returns the services watched now. Safe for concurrent use.
func (r *registry) all() []*service {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*service, 0, len(r.services))
	for _, svc := range r.services {
		out = append(out, svc)
	}
	return out
}

// close stops every watcher and waits for them. Safe to call twice.
func (r *registry) close() {
	r.mu.Lock()
	r.closed = true
	for _, svc := range r.services {
		if svc.linger != nil {
			svc.linger.Stop()
		}
	}
	r.services = map[string]*service{}
	r.mu.Unlock()
	r.stop()
	r.wg.Wait()
}

// attribute adds calls that a stream's client reported starting to the
// endpoints of the list it was last sent (n entries, drop entries
// included; ids the endpoint IDs of its other entries, in order), by the
// child policy its client runs: round_robin spreads calls over every
// entry in turn, so an endpoint gets calls × its entries / n; pick_first
// sends every call that is not dropped to the first endpoint, which gets
// calls × len(ids) / n. An estimate: the list may have changed within the
// report's interval. Safe for concurrent use.
func (s *service) attribute(child string, n int, ids []string, calls int64) {
	if n == 0 || len(ids) == 0 || calls <= 0 {
		return
	}
	s.assignMu.Lock()
	defer s.assignMu.Unlock()
	if child == ChildPickFirst {
		s.attributed[ids[0]] += float64(calls) * float64(len(ids)) / float64(n)
		return
	}
	per := float64(calls) / float64(n)
	for _, id := range ids {
		s.attributed[id] += per
	}
}
