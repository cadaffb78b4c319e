package lbserver

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/leastload"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
)

// Child policies a grpclb client may run over the lists (its grpclb
// config's childPolicy). The balancer cannot see it: ServiceSettings.ChildPolicy
// says which one a service's clients use, for the calls Status attributes
// to endpoints.
const (
	ChildRoundRobin = "round_robin"
	ChildPickFirst  = "pick_first"
)

// ChildPolicies are the accepted ServiceSettings.ChildPolicy values.
var ChildPolicies = []string{ChildRoundRobin, ChildPickFirst}

// Where a service's policy came from (ServiceStatus.PolicySource).
const (
	PolicyFromDefault = "default"     // Settings.Policy
	PolicyFromConfig  = "config"      // Settings.Services[svc].Policy
	PolicyFromConsul  = "consul_meta" // the service's Consul meta PolicyMetaKey
)

// OutlierMode is a service's choice about latency outliers
// (ServiceSettings.LatencyOutliers).
type OutlierMode uint8

const (
	// OutliersDefault follows Settings.LoadWeight.Outliers.Enabled (on
	// by default) under least_load.
	OutliersDefault OutlierMode = iota
	// OutliersOn detects latency outliers under least_load even when
	// Settings.LoadWeight.Outliers.Enabled is off.
	OutliersOn
	// OutliersOff never ejects the service's endpoints.
	OutliersOff
)

// ServiceSettings are the settings of one service (keyed by its name
// without tag filter in Settings.Services; each tag filter of the service
// has them too, and is rate limited on its own). Zero fields take the
// server-wide value.
type ServiceSettings struct {
	// Policy is the service's balancing policy (see policy.Names). Consul
	// service meta PolicyMetaKey overrides it. Empty: Settings.Policy.
	Policy string
	// PolicyOptions configure the service's policy, whichever it is
	// (Consul meta included). Each zero field takes the value of
	// Settings.PolicyOptions; the result must pass policy.Options.Validate.
	PolicyOptions policy.Options
	// RateLimit caps the service's calls per second over all clients of
	// this balancer: above it, lists carry drop entries (token
	// "drop-ratelimit") for the excess share, measured from the calls
	// clients report in ClientStats (see Config.ClientStatsInterval,
	// Settings.MaxClientCallRate and Settings.MaxClientRateShare). 0: no
	// limit; else positive and finite, and ClientStatsInterval above 0.
	RateLimit float64
	// MaxDropShare bounds the share of calls dropped when every endpoint
	// is overloaded (loadweight.Config.MaxDropShare for this service).
	// 0: Settings.LoadWeight.MaxDropShare under least_load, and no
	// overload drops (nor load collection) under another policy; else in
	// (0, policy.MaxDropShare], and the service collects load reports
	// whatever its policy.
	MaxDropShare float64
	// MaxRateLimitDropShare bounds the share of calls dropped to keep the
	// service under RateLimit. 0: Settings.MaxRateLimitDropShare; else in
	// (0, 1].
	MaxRateLimitDropShare float64
	// LatencyOutliers turns latency outlier detection on or off for the
	// service (loadweight.OutlierConfig, with the knobs of
	// Settings.LoadWeight.Outliers): an endpoint much slower than its
	// peers gets a probe share of the calls. It applies under least_load
	// only, the policy that balances on load weights. Default
	// OutliersDefault.
	LatencyOutliers OutlierMode
	// ChildPolicy is the child policy the service's clients run,
	// ChildRoundRobin or ChildPickFirst, for the calls Status attributes
	// to endpoints (the balancer's lists do not depend on it). Empty:
	// ChildRoundRobin.
	ChildPolicy string
}

