// Package clientstats aggregates the ClientStats that grpclb clients send
// on their balancer streams: per service, and per live client stream.
//
// grpclb clients report deltas since their last report: calls started,
// finished, failed to send, known received by a backend, and calls dropped by
// the balancer's drop entries, per drop token. Totals per service live as
// long as the Registry; per-client totals are forgotten when the stream ends,
// so memory stays bounded by the number of live streams.
package clientstats

import (
	"maps"
	"slices"
	"sync"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
)

// Counters are cumulative call counts.
type Counters struct {
	Reports       int64 // ClientStats messages received
	Started       int64
	Finished      int64
	FailedToSend  int64
	KnownReceived int64
	// Dropped counts calls dropped by drop entries, per drop token.
	Dropped map[string]int64
}

func (c *Counters) add(s *lbpb.ClientStats) {
	c.Reports++
	c.Started += s.GetNumCallsStarted()
	c.Finished += s.GetNumCallsFinished()
	c.FailedToSend += s.GetNumCallsFinishedWithClientFailedToSend()
	c.KnownReceived += s.GetNumCallsFinishedKnownReceived()
	for _, d := range s.GetCallsFinishedWithDrop() {
		if c.Dropped == nil {
			c.Dropped = make(map[string]int64)
		}
		c.Dropped[d.GetLoadBalanceToken()] += d.GetNumCalls()
	}
}

func (c Counters) clone() Counters {
	c.Dropped = maps.Clone(c.Dropped)
	return c
}

// ClientKey identifies one client stream.
type ClientKey struct {
	Service string
	// Stream is unique per balancer stream for the process's lifetime.
	Stream uint64
	// Peer is the client's address as the balancer sees it.
	Peer string
}

// Registry holds the counters. The zero value is not usable; call New.
// Safe for concurrent use; no method blocks on I/O.
type Registry struct {
	mu       sync.Mutex
	services map[string]*Counters    // guarded by mu
	clients  map[ClientKey]*Counters // guarded by mu
}

// New returns an empty Registry.
func New() *Registry {
	return &Registry{services: map[string]*Counters{}, clients: map[ClientKey]*Counters{}}
}

// Add records one ClientStats message from client k. Negative counts (which
// no honest client sends) are recorded as they come; callers validate.
func (r *Registry) Add(k ClientKey, s *lbpb.ClientStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sc := r.services[k.Service]
	if sc == nil {
		sc = &Counters{}
		r.services[k.Service] = sc
	}
	sc.add(s)
	cc := r.clients[k]
	if cc == nil {
		cc = &Counters{}
		r.clients[k] = cc
	}
	cc.add(s)
}

// Forget drops the per-client counters of k; the service totals stay.
func (r *Registry) Forget(k ClientKey) {
	r.mu.Lock()
	delete(r.clients, k)
	r.mu.Unlock()
}

// Service returns a copy of the totals for one service.
func (r *Registry) Service(name string) Counters {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.services[name]; c != nil {
		return c.clone()
	}
	return Counters{}
}

// Services returns the names of services that have reported, sorted.
func (r *Registry) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.services))
}

// Client returns a copy of one live client's totals and whether it is known.
func (r *Registry) Client(k ClientKey) (Counters, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.clients[k]; c != nil {
		return c.clone(), true
	}
	return Counters{}, false
}

// Validate reports whether s is a plausible report: no negative counts and
// no more calls finished in one way than finished in all.
func Validate(s *lbpb.ClientStats) bool {
	if s.GetNumCallsStarted() < 0 || s.GetNumCallsFinished() < 0 ||
		s.GetNumCallsFinishedWithClientFailedToSend() < 0 || s.GetNumCallsFinishedKnownReceived() < 0 {
		return false
	}
	for _, d := range s.GetCallsFinishedWithDrop() {
		if d.GetNumCalls() < 0 {
			return false
		}
	}
	return true
}
