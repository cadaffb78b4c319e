package consul

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/lookaside-lb/lookaside/internal/consulwatch"
)

// Observer is told of every request a Source sends to Consul, for
// metrics. ConsulRequest is called from the goroutine that made the
// request, as it returns: implementations must be safe for concurrent use
// and must not block. Set it in Config.Observer; nil observes nothing.
//
// Every value passed comes from a fixed set: kind is one of RequestKinds,
// outcome OutcomeOK, OutcomeCanceled or one of ErrorKinds.
type Observer interface {
	// ConsulRequest reports one request: its kind, its outcome and how
	// long it took (a blocking query waits up to Config.WaitTime).
	ConsulRequest(kind, outcome string, took time.Duration)
}

// Request kinds passed to Observer.ConsulRequest.
const (
	// RequestCatalog is the long poll of the catalog's service list
	// (/v1/catalog/services).
	RequestCatalog = "catalog_services"
	// RequestHealthState is the long poll of every health check
	// (/v1/health/state/any).
	RequestHealthState = "health_state"
	// RequestService is a fetch of one service's instances
	// (/v1/health/service/<name>).
	RequestService = "health_service"
	// RequestLeader is the probe sent while queries back off
	// (/v1/status/leader).
	RequestLeader = "leader_probe"
)

// RequestKinds are every kind Observer.ConsulRequest may be passed.
var RequestKinds = []string{RequestCatalog, RequestHealthState, RequestService, RequestLeader}

// Outcomes passed to Observer.ConsulRequest besides ErrorKinds.
const (
	// OutcomeOK: Consul answered.
	OutcomeOK = "ok"
	// OutcomeCanceled: the Source gave the request up (a blocking query
	// restarted afresh, or the Source stopping); not an error.
	OutcomeCanceled = "canceled"
)

// Error kinds: the outcome of a failed request.
const (
	// ErrorTimeout: no answer within the request's deadline (see
	// Config.Timeout and Config.WaitTime).
	ErrorTimeout = "timeout"
	// ErrorUnreachable: no connection to Consul (refused, reset, DNS).
	ErrorUnreachable = "unreachable"
	// ErrorTLS: the TLS handshake failed (an unknown authority, a wrong
	// name, a certificate refused): a person must fix the certificates.
	ErrorTLS = "tls"
	// ErrorForbidden: HTTP 403, the ACLs deny the token.
	ErrorForbidden = "forbidden"
	// ErrorNoDatacenter: Consul does not know the datacenter.
	ErrorNoDatacenter = "no_datacenter"
	// ErrorStatus4xx and ErrorStatus5xx: other HTTP error statuses.
	ErrorStatus4xx = "status_4xx"
	ErrorStatus5xx = "status_5xx"
	// ErrorNoLeader: the leader probe answered, but the cluster has no
	// leader.
	ErrorNoLeader = "no_leader"
	// ErrorOther: anything else (an answer that does not parse, ...).
	ErrorOther = "other"
)

// ErrorKinds are every error kind Observer.ConsulRequest may be passed.
var ErrorKinds = []string{ErrorTimeout, ErrorUnreachable, ErrorTLS, ErrorForbidden, ErrorNoDatacenter,
	ErrorStatus4xx, ErrorStatus5xx, ErrorNoLeader, ErrorOther}