// Settings are the part of Config that Server.Reconfigure can change on a
// running server without dropping a stream. Config embeds them; New
// applies them as Reconfigure does.
type Settings struct {
	// Policy is the name of the default balancing policy (see
	// policy.Names). Default round_robin.
	Policy string
	// PolicyOptions configure every policy (list bound, source_hash
	// subset), unless a service sets its own. Default
	// policy.DefaultOptions().
	PolicyOptions policy.Options
	// Services holds per-service settings, by service name (without tag
	// filter; matched case-insensitively, two keys differing in case only
	// are an error). Consul service meta PolicyMetaKey overrides a
	// service's policy.
	Services map[string]ServiceSettings
	// Zones are DNS zones whose names map to services; see NameMapper.
	Zones []string
	// Aliases map client names to services; see NameMapper.
	Aliases map[string]string
	// MaxStreams bounds the BalanceLoad streams open at once; a stream
	// beyond it ends at once with ResourceExhausted (grpc-go clients retry
	// with backoff). Default 50000; at least 1. Lowered below the streams
	// open, it refuses new streams only.
	MaxStreams int
	// MaxStreamsPerIP bounds the streams open at once from one client IP
	// address, so that one host cannot take the others' share of
	// MaxStreams. Clients behind one NAT share it. Default 1000; from 1
	// to MaxStreams.
	MaxStreamsPerIP int
	// MaxStreamsPerConn bounds the streams open at once on one client
	// connection (a grpc-go grpclb client opens one per connection).
	// Default 100; from 1 to MaxStreamsPerIP. Server.GRPCOptions also sets
	// HTTP/2 MAX_CONCURRENT_STREAMS to twice it, a bound on the streams of
	// a connection that were ended but whose client has not read their
	// end; that one is fixed when the grpc.Server is built, so Reconfigure
	// may lower MaxStreamsPerConn but not raise it above its value at New.
	MaxStreamsPerConn int
	// MaxStreamRatePerIP bounds how fast one client address (an IPv4
	// address, an IPv6 /64) opens streams, in streams per second, with
	// StreamBurstPerIP at once: each stream takes a token from its
	// address's bucket, and a stream finding none ends at once with
	// ResourceExhausted, refused before grpc starts a handler. The other
	// limits bound what a client holds; this one how fast it churns. A
	// grpc-go client opens one stream per channel and reopens it with
	// backoff, so honest clients are far below the defaults; clients
	// behind one NAT share one bucket: N channels there reconnecting at
	// once (a balancer replica restarting) are all back within
	// (N − StreamBurstPerIP) / MaxStreamRatePerIP seconds, the refused
	// ones retrying with backoff and keeping their backends meanwhile.
	// Raise both for large NATs. At most 32768 addresses are tracked (those
	// that opened a stream within the last StreamBurstPerIP /
	// MaxStreamRatePerIP seconds); a new one beyond evicts the least
	// recently seen. Peers without an IP address (Unix sockets) are not
	// limited. Default 100 streams/s with a burst of 200; 0 turns the
	// limit off; at most 1e6, the burst from 1 to 2^20.
	MaxStreamRatePerIP float64
	StreamBurstPerIP   int
	// MaxIgnoredMessages ends a stream (with ResourceExhausted) that sent
	// more than this many messages within a minute that the balancer
	// ignores: ClientStats sent more often than twice per
	// ClientStatsInterval or with negative counts (see
	// Stats.BadClientStats), and anything but ClientStats after the
	// initial request. Each still costs a parse; an honest client sends
	// one report per ClientStatsInterval and none of these. A stream may
	// have this many at once and this many a minute after that (a token
	// bucket). Default 100; 0 turns the limit off; at most 2^20.
	MaxIgnoredMessages int
	// MaxConns bounds the client connections open at once, and
	// MaxConnsPerIP those from one IP address; a connection beyond either
	// is closed as soon as it is accepted (clients see Unavailable and
	// reconnect with backoff: no gRPC status can be sent before the
	// connection is set up). They apply to listeners wrapped with
	// Server.Listener, as Serve does. Defaults 20000 and 500; at least 1,
	// MaxConnsPerIP at most MaxConns.
	MaxConns      int
	MaxConnsPerIP int
	// SendTimeout cuts a client that does not read its lists: a message
	// the stream cannot hand to the connection within it (the client's
	// flow-control window and the server's buffer for the stream are
	// full) ends the stream with ResourceExhausted. Default 30 s; from 1 s
	// to 10 min.
	SendTimeout time.Duration
	// LoadWeight configures how load reports become weights (gRFC A58
	// with a blackout, smoothing and hysteresis) and when every endpoint
	// is overloaded, which share of calls to drop: its MaxDropShare bounds
	// the drops of least_load services (a service may bound it lower or
	// higher, and a service under another policy drops only with its own:
	// ServiceSettings.MaxDropShare). Its Outliers configure latency
	// outlier detection for least_load services (on by default; a service
	// may turn it on or off: ServiceSettings.LatencyOutliers).
	LoadWeight loadweight.Config
	// MaxRateLimitDropShare bounds the share of calls dropped to keep a
	// service under its rate limit, so that clients keep reporting what
	// they offer. Default 0.9; must be in (0, 1] (lists drop at most
	// policy.MaxDropShare). LoadWeight.MaxDropShare concerns overload drops
	// only.
	MaxRateLimitDropShare float64
	// MaxClientCallRate is the most calls per second one client stream is
	// believed to start. A ClientStats report claiming more calls than
	// this rate allows since the stream's previous report (plus up to
	// 2 × ClientStatsInterval, at least 10 s, saved up: the first report
	// may hold calls from before the stream, a report may come late) is
	// clamped to that allowance and counted in Stats.BadClientStats.
	// Default 100000; must be positive and finite.
	MaxClientCallRate float64
	// MaxClientRateShare caps what one client counts for in the offered
	// rate of a rate-limited service: the streams from one address (an
	// IPv4 address, an IPv6 /64) together count for at most this share of
	// the service's limit per second, one ClientStatsInterval of it saved
	// up (an address with no stream left starts again with nothing saved).
	// Over the measurement window W = max(2 × ClientStatsInterval, 5 s), N
	// addresses, whatever number of streams they open, raise the measured
	// rate by at most N × share × limit × (W + interval) / W: 0.75 × N ×
	// limit with the defaults. So one client alone, honest or forged,
	// cannot push a service over its limit; a service whose calls come
	// from a single address is not limited unless this is raised above
	// 1 (and clients sharing an address, behind NAT, share one cap). A
	// stream's cap is fixed at its first report: a change reaches the
	// streams that start after it. Default 0.5; must be in (0, 100].
	MaxClientRateShare float64
}

