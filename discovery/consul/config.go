package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/consul/api"
)

// MaxWeight is the largest endpoint weight published. Larger Consul weights
// are clamped to it, so that a typo in a registration cannot make one
// instance crowd out every other in a bounded server list.
const MaxWeight = 10000

// Limits of the duration fields of Config, inclusive.
const (
	// MaxWaitTime is Consul's own cap on a blocking query's wait.
	MaxWaitTime = 10 * time.Minute
	// MinWaitTime is the shortest blocking query wait accepted.
	MinWaitTime = time.Second
	// MaxMinInterval bounds Config.MinInterval.
	MaxMinInterval = time.Minute
	// MaxBackoff bounds Config.BackoffMax.
	MaxBackoff = 10 * time.Minute
	// MaxResolveTimeout bounds Config.ResolveTimeout.
	MaxResolveTimeout = time.Minute
	// MaxMaxFetches bounds Config.MaxFetches.
	MaxMaxFetches = 256
	// MinResolveInterval and MaxResolveInterval bound Config.ResolveInterval.
	MinResolveInterval = time.Second
	MaxResolveInterval = time.Hour
	// MinResyncInterval and MaxResyncInterval bound Config.ResyncInterval.
	MinResyncInterval = 10 * time.Second
	MaxResyncInterval = 24 * time.Hour
	// MaxTimeout bounds Config.Timeout.
	MaxTimeout = 5 * time.Minute
	// MaxMaxConns bounds ClientConfig.MaxConns.
	MaxMaxConns = 1024
)

// DefaultMaxConns is the default of ClientConfig.MaxConns: well under
// Consul's default limit of 200 HTTP connections per client IP
// (limits.http_max_conns_per_client), so that several replicas on one
// host and the operators' own tools still fit.
const DefaultMaxConns = 16

// LongPolls is the number of blocking queries a Source holds open while it
// runs: the catalog's service list and the health state. A Source uses at
// most LongPolls + MaxFetches + 1 (the probe) connections at once; give
// its client at least that many (ConnsNeeded).
const LongPolls = 2

// ConnsNeeded returns the connections a Source with maxFetches fetches can
// use at once: its long polls, its fetches and a probe.
func ConnsNeeded(maxFetches int) int { return LongPolls + maxFetches + 1 }

// Client is the part of the Consul API that a Source uses; API adapts an
// *api.Client, tests use a fake. Every method must return promptly once
// q.Context() is done, and be safe for concurrent use.
type Client interface {
	// Services lists the catalog's services and their tags
	// (/v1/catalog/services), blocking for up to q.WaitTime.
	Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error)
	// State lists the checks in a state (/v1/health/state/<state>),
	// blocking for up to q.WaitTime. The Source asks for every state
	// (api.HealthAny).
	State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error)
	// ServiceMultipleTags lists the instances of a service
	// (/v1/health/service/<service>); the Source only asks without
	// blocking.
	ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
	// LeaderWithQueryOptions is the cheap probe used while queries back off
	// (/v1/status/leader).
	LeaderWithQueryOptions(q *api.QueryOptions) (string, error)
}

// API returns the Client of c. Build c with NewClient, so that the
// connections it opens are bounded.
func API(c *api.Client) Client {
	return apiClient{c.Catalog(), c.Health(), c.Status()}
}

type apiClient struct {
	*api.Catalog
	*api.Health
	*api.Status
}

func (a apiClient) Services(q *api.QueryOptions) (map[string][]string, *api.QueryMeta, error) {
	return a.Catalog.Services(q)
}

func (a apiClient) State(state string, q *api.QueryOptions) (api.HealthChecks, *api.QueryMeta, error) {
	return a.Health.State(state, q)
}

func (a apiClient) ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return a.Health.ServiceMultipleTags(service, tags, passingOnly, q)
}

func (a apiClient) LeaderWithQueryOptions(q *api.QueryOptions) (string, error) {
	return a.Status.LeaderWithQueryOptions(q)
}

var _ Client = apiClient{}

