package lbserver

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/roundrobin"
)

// PolicyMetaKey is the Consul service meta key that selects a service's
// policy ("lb-policy": "weighted_round_robin"). It is read from the first
// instance (by ID) and wins over Config.ServicePolicies and Config.Policy;
// an unknown name is logged and ignored.
const PolicyMetaKey = "lb-policy"

// Defaults of the ClientStats and rate-limit settings of Config.
const (
	DefaultMaxRateLimitDropShare = 0.9
	DefaultMaxClientCallRate     = 100000
	DefaultMaxClientRateShare    = 0.5
)

// Defaults of the rate limits of Config.
const (
	DefaultMaxStreamRatePerIP = 100
	DefaultStreamBurstPerIP   = 200
	DefaultMaxIgnoredMessages = 100
)

// Config configures a Server. Start from DefaultConfig; New validates.
type Config struct {
	// Source finds the endpoints of services. Required.
	Source discovery.Source
	// Policy is the name of the default balancing policy (see
	// policy.Names). Default round_robin.
	Policy string
	// ServicePolicies overrides Policy per service (service → policy; a
	// name's tag filter is ignored for the lookup). Consul service meta
	// PolicyMetaKey overrides both.
	ServicePolicies map[string]string
	// PolicyOptions configure every policy (list bound, source_hash
	// subset). Default policy.DefaultOptions().
	PolicyOptions policy.Options
	// Zones are DNS zones whose names map to services; see NameMapper.
	Zones []string
	// Aliases map client names to services; see NameMapper.
	Aliases map[string]string
	// MaxNameLength bounds the name in initial requests, 1 to 1024 bytes.
	// Default 255.
	MaxNameLength int
	// ClientStatsInterval is how often clients are asked to send
	// ClientStats; 0 asks them not to. Default 10 s; at least 1 s.
	ClientStatsInterval time.Duration
	// InitialRequestTimeout ends a stream that has not sent its initial
	// request in time (with DeadlineExceeded). Default 10 s; at least 100 ms.
	InitialRequestTimeout time.Duration
	// FirstListTimeout bounds how long a stream for a service whose watcher
	// has no answer yet waits before answering with a FallbackResponse (the
	// list follows when the answer comes). Keep it under the clients'
	// fallback timeout (10 s in grpc-go). Default 5 s; at most 1 min.
	FirstListTimeout time.Duration
	// WatchLinger keeps a service's watcher running this long after its
	// last stream ended, so a reconnecting client finds it warm.
	// Default 1 min; 0 stops at once.
	WatchLinger time.Duration
	// MaxServices bounds how many services are watched at once, so that
	// clients (or DNS queries) naming random services cannot make the
	// balancer open unbounded watches. A new service beyond it displaces
	// one that no stream uses; otherwise its streams end with
	// ResourceExhausted. Default 10000; at least 1.
	MaxServices int
	// MaxStreamAge ends each stream cleanly after this long (± 10 %,
	// random per stream), and Serve closes each client connection with
	// GOAWAY after about as long, so clients re-resolve and re-spread over
	// the balancer replicas, for example after one was down. The client
	// reconnects at once and keeps its backends meanwhile. 0 disables it.
	// Default 30 min; at least 10 s.
	MaxStreamAge time.Duration
	// MaxStreams bounds the BalanceLoad streams open at once; a stream
	// beyond it ends at once with ResourceExhausted (grpc-go clients retry
	// with backoff). Default 50000; at least 1.
	MaxStreams int
	// MaxStreamsPerIP bounds the streams open at once from one client IP
	// address, so that one host cannot take the others' share of
	// MaxStreams. Clients behind one NAT share it. Default 1000; from 1
	// to MaxStreams.
	MaxStreamsPerIP int
	// MaxStreamsPerConn bounds the streams open at once on one client
	// connection (a grpc-go grpclb client opens one per connection).
	// Default 100; from 1 to MaxStreamsPerIP. Serve also sets HTTP/2
	// MAX_CONCURRENT_STREAMS to twice it, a bound on the streams of a
	// connection that were ended but whose client has not read their end.
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
	// MaxRequestSize bounds the messages a client sends (its initial
	// request and ClientStats, a few hundred bytes in grpc-go), in bytes:
	// a longer message ends its stream with ResourceExhausted before it is
	// read, so that huge names cost nothing. Default 64 KiB; from 4 KiB to
	// 4 MiB.
	MaxRequestSize int
	// LoadReports makes the balancer collect ORCA load reports from every
	// endpoint of each watched service (one out-of-band stream per
	// endpoint), for the least_load policy and for overload drops.
	// Endpoints that serve no ORCA keep their discovery weight. Default on.
	LoadReports bool
	// LoadReport configures the collectors: report interval, expiry,
	// backoff. Its Logger is replaced by the server's.
	LoadReport loadreport.Config
	// LoadWeight configures how reports become weights (gRFC A58 with a
	// blackout, smoothing and hysteresis) and when every endpoint is
	// overloaded, which share of calls to drop.
	LoadWeight loadweight.Config
	// RateLimits caps the calls per second of a service (service →
	// calls/s, over all clients of this balancer; each tag filter of the
	// service is limited on its own). Above the limit, lists
	// carry drop entries (token "drop-ratelimit") for the excess share,
	// measured from the calls clients report in ClientStats.
	//
	// The offered rate is measured over max(2 × ClientStatsInterval, 5 s)
	// from ClientStats, which are not trusted as sent: see
	// MaxClientCallRate and MaxClientRateShare. A rate limit needs
	// ClientStatsInterval above 0.
	RateLimits map[string]float64
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
	// 1 (and clients sharing an address, behind NAT, share one cap).
	// Default 0.5; must be in (0, 100].
	MaxClientRateShare float64
	// LBTokenKey, when set, makes every list entry carry a keyed lb-token
	// (lbtoken.Key.ForID of the instance's Consul service ID), which only
	// holders of the key can compute; backends must hold the same key.
	// Empty gives unkeyed tokens (lbtoken.ForID), the default.
	LBTokenKey lbtoken.Key
	// Logger receives the server's logs. Default slog.Default().
	Logger *slog.Logger
	// Observer is told of streams, lists, fallbacks and refusals, for
	// metrics; see Observer. Nil observes nothing.
	Observer Observer
}