// Outcome classifies the result of a request made with ctx: OutcomeOK for
// a nil err, OutcomeCanceled when ctx was cancelled, else one of
// ErrorKinds. Safe for concurrent use.
func Outcome(ctx context.Context, err error) string {
	if err == nil {
		return OutcomeOK
	}
	if errors.Is(err, errNoLeader) {
		return ErrorNoLeader
	}
	if ctx != nil {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return ErrorTimeout
		case ctx.Err() != nil:
			return OutcomeCanceled
		}
	}
	var se api.StatusError
	if errors.As(err, &se) {
		switch {
		case consulwatch.Classify(err) == consulwatch.NoDatacenter:
			return ErrorNoDatacenter
		case se.Code == 400 && strings.Contains(se.Body, "HTTPS server"):
			return ErrorTLS // plain HTTP to Consul's HTTPS port
		case se.Code == 403:
			return ErrorForbidden
		case se.Code >= 500:
			return ErrorStatus5xx
		case se.Code >= 400:
			return ErrorStatus4xx
		}
		return ErrorOther
	}
	switch consulwatch.Classify(err) {
	case consulwatch.ACLDenied:
		return ErrorForbidden
	case consulwatch.NoDatacenter:
		return ErrorNoDatacenter
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return ErrorTimeout
	}
	if isTLSError(err) {
		return ErrorTLS
	}
	var oe *net.OpError
	var de *net.DNSError
	var ue *url.Error
	if errors.As(err, &oe) || errors.As(err, &de) || errors.As(err, &ue) {
		return ErrorUnreachable
	}
	return ErrorOther
}

// Health is what a Source knows of Consul: whether it answers, and how
// fresh the data of each watched service is. For status pages and
// metrics; see (*Source).Health.
type Health struct {
	// Ready is set once the catalog's service list was read (see Lookup).
	Ready bool
	// Reachable reports whether the latest request that completed (not
	// given up) was answered; false before any.
	Reachable bool
	// LastContact is when Consul last answered a request; zero if never.
	LastContact time.Time
	// DownSince is when the current run of failed requests began; zero
	// while Reachable.
	DownSince time.Time
	// LastError is the error of the latest failed request, LastErrorKind
	// its kind (one of ErrorKinds) and LastErrorAt when it failed; empty
	// if none failed yet. They stay after Consul answers again. The text
	// never holds the ACL token.
	LastError     string
	LastErrorKind string
	LastErrorAt   time.Time
	// Services are the names watched now, sorted by name.
	Services []ServiceHealth
}

// ServiceHealth is the freshness of one watched name.
type ServiceHealth struct {
	// Name is the canonical watched name, with its tag filter
	// ("user-srv@v2"); Service is the Consul service alone ("user-srv").
	Name, Service string
	// WatchedSince is when the first Watch call named it.
	WatchedSince time.Time
	// LastGood is the latest time at which the published snapshot is
	// known to have matched Consul: the start of its last successful
	// fetch, or later when both long polls have answered since without
	// a change that concerns it (a long poll in flight after an answer
	// confirms it up to now: it would return on a change). Zero if no
	// answer came yet.
	LastGood time.Time
	// Endpoints is the number of endpoints in the published snapshot.
	Endpoints int
}

// pollState tracks one long poll for Health. Guarded by Source.hmu.
type pollState struct {
	inFlight bool      // a request is running
	okBefore bool      // the previous request was answered
	lastOK   time.Time // when the latest answered request returned
}

// contact is what requests told of Consul. Guarded by Source.hmu.
type contact struct {
	reachable   bool
	lastContact time.Time
	downSince   time.Time
	lastErr     string
	lastErrKind string
	lastErrAt   time.Time
	polls       [2]pollState // RequestCatalog, RequestHealthState
}

func pollIndex(kind string) int {
	switch kind {
	case RequestCatalog:
		return 0
	case RequestHealthState:
		return 1
	}
	return -1
}

// observedClient counts every request of a Source: in its Health, and
// with Config.Observer.
type observedClient struct {
	inner Client
	s     *Source
}

var _ Client = observedClient{}

// begin records that a request of kind starts, and returns when.
func (c observedClient) begin(kind string) time.Time {
	now := c.s.clock.Now()
	if i := pollIndex(kind); i >= 0 {
		c.s.hmu.Lock()
		c.s.contact.polls[i].inFlight = true
		c.s.hmu.Unlock()
	}
	return now
}

