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
)

// Client is the part of the Consul API that a Source uses. *api.Health
// satisfies it; tests use a fake. ServiceMultipleTags blocks for up to
// q.WaitTime and must return promptly once q.Context() is done. It is called
// concurrently when several services are watched.
type Client interface {
	ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

var _ Client = (*api.Health)(nil)

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
	// Client queries Consul's health endpoint, usually
	// NewClient(...).Health(). Required.
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

	// WaitTime is how long one blocking query may wait for a change, from
	// MinWaitTime to MaxWaitTime. Consul adds up to WaitTime/16 of its own
	// jitter. A request that has not returned WaitTime+WaitTime/16+10s
	// after it started is abandoned as failed, which bounds how long a
	// silently dead connection goes unnoticed. Default: 1 minute, which also
	// stays below the idle timeout of most proxies.
	WaitTime time.Duration
	// MinInterval is the least time between the starts of two fetches of
	// the same service; up to 25 % of random jitter is added each time.
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

	// Logger receives the source's logs, with the attribute
	// component=discovery.consul. Nil means slog.Default(). ACL tokens are
	// never logged.
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every field at its default. Client
// is nil and must be set.
func DefaultConfig() Config {
	return Config{
		WaitTime:       time.Minute,
		MinInterval:    100 * time.Millisecond,
		BackoffBase:    250 * time.Millisecond,
		BackoffMax:     30 * time.Second,
		Resolver:       net.DefaultResolver,
		ResolveTimeout: 5 * time.Second,
		Logger:         slog.Default(),
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
	return nil
}

// ClientConfig holds the overrides that NewClient applies on top of the
// Consul API's defaults. Empty fields keep the defaults, which come from the
// standard environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY,
// CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, ...) and otherwise
// from 127.0.0.1:8500 over plain HTTP.
type ClientConfig struct {
	// Address of the Consul agent: "host:port", or with a scheme prefix
	// "http://", "https://" or "unix://".
	Address string
	// Token is the ACL token. Prefer TokenFile or the environment: command
	// lines are visible to other users of the machine.
	Token string
	// TokenFile is a file holding the ACL token; it wins over Token.
	TokenFile string
	// Datacenter is the default datacenter of requests.
	Datacenter string
}

// LogValue keeps the token out of logs.
func (c ClientConfig) LogValue() slog.Value {
	token := ""
	if c.Token != "" {
		token = "<redacted>"
	}
	return slog.GroupValue(
		slog.String("address", c.Address),
		slog.String("token", token),
		slog.String("token_file", c.TokenFile),
		slog.String("datacenter", c.Datacenter),
	)
}

// NewClient builds a Consul API client from api.DefaultConfig, so that the
// standard environment variables are honoured, with the non-empty fields of
// cfg applied on top. Use its Health() as Config.Client. It does not contact
// Consul.
func NewClient(cfg ClientConfig) (*api.Client, error) {
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
		// A token given explicitly wins over CONSUL_HTTP_TOKEN_FILE.
		ac.TokenFile = ""
	}
	if cfg.TokenFile != "" {
		ac.TokenFile = cfg.TokenFile
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: new client: %w", err)
	}
	return c, nil
}
