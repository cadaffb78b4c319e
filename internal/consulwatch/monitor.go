package consulwatch

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// Defaults of a Monitor.
const (
	// ProbeAfter is the backoff above which a watch probes Consul instead
	// of only sleeping.
	ProbeAfter = time.Second
	// ProbeEvery paces the probes of all the watches of a Monitor.
	ProbeEvery = time.Second
	// ProbeTimeout bounds one probe.
	ProbeTimeout = time.Second
	// ErrorEvery is the least time between two ERROR lines of one kind.
	ErrorEvery = time.Minute
	// WarnEvery is the least time between two WARN lines about transient
	// failures; the others go to DEBUG.
	WarnEvery = 10 * time.Second
)

// Kind classifies a failed fetch.
type Kind int

const (
	// Transient errors (connection refused, timeouts, 5xx, 429) heal by
	// themselves: retry with backoff and probe.
	Transient Kind = iota
	// ACLDenied is an HTTP 403: the token lacks a permission or is not
	// known. Retrying will not help until someone changes the ACLs.
	ACLDenied
	// NoDatacenter is an unknown datacenter ("No path to datacenter", or a
	// 404 naming the datacenter).
	NoDatacenter
)

// Classify tells whether err can heal by itself. Safe for concurrent use.
func Classify(err error) Kind {
	if err == nil {
		return Transient
	}
	var se api.StatusError
	if errors.As(err, &se) {
		switch {
		case se.Code == 403:
			return ACLDenied
		case strings.Contains(strings.ToLower(se.Body), "no path to datacenter"),
			se.Code == 404 && strings.Contains(strings.ToLower(se.Body), "datacenter"):
			return NoDatacenter
		}
		return Transient
	}
	// Older clients and wrapped errors only carry the text.
	msg := strings.ToLower(err.Error())
	switch {
	case strings.Contains(msg, "response code: 403"), strings.Contains(msg, "permission denied"), strings.Contains(msg, "acl not found"):
		return ACLDenied
	case strings.Contains(msg, "no path to datacenter"):
		return NoDatacenter
	}
	return Transient
}

// Hints name, in the terms of the program that uses the Monitor, the
// settings a person changes to fix an error that retrying cannot fix: the
// advice of the ERROR lines quotes them. An empty field leaves that part
// of the advice generic.
type Hints struct {
	// Token says how to set the ACL token, for example
	// "-consul-token-file or CONSUL_HTTP_TOKEN".
	Token string
	// Datacenter says how to choose the datacenter, for example
	// "-consul-dc".
	Datacenter string
}

// Advice says what to do about a kind of error, for the ERROR line,
// naming the settings of h.
func (k Kind) Advice(h Hints) string {
	switch k {
	case ACLDenied:
		msg := "Consul's ACLs deny the query: give the token service:read and node:read on the balanced services (for example service_prefix \"\" { policy = \"read\" } and node_prefix \"\" { policy = \"read\" }), or set the right token"
		if h.Token != "" {
			msg += " (" + h.Token + ")"
		}
		return msg
	case NoDatacenter:
		msg := "Consul does not know the datacenter: check the datacenter"
		if h.Datacenter != "" {
			msg += " (" + h.Datacenter + ")"
		}
		return msg + " against `consul catalog datacenters`"
	}
	return ""
}

func (k Kind) String() string {
	switch k {
	case ACLDenied:
		return "acl_denied"
	case NoDatacenter:
		return "no_datacenter"
	}
	return "transient"
}

// FilteredAdvice is the ERROR line for answers that ACLs filtered.
const FilteredAdvice = "Consul filtered the answer by ACLs (X-Consul-Results-Filtered-By-ACLs): some instances or services are hidden from this token, so their clients get fallback; give the token service:read and node:read on them"

// Monitor is shared by the watches of one Consul client: it tracks
// outages, probes Consul while watches back off, and rate-limits the logs
// of errors that need a person. The zero value is not usable; call
// NewMonitor. Safe for concurrent use.
type Monitor struct {
	// Read-only after construction.
	probe  func(context.Context) error
	clock  clock.Clock
	logger *slog.Logger
	hints  Hints

	mu        sync.Mutex
	down      bool                 // guarded by mu: a fetch failed and none succeeded since
	downSince time.Time            // guarded by mu: the first failure of the outage
	lastProbe time.Time            // guarded by mu: start of the latest probe
	probeOK   bool                 // guarded by mu: result of the latest probe
	probing   chan struct{}        // guarded by mu: closed when the probe in flight ends; nil if none
	logged    map[string]time.Time // guarded by mu: last ERROR line per kind
}

