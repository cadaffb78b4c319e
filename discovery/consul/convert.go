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

// snapshot turns one Consul answer into a snapshot. Instances that cannot be
// used are skipped and logged. The only error is ctx's.
func (w *watcher) snapshot(ctx context.Context, entries []*api.ServiceEntry, index uint64) (discovery.Snapshot, error) {
	// Service IDs are unique per agent only: count them to find clashes.
	ids := make(map[string]int, len(entries))
	for _, e := range entries {
		if e != nil && e.Service != nil {
			ids[e.Service.ID]++
		}
	}
	res := &lookups{ctx: ctx, resolver: w.cfg.Resolver, timeout: w.cfg.ResolveTimeout}
	defer res.close()

	var eps []discovery.Endpoint
	for _, e := range entries {
		ep, skip := w.endpoint(e, ids, res)
		if err := ctx.Err(); err != nil {
			return discovery.Snapshot{}, err
		}
		if skip != nil {
			w.log.Log(ctx, skip.level, "skipping instance", "instance", skip.instance, "reason", skip.reason)
			continue
		}
		eps = append(eps, ep)
	}
	eps = discovery.SortEndpoints(eps)
	snap := discovery.Snapshot{Service: w.service, Endpoints: eps, Index: index}
	if len(eps) > 0 {
		snap.Meta = eps[0].Meta
	}
	return snap, nil
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
func (w *watcher) endpoint(e *api.ServiceEntry, ids map[string]int, res *lookups) (discovery.Endpoint, *skipped) {
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
		if !w.cfg.IncludeWarning {
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
			w.log.Warn("ignoring bad weight in service meta; using Consul's weight", "instance", inst, "key", WeightMetaKey, "value", v)
		}
	}
	weight = min(max(weight, 1), MaxWeight)

	if svc.ID == "" {
		return skip(slog.LevelWarn, "no service ID")
	}
	id := svc.ID
	if ids[svc.ID] > 1 {
		id = e.Node.Node + "/" + svc.ID
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
		ID:     id,
		Addr:   netip.AddrPortFrom(addr, uint16(svc.Port)),
		Weight: weight,
		Meta:   meta,
	}, nil
}

// lookups turns the addresses of one answer into IPs, resolving each
// hostname once, all under one deadline.
type lookups struct {
	ctx      context.Context
	resolver Resolver
	timeout  time.Duration

	rctx   context.Context // created with the first lookup
	cancel context.CancelFunc
	cache  map[string]lookup
}

type lookup struct {
	addr netip.Addr
	err  error
}

// addr returns the IP of host: the literal itself (without brackets, zone
// or IPv4 mapping), or the first address the resolver returns for it.
func (l *lookups) addr(host string) (netip.Addr, error) {
	lit := host
	if len(lit) > 2 && lit[0] == '[' && lit[len(lit)-1] == ']' {
		lit = lit[1 : len(lit)-1]
	}
	if a, err := netip.ParseAddr(lit); err == nil {
		return a.Unmap().WithZone(""), nil
	}
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
	l.cache[host] = r
	return r.addr, r.err
}

func (l *lookups) close() {
	if l.cancel != nil {
		l.cancel()
	}
}