// Resolver resolves the hostnames that instances may register as their
// address. *net.Resolver satisfies it. It must honour ctx and be safe for
// concurrent use.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// Config configures a Source. Start from DefaultConfig, set Client, and
// change what you need; New rejects out-of-range values rather than
// clamping them. A Config is read once by New.
type Config struct {
	// Client queries Consul, usually API(NewClient(...)). Required.
	Client Client

	// Tags filters instances: only those carrying every tag are used.
	// Empty tags are rejected. Default: none.
	Tags []string
	// Datacenter is the datacenter to query. Default: "" (the agent's own).
	Datacenter string
	// AllowStale lets any Consul server answer, not only the leader, which
	// spreads the load at the cost of answers slightly behind the leader.
	// Default: false.
	AllowStale bool
	// Near asks Consul to sort instances by round-trip time from the named
	// node ("_agent" for the queried agent). Snapshots are always sorted by
	// ID, so it only matters to Consul's own work. Default: "".
	Near string
	// IncludeWarning also publishes instances whose worst check is warning
	// (with their warning weight). Critical and maintenance instances are
	// never published. Default: false (passing instances only).
	IncludeWarning bool

	// MaxFetches bounds the non-blocking fetches of services' instances
	// running at once, from 1 to MaxMaxFetches; with the LongPolls and the
	// probe it bounds the connections the Source uses (ConnsNeeded).
	// Default: 8.
	MaxFetches int
	// ResyncInterval is how often every watched service is fetched again
	// even if neither long poll reported a change, a safety net; from
	// MinResyncInterval to MaxResyncInterval. Default: 5 minutes.
	ResyncInterval time.Duration
	// Timeout bounds a non-blocking fetch, and is added to a blocking
	// query's wait (and Consul's jitter of wait/16) to get its deadline;
	// from 1ns to MaxTimeout. Default: 10 s.
	Timeout time.Duration

	// WaitTime is how long one blocking query may wait for a change, from
	// MinWaitTime to MaxWaitTime. Consul adds up to WaitTime/16 of its own
	// jitter. A request that has not returned WaitTime+WaitTime/16+Timeout
	// after it started is abandoned as failed, which bounds how long a
	// silently dead connection goes unnoticed. Default: 1 minute, which also
	// stays below the idle timeout of most proxies.
	WaitTime time.Duration
	// MinInterval is the least time between the starts of two queries of
	// one long poll, and of two fetches of the same service; up to 25 % of
	// random jitter is added each time.
	// From 1ns to MaxMinInterval. Default: 100 ms.
	MinInterval time.Duration
	// BackoffBase is the delay before the first retry after an error; each
	// further consecutive error doubles it, up to BackoffMax. Every delay is
	// then multiplied by a random factor in [0.8, 1.2). A successful answer
	// resets the sequence. Must be positive. Default: 250 ms.
	BackoffBase time.Duration
	// BackoffMax caps the backoff delay before jitter; from BackoffBase to
	// MaxBackoff. Default: 30 s.
	BackoffMax time.Duration

	// Resolver resolves instance addresses that are hostnames. Nil means
	// net.DefaultResolver. Default: net.DefaultResolver.
	Resolver Resolver
	// ResolveTimeout bounds all the hostname lookups made for one Consul
	// answer together; from 1ns to MaxResolveTimeout. Default: 5 s.
	ResolveTimeout time.Duration
	// ResolveInterval is how often the services whose instances register
	// a hostname are fetched and resolved again, so that a changed address
	// is published without a change in Consul; from MinResolveInterval to
	// MaxResolveInterval. A failed lookup keeps the instance's last good
	// address. Default: 30 s.
	ResolveInterval time.Duration

	// Observer, if set, is told of every request sent to Consul, for
	// metrics (see Observer). Default: nil.
	Observer Observer

	// Logger receives the source's logs, with the attribute
	// component=discovery.consul. Nil means slog.Default(). ACL tokens are
	// never logged.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every field at its default. Client
// is nil and must be set.
func DefaultConfig() Config {
	return Config{
		WaitTime:        time.Minute,
		MinInterval:     100 * time.Millisecond,
		BackoffBase:     250 * time.Millisecond,
		BackoffMax:      30 * time.Second,
		Resolver:        net.DefaultResolver,
		ResolveTimeout:  5 * time.Second,
		ResolveInterval: 30 * time.Second,
		MaxFetches:      8,
		ResyncInterval:  5 * time.Minute,
		Timeout:         10 * time.Second,
		Logger:          slog.Default(),
	}
}

// validate checks cfg and returns the first problem found.
func (cfg *Config) validate() error {
	if cfg.Client == nil {
		return errors.New("consul: Config.Client is nil")
	}
	for i, tag := range cfg.Tags {
		if tag == "" {
			return fmt.Errorf("consul: Config.Tags[%d] is empty", i)
		}
	}
	if cfg.WaitTime < MinWaitTime || cfg.WaitTime > MaxWaitTime {
		return fmt.Errorf("consul: Config.WaitTime %v out of range [%v, %v]", cfg.WaitTime, MinWaitTime, MaxWaitTime)
	}
	if cfg.MinInterval <= 0 || cfg.MinInterval > MaxMinInterval {
		return fmt.Errorf("consul: Config.MinInterval %v out of range (0, %v]", cfg.MinInterval, MaxMinInterval)
	}
	if cfg.BackoffBase <= 0 {
		return fmt.Errorf("consul: Config.BackoffBase %v must be positive", cfg.BackoffBase)
	}
	if cfg.BackoffMax < cfg.BackoffBase || cfg.BackoffMax > MaxBackoff {
		return fmt.Errorf("consul: Config.BackoffMax %v out of range [BackoffBase=%v, %v]", cfg.BackoffMax, cfg.BackoffBase, MaxBackoff)
	}
	if cfg.ResolveTimeout <= 0 || cfg.ResolveTimeout > MaxResolveTimeout {
		return fmt.Errorf("consul: Config.ResolveTimeout %v out of range (0, %v]", cfg.ResolveTimeout, MaxResolveTimeout)
	}
	if cfg.ResolveInterval < MinResolveInterval || cfg.ResolveInterval > MaxResolveInterval {
		return fmt.Errorf("consul: Config.ResolveInterval %v out of range [%v, %v]", cfg.ResolveInterval, MinResolveInterval, MaxResolveInterval)
	}
	if cfg.MaxFetches < 1 || cfg.MaxFetches > MaxMaxFetches {
		return fmt.Errorf("consul: Config.MaxFetches %d out of range [1, %d]", cfg.MaxFetches, MaxMaxFetches)
	}
	if cfg.ResyncInterval < MinResyncInterval || cfg.ResyncInterval > MaxResyncInterval {
		return fmt.Errorf("consul: Config.ResyncInterval %v out of range [%v, %v]", cfg.ResyncInterval, MinResyncInterval, MaxResyncInterval)
	}
	if cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout {
		return fmt.Errorf("consul: Config.Timeout %v out of range (0, %v]", cfg.Timeout, MaxTimeout)
	}
	return nil
}
