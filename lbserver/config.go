package lbserver

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
)

// PolicyMetaKey is the Consul service meta key that selects a service's
// policy ("lb-policy": "weighted_round_robin"). It is read from the first
// instance (by ID) and wins over Settings.Services[svc].Policy and
// Settings.Policy;
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

// Bounds of the fields of Config that New checks, for callers that check
// a configuration first.
const (
	// MaxMaxNameLength bounds MaxNameLength, in bytes.
	MaxMaxNameLength = 1024
	// MinMaxRequestSize and MaxMaxRequestSize bound MaxRequestSize, in
	// bytes.
	MinMaxRequestSize = 4 << 10
	MaxMaxRequestSize = 4 << 20
)

// Config configures a Server. Start from DefaultConfig; New validates.
// The embedded Settings can be changed later with Server.Reconfigure; the
// other fields are fixed for the server's life.
type Config struct {
	Settings
	// Source finds the endpoints of services. Required.
	Source discovery.Source
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
	// MaxRequestSize bounds the messages a client sends (its initial
	// request and ClientStats, a few hundred bytes in grpc-go), in bytes:
	// a longer message ends its stream with ResourceExhausted before it is
	// read, so that huge names cost nothing. Default 64 KiB; from 4 KiB to
	// 4 MiB.
	MaxRequestSize int
	// LoadReports makes the balancer collect ORCA load reports from every
	// endpoint (one out-of-band stream per endpoint) of each watched
	// service whose decisions use them: its policy is least_load, or it
	// sets its own ServiceSettings.MaxDropShare. Other services collect
	// nothing and drop no call for overload; a policy change starts or
	// stops the collection. Endpoints that serve no ORCA keep their
	// discovery weight. Default on.
	LoadReports bool
	// LoadReport configures the collectors: report interval, expiry,
	// backoff. Its Logger is replaced by Logger with the service (the
	// collector adds its own component).
	LoadReport loadreport.Config
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
	// XDS makes Serve also serve gRPC's xDS clients on the listener: the
	// Aggregated Discovery Service (envoy.service.discovery.v3, State of
	// the World) from the same watches and plans as BalanceLoad streams,
	// and the Load Reporting Service, whose reports count as ClientStats
	// (see docs/xds.md). Default true.
	XDS bool
	// Transport is what serves BalanceLoad connections:
	// TransportLookaside (the default, also for "") or TransportGRPC.
	Transport string
}

// DefaultConfig returns a Config with every field but Source set to its
// default.
func DefaultConfig() Config {
	return Config{
		Settings:              DefaultSettings(),
		MaxNameLength:         DefaultMaxNameLength,
		ClientStatsInterval:   10 * time.Second,
		InitialRequestTimeout: 10 * time.Second,
		FirstListTimeout:      5 * time.Second,
		WatchLinger:           time.Minute,
		MaxServices:           10000,
		MaxStreamAge:          30 * time.Minute,
		MaxRequestSize:        64 << 10,
		LoadReports:           true,
		LoadReport:            loadreport.DefaultConfig(),
		XDS:                   true,
		Transport:             TransportLookaside,
		Logger:                slog.Default(),
	}
}

func (c Config) validate() error {
	var errs []error
	if c.Source == nil {
		errs = append(errs, errors.New("no discovery source"))
	}
	maxName := c.MaxNameLength
	if maxName < 1 || maxName > MaxMaxNameLength {
		errs = append(errs, fmt.Errorf("max name length %d is not in [1, %d]", c.MaxNameLength, MaxMaxNameLength))
		maxName = MaxMaxNameLength // to check the names of the settings all the same
	}
	errs = append(errs, c.Settings.validate(maxName, c.ClientStatsInterval > 0)...)
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
	if c.MaxRequestSize < MinMaxRequestSize || c.MaxRequestSize > MaxMaxRequestSize {
		errs = append(errs, fmt.Errorf("max request size %d is not in [%d, %d] bytes", c.MaxRequestSize, MinMaxRequestSize, MaxMaxRequestSize))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("no logger"))
	}
	if err := validTransport(c.Transport); err != nil {
		errs = append(errs, err)
	}
	if c.LoadReports {
		if err := c.LoadReport.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if n := len(c.LBTokenKey); n > 0 && (n < lbtoken.MinKeyLength || n > lbtoken.MaxKeyLength) {
		errs = append(errs, fmt.Errorf("lb-token key has %d bytes, want %d to %d", n, lbtoken.MinKeyLength, lbtoken.MaxKeyLength))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lbserver: invalid config: %w", err)
	}
	return nil
}