// end records the outcome of a request of kind made with ctx since start.
func (c observedClient) end(kind string, ctx context.Context, start time.Time, err error) {
	now := c.s.clock.Now()
	outcome := Outcome(ctx, err)
	s := c.s
	s.hmu.Lock()
	ct := &s.contact
	if i := pollIndex(kind); i >= 0 {
		p := &ct.polls[i]
		p.inFlight = false
		if outcome != OutcomeCanceled {
			p.okBefore = outcome == OutcomeOK
		}
		if outcome == OutcomeOK {
			p.lastOK = now
		}
	}
	switch outcome {
	case OutcomeOK:
		ct.reachable, ct.lastContact, ct.downSince = true, now, time.Time{}
	case OutcomeCanceled:
	default:
		if ct.reachable || ct.downSince.IsZero() {
			ct.downSince = now
		}
		ct.reachable = false
		ct.lastErr, ct.lastErrKind, ct.lastErrAt = err.Error(), outcome, now
	}
	s.hmu.Unlock()
	if s.cfg.Observer != nil {
		s.cfg.Observer.ConsulRequest(kind, outcome, now.Sub(start))
	}
}

func (c observedClient) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	start := c.begin(RequestCatalog)
	m, qm, err := c.inner.Services(q)
	c.end(RequestCatalog, q.Context(), start, err)
	return m, qm, err
}

func (c observedClient) State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	start := c.begin(RequestHealthState)
	checks, qm, err := c.inner.State(state, q)
	c.end(RequestHealthState, q.Context(), start, err)
	return checks, qm, err
}

func (c observedClient) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	start := c.begin(RequestService)
	entries, qm, err := c.inner.ServiceMultipleTags(service, tags, passingOnly, q)
	c.end(RequestService, q.Context(), start, err)
	return entries, qm, err
}

func (c observedClient) LeaderWithQueryOptions(q *api.QueryOptions) (string, error) {
	start := c.begin(RequestLeader)
	leader, err := c.inner.LeaderWithQueryOptions(q)
	if err == nil && leader == "" {
		c.end(RequestLeader, q.Context(), start, errNoLeader)
	} else {
		c.end(RequestLeader, q.Context(), start, err)
	}
	return leader, err
}

// errNoLeader stands for an empty answer of the leader probe.
var errNoLeader = errors.New("consul: no cluster leader")

// Health returns what the Source knows of Consul and of the freshness of
// each watched name. Cheap enough to call every second; safe for
// concurrent use; does not block.
func (s *Source) Health() Health {
	now := s.clock.Now()
	s.hmu.Lock()
	ct := s.contact
	s.hmu.Unlock()
	h := Health{
		Ready:         s.dir.Load().ready,
		Reachable:     ct.reachable,
		LastContact:   ct.lastContact,
		DownSince:     ct.downSince,
		LastError:     ct.lastErr,
		LastErrorKind: ct.lastErrKind,
		LastErrorAt:   ct.lastErrAt,
	}
	// Both long polls must vouch for a service that nothing is owed.
	polls := now
	for _, p := range ct.polls {
		t := p.lastOK
		if p.inFlight && p.okBefore {
			t = now
		}
		polls = minTime(polls, t)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.entries {
		sh := ServiceHealth{Name: e.name, Service: e.base, WatchedSince: e.since, LastGood: e.lastGood, Endpoints: len(e.snap.Endpoints)}
		if e.state == idle && !e.lastGood.IsZero() && polls.After(e.lastGood) {
			sh.LastGood = polls
		}
		h.Services = append(h.Services, sh)
	}
	slices.SortFunc(h.Services, func(a, b ServiceHealth) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return h
}

// Staleness returns, for each Consul service watched (by its name without
// tag filter, lowercase), how long ago its data was last known to match
// Consul (see ServiceHealth.LastGood), or how long it has been watched
// without any answer; the worst of its watched names. For metrics.
// Safe for concurrent use; does not block.
func (s *Source) Staleness() map[string]time.Duration {
	h := s.Health()
	now := s.clock.Now()
	out := make(map[string]time.Duration, len(h.Services))
	for _, sh := range h.Services {
		t := sh.LastGood
		if t.IsZero() {
			t = sh.WatchedSince
		}
		out[sh.Service] = max(out[sh.Service], max(now.Sub(t), 0))
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// isTLSError reports whether err comes from a failed TLS handshake.
func isTLSError(err error) bool {
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		alert     tls.AlertError
		header    tls.RecordHeaderError
	)
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &header)
}