// DefaultConfig returns a Config with every field but Source set to its
// default.
func DefaultConfig() Config {
	return Config{
		Policy:                roundrobin.Name,
		ServicePolicies:       map[string]string{},
		PolicyOptions:         policy.DefaultOptions(),
		Aliases:               map[string]string{},
		MaxNameLength:         DefaultMaxNameLength,
		ClientStatsInterval:   10 * time.Second,
		InitialRequestTimeout: 10 * time.Second,
		FirstListTimeout:      5 * time.Second,
		WatchLinger:           time.Minute,
		MaxServices:           10000,
		MaxStreamAge:          30 * time.Minute,
		MaxStreams:            50000,
		MaxStreamsPerIP:       1000,
		MaxStreamsPerConn:     100,
		MaxStreamRatePerIP:    DefaultMaxStreamRatePerIP,
		StreamBurstPerIP:      DefaultStreamBurstPerIP,
		MaxIgnoredMessages:    DefaultMaxIgnoredMessages,
		MaxConns:              20000,
		MaxConnsPerIP:         500,
		SendTimeout:           30 * time.Second,
		MaxRequestSize:        64 << 10,
		LoadReports:           true,
		LoadReport:            loadreport.DefaultConfig(),
		LoadWeight:            loadweight.DefaultConfig(),
		RateLimits:            map[string]float64{},
		MaxRateLimitDropShare: DefaultMaxRateLimitDropShare,
		MaxClientCallRate:     DefaultMaxClientCallRate,
		MaxClientRateShare:    DefaultMaxClientRateShare,
		Logger:                slog.Default(),
	}
}