// DefaultSettings returns Settings with every field set to its default.
func DefaultSettings() Settings {
	return Settings{
		Policy:                roundrobin.Name,
		PolicyOptions:         policy.DefaultOptions(),
		Services:              map[string]ServiceSettings{},
		Aliases:               map[string]string{},
		MaxStreams:            50000,
		MaxStreamsPerIP:       1000,
		MaxStreamsPerConn:     100,
		MaxStreamRatePerIP:    DefaultMaxStreamRatePerIP,
		StreamBurstPerIP:      DefaultStreamBurstPerIP,
		MaxIgnoredMessages:    DefaultMaxIgnoredMessages,
		MaxConns:              20000,
		MaxConnsPerIP:         500,
		SendTimeout:           30 * time.Second,
		LoadWeight:            loadweight.DefaultConfig(),
		MaxRateLimitDropShare: DefaultMaxRateLimitDropShare,
		MaxClientCallRate:     DefaultMaxClientCallRate,
		MaxClientRateShare:    DefaultMaxClientRateShare,
	}
}

// validate returns every error of s, each naming its setting and value.
// maxName bounds names (Config.MaxNameLength); statsOn is whether clients
// send ClientStats (Config.ClientStatsInterval > 0), which rate limits
// need.
func (s Settings) validate(maxName int, statsOn bool) []error {
	var errs []error
	if err := s.PolicyOptions.Validate(); err != nil {
		errs = append(errs, err)
	} else if _, err := policy.Build(s.Policy, s.PolicyOptions); err != nil {
		errs = append(errs, err)
	}
	for _, z := range s.Zones {
		if err := ValidateName(z, maxName); err != nil || strings.HasPrefix(z, ".") || strings.HasSuffix(z, ".") || strings.Contains(z, ":") {
			errs = append(errs, fmt.Errorf("zone %q is not a domain name without leading or trailing dot", z))
		}
	}
	for name, svc := range s.Aliases {
		if err := ValidateName(name, maxName); err != nil {
			errs = append(errs, fmt.Errorf("alias %q: %w", name, err))
		}
		if err := ValidateName(svc, maxName); err != nil {
			errs = append(errs, fmt.Errorf("alias %q → %q: %w", name, svc, err))
		}
	}
	if _, err := CanonicalAliases(s.Aliases); err != nil {
		errs = append(errs, err)
	}
	if _, err := canonicalServiceKeys("services", s.Services); err != nil {
		errs = append(errs, err)
	}
	names := make([]string, 0, len(s.Services))
	for name := range s.Services {
		names = append(names, name)
	}
	slices.Sort(names) // errors in a stable order
	for _, name := range names {
		for _, err := range s.Services[name].validate(s, statsOn) {
			errs = append(errs, fmt.Errorf("service %q: %w", name, err))
		}
		if err := ValidateName(name, maxName); err != nil || strings.ContainsAny(name, ":"+discovery.TagSeparator) {
			errs = append(errs, fmt.Errorf("service %q is not a service name (without port or tag filter)", name))
		}
	}
	errs = append(errs, s.validateLimits()...)
	if err := s.LoadWeight.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !(s.MaxRateLimitDropShare > 0 && s.MaxRateLimitDropShare <= 1) {
		errs = append(errs, fmt.Errorf("max rate-limit drop share %v is not in (0, 1]", s.MaxRateLimitDropShare))
	}
	if !(s.MaxClientCallRate > 0) || math.IsInf(s.MaxClientCallRate, 1) {
		errs = append(errs, fmt.Errorf("max client call rate %v is not a positive number", s.MaxClientCallRate))
	}
	if !(s.MaxClientRateShare > 0 && s.MaxClientRateShare <= 100) {
		errs = append(errs, fmt.Errorf("max client rate share %v is not in (0, 100]", s.MaxClientRateShare))
	}
	return errs
}