// NewMonitor returns a Monitor. probe checks cheaply that Consul answers
// (it must honour ctx); nil disables probing, and watches then only sleep
// out their backoff. clk nil means clock.Real; logger nil means
// slog.Default(). hints name the caller's settings in the advice of the
// ERROR lines (see Kind.Advice).
func NewMonitor(probe func(context.Context) error, clk clock.Clock, logger *slog.Logger, hints Hints) *Monitor {
	if clk == nil {
		clk = clock.Real{}
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Monitor{probe: probe, clock: clk, logger: logger, hints: hints, logged: map[string]time.Time{}}
}

// LeaderProbe returns a probe that asks Consul for its leader
// (/v1/status/leader: no ACL needed, answered by the agent from memory). An
// empty leader counts as a failure.
func LeaderProbe(status *api.Status) func(context.Context) error {
	return func(ctx context.Context) error {
		leader, err := status.LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		if leader == "" {
			return errors.New("no cluster leader")
		}
		return nil
	}
}

// Failed records a failed fetch of what and returns its kind. Errors that
// need a person are logged at ERROR at most once per ErrorEvery per kind;
// transient ones at WARN at most once per WarnEvery (the others at DEBUG),
// so an outage of any length logs a bounded number of lines.
func (m *Monitor) Failed(what string, err error) Kind {
	k := Classify(err)
	now := m.clock.Now()
	m.mu.Lock()
	if !m.down {
		m.down, m.downSince = true, now
	}
	since := m.downSince
	m.mu.Unlock()
	if k != Transient {
		m.errorf(k.String(), k.Advice(m.hints), "query", what, "error", err)
		return k
	}
	if m.throttle("transient", now, WarnEvery) {
		m.logger.Warn("Consul query failed; keeping the last data and retrying", "query", what, "error", err, "down_for", now.Sub(since).Round(time.Millisecond))
	} else {
		m.logger.Debug("Consul query failed", "query", what, "error", err)
	}
	return k
}

// throttle reports whether a line of kind may be logged now, at most once
// per every, and records it if so.
func (m *Monitor) throttle(kind string, now time.Time, every time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if last, ok := m.logged[kind]; ok && now.Sub(last) < every {
		return false
	}
	m.logged[kind] = now
	return true
}

// Succeeded records a successful fetch of what. The first success after
// a failure logs "Consul reachable again" with the outage's length;
// filtered reports an answer that ACLs filtered (logged at ERROR at most
// once per ErrorEvery).
func (m *Monitor) Succeeded(what string, filtered bool) {
	m.mu.Lock()
	wasDown, since := m.down, m.downSince
	m.down = false
	now := m.clock.Now()
	m.mu.Unlock()
	if wasDown {
		m.logger.Info("Consul reachable again", "after", now.Sub(since).Round(time.Millisecond), "query", what)
	}
	if filtered {
		m.errorf("filtered", FilteredAdvice, "query", what)
	}
}

// Down reports whether the latest fetch failed, and since when.
func (m *Monitor) Down() (bool, time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.down, m.downSince
}

// Error logs msg at ERROR at most once per ErrorEvery per kind (a fixed
// string chosen by the caller). Safe for concurrent use.
func (m *Monitor) Error(kind, msg string, args ...any) {
	m.errorf("caller:"+kind, msg, args...)
}

// errorf logs msg at ERROR unless a line of kind was logged less than
// ErrorEvery ago.
func (m *Monitor) errorf(kind, msg string, args ...any) {
	if m.throttle(kind, m.clock.Now(), ErrorEvery) {
		m.logger.Error(msg, args...)
	}
}

// Sleep waits for d, or until ctx is done (then it returns ctx.Err()).
// When probe is set and d is longer than ProbeAfter, it probes Consul about
// once per ProbeEvery and returns early, with nil, once a probe succeeds.
// The probes of concurrent sleepers are shared. Blocks.
func (m *Monitor) Sleep(ctx context.Context, d time.Duration, probe bool) error {
	if !probe || m.probe == nil || d <= ProbeAfter {
		return sleep(ctx, m.clock, d)
	}
	end := m.clock.Now().Add(d)
	for {
		step := min(ProbeEvery, end.Sub(m.clock.Now()))
		if err := sleep(ctx, m.clock, step); err != nil {
			return err
		}
		if !m.clock.Now().Before(end) {
			return nil
		}
		if m.probeShared(ctx) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// probeShared runs a probe, or reuses one that started less than
// ProbeEvery ago (waiting for it if it is in flight), and reports whether
// Consul answered.
func (m *Monitor) probeShared(ctx context.Context) bool {
	m.mu.Lock()
	if ch := m.probing; ch != nil {
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
		m.mu.Lock()
		ok := m.probeOK
		m.mu.Unlock()
		return ok
	}
	now := m.clock.Now()
	if !m.lastProbe.IsZero() && now.Sub(m.lastProbe) < ProbeEvery {
		ok := m.probeOK
		m.mu.Unlock()
		return ok
	}
	ch := make(chan struct{})
	m.probing, m.lastProbe = ch, now
	m.mu.Unlock()

	pctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	err := m.probe(pctx)
	cancel()

	m.mu.Lock()
	m.probeOK = err == nil
	m.probing = nil
	m.mu.Unlock()
	close(ch)
	if err != nil {
		m.logger.Debug("Consul probe failed", "error", err)
	}
	return err == nil
}

// sleep waits for d on clk, or until ctx is done. It is the one
// context-aware sleep of the Consul loops.
func sleep(ctx context.Context, clk clock.Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	c, stop := clk.NewTimer(d)
	defer stop()
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sleep waits for d on clk, or until ctx is done, and returns ctx.Err() if
// ctx ended first. Blocks.
func Sleep(ctx context.Context, clk clock.Clock, d time.Duration) error {
	return sleep(ctx, clk, d)
}