func (c Config) validate() error {
	var errs []error
	if c.Source == nil {
		errs = append(errs, errors.New("no discovery source"))
	}
	if err := c.PolicyOptions.Validate(); err != nil {
		errs = append(errs, err)
	} else {
		if _, err := policy.Build(c.Policy, c.PolicyOptions); err != nil {
			errs = append(errs, err)
		}
		for svc, name := range c.ServicePolicies {
			if _, err := policy.Build(name, c.PolicyOptions); err != nil {
				errs = append(errs, fmt.Errorf("service %q: %w", svc, err))
			}
		}
	}
	for _, z := range c.Zones {
		if err := ValidateName(z, c.MaxNameLength); err != nil || strings.HasPrefix(z, ".") || strings.HasSuffix(z, ".") || strings.Contains(z, ":") {
			errs = append(errs, fmt.Errorf("zone %q is not a domain name without leading or trailing dot", z))
		}
	}
	if c.MaxNameLength < 1 || c.MaxNameLength > 1024 {
		errs = append(errs, fmt.Errorf("max name length %d is not in [1, 1024]", c.MaxNameLength))
	}
	for name, svc := range c.Aliases {
		if err := ValidateName(name, c.MaxNameLength); err != nil {
			errs = append(errs, fmt.Errorf("alias %q: %w", name, err))
		}
		if err := ValidateName(svc, c.MaxNameLength); err != nil {
			errs = append(errs, fmt.Errorf("alias %q → %q: %w", name, svc, err))
		}
	}
	if c.ClientStatsInterval != 0 && c.ClientStatsInterval < time.Second {
		errs = append(errs, fmt.Errorf("client stats interval %v is under 1s", c.ClientStatsInterval))
	}
	if c.InitialRequestTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("initial request timeout %v is under 100ms", c.InitialRequestTimeout))
	}
	if c.FirstListTimeout <= 0 || c.FirstListTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("first list timeout %v is not in (0, 1m]", c.FirstListTimeout))
	}
	if c.WatchLinger < 0 {
		errs = append(errs, fmt.Errorf("watch linger %v is negative", c.WatchLinger))
	}
	if c.MaxServices < 1 {
		errs = append(errs, fmt.Errorf("max services %d is under 1", c.MaxServices))
	}
	if c.MaxStreamAge != 0 && c.MaxStreamAge < 10*time.Second {
		errs = append(errs, fmt.Errorf("max stream age %v is under 10s", c.MaxStreamAge))
	}
	errs = append(errs, c.validateLimits()...)
	if c.Logger == nil {
		errs = append(errs, errors.New("no logger"))
	}
	if err := c.LoadWeight.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.LoadReports {
		if err := c.LoadReport.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for svc, limit := range c.RateLimits {
		if !(limit > 0) || math.IsInf(limit, 1) {
			errs = append(errs, fmt.Errorf("rate limit of %q: %v calls/s is not a positive number", svc, limit))
		}
	}
	if len(c.RateLimits) > 0 && c.ClientStatsInterval == 0 {
		errs = append(errs, errors.New("rate limits need client stats: the client stats interval is 0"))
	}
	if !(c.MaxRateLimitDropShare > 0 && c.MaxRateLimitDropShare <= 1) {
		errs = append(errs, fmt.Errorf("max rate-limit drop share %v is not in (0, 1]", c.MaxRateLimitDropShare))
	}
	if !(c.MaxClientCallRate > 0) || math.IsInf(c.MaxClientCallRate, 1) {
		errs = append(errs, fmt.Errorf("max client call rate %v is not a positive number", c.MaxClientCallRate))
	}
	if !(c.MaxClientRateShare > 0 && c.MaxClientRateShare <= 100) {
		errs = append(errs, fmt.Errorf("max client rate share %v is not in (0, 100]", c.MaxClientRateShare))
	}
	if n := len(c.LBTokenKey); n > 0 && (n < lbtoken.MinKeyLength || n > lbtoken.MaxKeyLength) {
		errs = append(errs, fmt.Errorf("lb-token key has %d bytes, want %d to %d", n, lbtoken.MinKeyLength, lbtoken.MaxKeyLength))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lbserver: invalid config: %w", err)
	}
	return nil
}