// validate returns the errors of one service's settings, given the
// server-wide ones.
func (ss ServiceSettings) validate(s Settings, statsOn bool) []error {
	var errs []error
	opts := ss.options(s.PolicyOptions)
	if err := opts.Validate(); err != nil {
		errs = append(errs, err)
	} else if ss.Policy != "" {
		if _, err := policy.Build(ss.Policy, opts); err != nil {
			errs = append(errs, err)
		}
	}
	if ss.RateLimit != 0 {
		if !(ss.RateLimit > 0) || math.IsInf(ss.RateLimit, 1) {
			errs = append(errs, fmt.Errorf("rate limit %v calls/s is not a positive number", ss.RateLimit))
		} else if !statsOn {
			errs = append(errs, errors.New("a rate limit needs client stats: the client stats interval is 0"))
		}
	}
	if ss.MaxDropShare != 0 && !(ss.MaxDropShare > 0 && ss.MaxDropShare <= policy.MaxDropShare) {
		errs = append(errs, fmt.Errorf("max drop share %v is not in (0, %v] (0: the server's)", ss.MaxDropShare, policy.MaxDropShare))
	}
	if ss.MaxRateLimitDropShare != 0 && !(ss.MaxRateLimitDropShare > 0 && ss.MaxRateLimitDropShare <= 1) {
		errs = append(errs, fmt.Errorf("max rate-limit drop share %v is not in (0, 1] (0: the server's)", ss.MaxRateLimitDropShare))
	}
	if ss.LatencyOutliers > OutliersOff {
		errs = append(errs, fmt.Errorf("latency outliers mode %d is not one of OutliersDefault, OutliersOn, OutliersOff", ss.LatencyOutliers))
	}
	if ss.ChildPolicy != "" && !slices.Contains(ChildPolicies, ss.ChildPolicy) {
		errs = append(errs, fmt.Errorf("child policy %q is not one of %v", ss.ChildPolicy, ChildPolicies))
	}
	return errs
}

// options returns the service's policy options, zero fields taken from
// def.
func (ss ServiceSettings) options(def policy.Options) policy.Options {
	o := ss.PolicyOptions
	if o.MaxEntries == 0 {
		o.MaxEntries = def.MaxEntries
	}
	if o.HashSubset == 0 {
		o.HashSubset = def.HashSubset
	}
	return o
}

