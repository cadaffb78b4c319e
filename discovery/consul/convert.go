package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
)

// MaxServiceNameLen is the longest service name accepted, in bytes.
const MaxServiceNameLen = 255

// ValidateServiceName reports whether name can be watched: it goes into the
// path of a Consul URL, so it must be non-empty valid UTF-8 of at most
// MaxServiceNameLen bytes without '/', '?', '#', white space or control
// characters. Safe for concurrent use.
func ValidateServiceName(name string) error {
	switch {
	case name == "":
		return errors.New("consul: empty service name")
	case len(name) > MaxServiceNameLen:
		return fmt.Errorf("consul: service name of %d bytes is longer than %d", len(name), MaxServiceNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("consul: service name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if r == '/' || r == '?' || r == '#' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("consul: service name %q: character %q not allowed", name, r)
		}
	}
	return nil
}

// converter turns the answers for one watched name into snapshots. It
// remembers the last good address of each hostname, so that a failed
// lookup does not take instances out. It is used by one goroutine at a time.
type converter struct {
	service        string // the watched name, for snapshots
	includeWarning bool
	resolver       Resolver
	timeout        time.Duration
	log            *slog.Logger

	lastGood map[string]netip.Addr // hostname → its last resolved address; only the hosts of the last answer
}

// snapshot turns one Consul answer into a snapshot. Instances that cannot be
// used are skipped and logged. It reports whether any address was a
// hostname (the caller re-resolves those on a timer). The only error is
// ctx's.
func (c *converter) snapshot(ctx context.Context, entries []*api.ServiceEntry, index uint64) (discovery.Snapshot, bool, error) {
	// Service IDs are unique per agent only: count them to find clashes.
	ids := make(map[string]int, len(entries))
	for _, e := range entries {
		if e != nil && e.Service != nil {
			ids[e.Service.ID]++
		}
	}
	res := &lookups{ctx: ctx, resolver: c.resolver, timeout: c.timeout, lastGood: c.lastGood, log: c.log}
	defer res.close()

	var eps []discovery.Endpoint
	for _, e := range entries {
		ep, skip := c.endpoint(e, ids, res)
		if err := ctx.Err(); err != nil {
			return discovery.Snapshot{}, false, err
		}
		if skip != nil {
			c.log.Log(ctx, skip.level, "skipping instance", "instance", skip.instance, "reason", skip.reason)
			continue
		}
		eps = append(eps, ep)
	}
	c.lastGood = res.good
	eps = discovery.SortEndpoints(eps)
	snap := discovery.Snapshot{Service: c.service, Endpoints: eps, Index: index}
	if len(eps) > 0 {
		snap.Meta = eps[0].Meta
	}
	return snap, res.hostnames, nil
}

// skipped says why an instance was left out.
type skipped struct {
	instance string
	reason   string
	level    slog.Level // Debug for routine reasons (unhealthy), Warn for bad registrations
}

// WeightMetaKey is the instance meta key that overrides a passing
// instance's Consul weight (Weights.Passing): a whole number from 1 to
// MaxWeight. Other values are logged and ignored.
const WeightMetaKey = "lb-weight"

// endpoint converts one entry, or says why it was skipped.
func (c *converter) endpoint(e *api.ServiceEntry, ids map[string]int, res *lookups) (discovery.Endpoint, *skipped) {
	if e == nil || e.Service == nil || e.Node == nil {
		return discovery.Endpoint{}, &skipped{instance: "?", reason: "incomplete entry", level: slog.LevelWarn}
	}
	svc := e.Service
	inst := e.Node.Node + "/" + svc.ID
	skip := func(level slog.Level, format string, args ...any) (discovery.Endpoint, *skipped) {
		return discovery.Endpoint{}, &skipped{instance: inst, reason: fmt.Sprintf(format, args...), level: level}
	}

	weight := svc.Weights.Passing
	switch status := e.Checks.AggregatedStatus(); status {
	case api.HealthPassing:
	case api.HealthWarning:
		if !c.includeWarning {
			return skip(slog.LevelDebug, "health is warning")
		}
		weight = svc.Weights.Warning
	default:
		return skip(slog.LevelDebug, "health is %q", status)
	}
	if v, ok := svc.Meta[WeightMetaKey]; ok && e.Checks.AggregatedStatus() == api.HealthPassing {
		if n, err := strconv.Atoi(v); err == nil && n >= 1 && n <= MaxWeight {
			weight = n
		} else {
			c.log.Warn("ignoring bad weight in service meta; using Consul's weight", "instance", inst, "key", WeightMetaKey, "value", v)
		}
	}
	weight = min(max(weight, 1), MaxWeight)

	if svc.ID == "" {
		return skip(slog.LevelWarn, "no service ID")
	}
	id, instance := svc.ID, ""
	if ids[svc.ID] > 1 {
		// The backend knows itself by its service ID only: its lb-token
		// derives from Instance.
		id, instance = e.Node.Node+"/"+svc.ID, svc.ID
	}

	if svc.Port < 1 || svc.Port > 65535 {
		return skip(slog.LevelWarn, "port %d out of range 1-65535", svc.Port)
	}
	host := svc.Address
	if host == "" {
		host = e.Node.Address
	}
	if host == "" {
		return skip(slog.LevelWarn, "neither the service nor the node has an address")
	}
	addr, err := res.addr(host)
	if err != nil {
		return skip(slog.LevelWarn, "address %q: %v", host, err)
	}

	var meta map[string]string
	if len(svc.Meta) > 0 {
		meta = maps.Clone(svc.Meta)
	}
	return discovery.Endpoint{
		ID:       id,
		Instance: instance,
		Addr:     netip.AddrPortFrom(addr, uint16(svc.Port)),
		Weight:   weight,
		Meta:     meta,
	}, nil
}

// lookups turns the addresses of one answer into IPs, resolving each
// hostname once, all under one deadline. A hostname whose lookup fails
// keeps its address from the previous answer (lastGood), if it had one.
type lookups struct {
	ctx      context.Context
	resolver Resolver
	timeout  time.Duration
	lastGood map[string]netip.Addr // read only
	log      *slog.Logger

	rctx      context.Context // created with the first lookup
	cancel    context.CancelFunc
	cache     map[string]lookup
	good      map[string]netip.Addr // the hostnames of this answer that have an address
	hostnames bool                  // whether any address was a hostname
}

type lookup struct {
	addr netip.Addr
	err  error
}

// addr returns the IP of host: the literal itself (without brackets, zone
// or IPv4 mapping), or the first address the resolver returns for it, or
// its last good address if the lookup fails.
func (l *lookups) addr(host string) (netip.Addr, error) {
	lit := host
	if len(lit) > 2 && lit[0] == '[' && lit[len(lit)-1] == ']' {
		lit = lit[1 : len(lit)-1]
	}
	if a, err := netip.ParseAddr(lit); err == nil {
		return a.Unmap().WithZone(""), nil
	}
	l.hostnames = true
	if r, ok := l.cache[host]; ok {
		return r.addr, r.err
	}
	if l.rctx == nil {
		l.rctx, l.cancel = context.WithTimeout(l.ctx, l.timeout)
		l.cache = make(map[string]lookup)
	}
	var r lookup
	addrs, err := l.resolver.LookupNetIP(l.rctx, "ip", host)
	switch {
	case err != nil:
		r.err = fmt.Errorf("resolve: %w", err)
	case len(addrs) == 0 || !addrs[0].IsValid():
		r.err = errors.New("resolve: no address")
	default:
		r.addr = addrs[0].Unmap().WithZone("")
	}
	if r.err != nil && l.ctx.Err() == nil {
		if last, ok := l.lastGood[host]; ok {
			l.log.Warn("hostname lookup failed; keeping its last address", "host", host, "address", last, "error", r.err)
			r = lookup{addr: last}
		}
	}
	if r.err == nil {
		if l.good == nil {
			l.good = make(map[string]netip.Addr)
		}
		l.good[host] = r.addr
	}
	l.cache[host] = r
	return r.addr, r.err
}

func (l *lookups) close() {
	if l.cancel != nil {
		l.cancel()
	}
}
