package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
	_ "google.golang.org/grpc/balancer/grpclb" // the policy the service config selects
	"google.golang.org/grpc/resolver"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/consulwatch"
)

// Scheme is the target scheme the package registers.
const Scheme = "consul"

func init() {
	resolver.Register(NewBuilder(Options{}))
}

// Options configure a Builder. The zero value is the registered default.
type Options struct {
	// Scheme is the scheme served. Default Scheme.
	Scheme string
	// Logger receives the resolvers' logs, with the attribute
	// component=resolver.consul. Default: slog.Default() at Build time.
	// Consul failures are logged at Warn, at most once per retry.
	Logger *slog.Logger
}

// healthClient is the part of the Consul API a resolver uses; *api.Health
// satisfies it. ServiceMultipleTags must return promptly once q.Context()
// is done, and be safe for concurrent use.
type healthClient interface {
	ServiceMultipleTags(service string, tags []string, passingOnly bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error)
}

var _ healthClient = (*api.Health)(nil)

// tuning holds the timings that are not target parameters. Tests shorten
// them.
type tuning struct {
	// minInterval is the least time between the starts of two fetches of
	// one watch loop; up to 25 % of jitter is added.
	minInterval time.Duration
	// backoffBase is the first retry delay, doubled up to the target's
	// MaxBackoff.
	backoffBase time.Duration
}

// adviceHints name the target's parameters in the ERROR lines about
// errors that retrying cannot fix: resolver users set the token and the
// datacenter there, not with lbserver's flags.
var adviceHints = consulwatch.Hints{
	Token:      `the target's "token" parameter, or CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE`,
	Datacenter: `the target's "dc" parameter`,
}

var defaultTuning = tuning{minInterval: 100 * time.Millisecond, backoffBase: 250 * time.Millisecond}

// builder builds resolvers. Read-only after construction.
type builder struct {
	scheme string
	logger *slog.Logger
	tune   tuning
	// newHealth connects to Consul for one resolver; it returns the client,
	// a cheap check that Consul answers, which the watches probe with while
	// they back off (nil: none, see consulwatch.NewMonitor), and a function
	// that releases its idle connections.
	newHealth func(Target) (healthClient, func(context.Context) error, func(), error)
}

// NewBuilder returns a resolver builder for consul:// targets, to register
// with resolver.Register or pass to grpc.WithResolvers. Its resolvers
// connect to the Consul agent of their target.
func NewBuilder(o Options) resolver.Builder {
	if o.Scheme == "" {
		o.Scheme = Scheme
	}
	return &builder{scheme: o.Scheme, logger: o.Logger, tune: defaultTuning, newHealth: newAPIHealth}
}

func (b *builder) Scheme() string { return b.scheme }

// Build parses the target, starts the two watch loops and returns at once;
// the first state follows as soon as Consul answers. It returns an error
// only for a target that cannot be parsed or a Consul client that cannot be
// configured (bad TLS files in the environment, say).
func (b *builder) Build(rt resolver.Target, cc resolver.ClientConn, opts resolver.BuildOptions) (resolver.Resolver, error) {
	t, err := parseURL(&rt.URL)
	if err != nil {
		return nil, err
	}
	health, probe, closeConns, err := b.newHealth(t)
	if err != nil {
		return nil, err
	}
	logger := b.logger
	if logger == nil {
		logger = slog.Default()
	}
	r := &consulResolver{
		cc:         cc,
		target:     t,
		health:     health,
		closeConns: closeConns,
		tune:       b.tune,
		log:        logger.With("component", "resolver.consul", "target", t),
		lbSeed:     rand.Uint64(),
		results:    make(chan result),
	}
	if t.LB && !opts.DisableServiceConfig {
		r.sc = cc.ParseServiceConfig(ServiceConfig(discovery.JoinName(t.Service, t.Tags)))
		if r.sc.Err != nil {
			closeConns()
			return nil, fmt.Errorf("consul: service config: %w", r.sc.Err)
		}
	}
	r.monitor = consulwatch.NewMonitor(probe, nil, r.log, adviceHints)
	if r.instances, err = r.newWatcher(instanceList); err == nil && t.LB {
		r.balancers, err = r.newWatcher(balancerList)
	}
	if err != nil {
		closeConns()
		return nil, err
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.start()
	return r, nil
}

// ServiceConfig returns the service config the resolver gives channels with
// the LB on: grpclb, asking the balancer for service, with round_robin over
// the backends the balancer returns (and over the fallback addresses). The
// resolver names the service with its tag filter ("user-srv@srv", see
// discovery.JoinName), so the balancer lists only the tagged instances.
func ServiceConfig(service string) string {
	type obj = map[string]any
	b, _ := json.Marshal(obj{"loadBalancingConfig": []obj{
		{"grpclb": obj{"serviceName": service, "childPolicy": []obj{{"round_robin": obj{}}}}},
	}})
	return string(b)
}

// newAPIHealth returns the health endpoint of a Consul client for t, with a
// transport of its own whose connections the returned function closes.
// Requests carry no client-wide timeout: each fetch has its own deadline.
func newAPIHealth(t Target) (healthClient, func(context.Context) error, func(), error) {
	cfg := api.DefaultConfig() // the standard environment variables
	if t.Addr != "" {
		cfg.Address = t.Addr
	}
	if t.User != "" {
		cfg.HttpAuth = &api.HttpBasicAuth{Username: t.User, Password: t.Password}
	}
	if t.Token != "" {
		cfg.Token = t.Token
		cfg.TokenFile = ""
	}
	if t.Insecure {
		cfg.TLSConfig.InsecureSkipVerify = true
	}
	tr := cfg.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
		cfg.Transport = tr
	}
	var conns connSet
	if tr.DialContext == nil {
		tr.DialContext = (&net.Dialer{}).DialContext
	}
	tr.DialContext = conns.wrap(tr.DialContext)
	c, err := api.NewClient(cfg)
	if err != nil {
		tr.CloseIdleConnections()
		return nil, nil, nil, fmt.Errorf("consul: client for %s: %w", t, err)
	}
	// NewClient may replace the transport's dialer (unix sockets): close
	// the idle connections of the client's transport as well.
	closeAll := func() {
		conns.closeAll()
		tr.CloseIdleConnections()
		if cfg.HttpClient != nil {
			cfg.HttpClient.CloseIdleConnections()
		}
	}
	return c.Health(), consulwatch.LeaderProbe(c.Status()), closeAll, nil
}