// polKey names one built policy: its name and options.
type polKey struct {
	name string
	opts policy.Options
}

// live is the Settings in force, with what is derived from them. It is
// immutable: Reconfigure builds a new one and swaps it in.
type live struct {
	// Settings as given, but with Aliases and the keys of Services in
	// canonical form.
	Settings
	names NameMapper
	// policies holds every registered policy built with the default
	// options and with each service's options.
	policies map[polKey]policy.Policy
	// changed is closed when a newer live replaces this one.
	changed chan struct{}
}

// newLive derives a live from settings that passed validate.
func newLive(s Settings, maxName int) (*live, error) {
	var err error
	if s.Aliases, err = CanonicalAliases(s.Aliases); err != nil {
		return nil, err
	}
	if s.Services, err = canonicalServiceKeys("services", s.Services); err != nil {
		return nil, err
	}
	s.Zones = slices.Clone(s.Zones)
	l := &live{Settings: s, names: NameMapper{Aliases: s.Aliases, Zones: s.Zones, MaxLength: maxName},
		policies: map[polKey]policy.Policy{}, changed: make(chan struct{})}
	optSets := []policy.Options{s.PolicyOptions}
	for _, ss := range s.Services {
		optSets = append(optSets, ss.options(s.PolicyOptions))
	}
	for _, opts := range optSets {
		for _, name := range policy.Names() {
			k := polKey{name, opts}
			if _, ok := l.policies[k]; ok {
				continue
			}
			p, err := policy.Build(name, opts)
			if err != nil {
				return nil, err
			}
			l.policies[k] = p
		}
	}
	return l, nil
}

// service returns the settings of a service (canonical name, with or
// without tag filter), zero when none are configured.
func (l *live) service(name string) ServiceSettings {
	base, _ := discovery.SplitName(name)
	return l.Services[base]
}

// rateLimit returns the rate limit of a service (canonical name, with or
// without tag filter), 0 for none.
func (l *live) rateLimit(name string) float64 { return l.service(name).RateLimit }

// childPolicy returns the child policy of a service.
func (l *live) childPolicy(name string) string {
	if c := l.service(name).ChildPolicy; c != "" {
		return c
	}
	return ChildRoundRobin
}

// choosePolicy picks the policy of a service's snapshot: Consul meta
// PolicyMetaKey, else the configured per-service policy, else the default,
// built with the service's options. bad is the meta value that was
// rejected, if any.
func (l *live) choosePolicy(snap discovery.Snapshot) (name, source string, p policy.Policy, bad string) {
	ss := l.service(snap.Service)
	name, source = l.Policy, PolicyFromDefault
	if ss.Policy != "" {
		name, source = ss.Policy, PolicyFromConfig
	}
	opts := ss.options(l.PolicyOptions)
	if n, ok := snap.Meta[PolicyMetaKey]; ok {
		if _, known := l.policies[polKey{n, opts}]; known {
			name, source = n, PolicyFromConsul
		} else {
			bad = n
		}
	}
	return name, source, l.policies[polKey{name, opts}], bad
}

// weightConfig returns the load-weight config of a service under policy
// polName: latency outliers are detected under least_load only, as the
// service's LatencyOutliers and the server's default say.
func (l *live) weightConfig(name, polName string) loadweight.Config {
	c := l.LoadWeight
	ss := l.service(name)
	if d := ss.MaxDropShare; d != 0 {
		c.MaxDropShare = d
	}
	switch ss.LatencyOutliers {
	case OutliersOn:
		c.Outliers.Enabled = true
	case OutliersOff:
		c.Outliers.Enabled = false
	}
	if polName != leastload.Name {
		c.Outliers.Enabled = false
	}
	return c
}

// maxRateLimitDrop returns the bound on a service's rate-limit drop share.
func (l *live) maxRateLimitDrop(name string) float64 {
	if d := l.service(name).MaxRateLimitDropShare; d != 0 {
		return d
	}
	return l.MaxRateLimitDropShare
}
