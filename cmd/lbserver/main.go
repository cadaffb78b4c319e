// Command lbserver is the Lookaside balancer: a grpclb server
// (grpc.lb.v1.LoadBalancer) that finds backends in Consul, or in a static
// list, and streams ordered server lists to grpclb clients.
//
// It only maps flags and environment to the packages that do the work;
// run it with -h for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/discovery/static"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/policy"
	_ "github.com/lookaside-lb/lookaside/policy/all"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go onSignals(sigs, cancel, os.Stderr, os.Exit)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// onSignals turns the first SIGINT or SIGTERM into cancel, which starts
// the shutdown bounded by -shutdown-timeout, and a second one into exit(1)
// at once, with a line on stderr. It blocks until the second signal.
func onSignals(sigs <-chan os.Signal, cancel func(), stderr io.Writer, exit func(int)) {
	<-sigs
	cancel()
	s := <-sigs
	fmt.Fprintf(stderr, "lbserver: second signal (%v) during shutdown: exiting at once\n", s)
	exit(1)
}

// options are the parsed flags.
type options struct {
	listen          string
	shutdownTimeout time.Duration
	logLevel        string
	logFormat       string

	staticSpec string
	staticFile string

	consulAddr      string
	consulToken     string
	consulTokenFile string
	consulDC        string
	consulTags      string
	consulStale     bool
	consulWarning   bool
	consulWait      time.Duration

	consulMaxConns        int
	consulMaxFetches      int
	consulResolveInterval time.Duration
	consulResyncInterval  time.Duration
	consulAPI             *api.Client // built once by consulClient and shared

	register        bool
	registerService string
	registerID      string
	advertise       string
	checkInterval   time.Duration
	drainDelay      time.Duration
	tokenKeyFile    string

	lb              lbserver.Config
	aliases         string
	servicePolicies string
	zones           string
	rateLimits      string

	dns dnsOptions
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{lb: lbserver.DefaultConfig()}
	fs := flag.NewFlagSet("lbserver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: lbserver [flags]

Lookaside, a grpclb balancer. Serves grpc.lb.v1.LoadBalancer/BalanceLoad on
-listen. Backends come from Consul (the default: CONSUL_HTTP_ADDR and the other
standard CONSUL_* variables are honoured, flags win) or, when -static or
-static-file is given, from a fixed list.

A client's name ("user-srv:50051") maps to the service "user-srv": the port
(and a -zone suffix) is stripped, then -alias may rename it. Each service is
balanced with -policy, -service-policy, or its Consul meta "lb-policy";
backends' ORCA load reports feed least_load and overload drops. -register
makes this replica findable in Consul, and -dns-listen answers the DNS
records (SRV, A/AAAA, TXT) that let clients find it with no configuration.

What one client can make the balancer hold is bounded (-max-streams*,
-max-conns*, -max-stream-rate-per-ip, -send-timeout, -max-request-size), and
names Consul does not list cost no watch: Consul is read over at most
-consul-max-conns connections, whatever the number of services and clients.
The replica reports NOT_SERVING until it has read Consul once.

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", ":7000", "address to serve the balancer on (`host:port`; port 0 picks one)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "bound on the whole shutdown on SIGINT or SIGTERM (deregistration, -drain-delay, ending streams, stopping DNS): what would exceed it is cut and logged; a second signal exits at once")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")

	fs.StringVar(&o.staticSpec, "static", "", "fixed backends instead of Consul, as a `spec`: svc=ip:port[*weight],...;svc2=...")
	fs.StringVar(&o.staticFile, "static-file", "", "fixed backends instead of Consul, from a JSON `file` (see README)")

	fs.StringVar(&o.consulAddr, "consul", "", "Consul agent `address` (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&o.consulToken, "consul-token", "", "Consul ACL token (prefer -consul-token-file or $CONSUL_HTTP_TOKEN: flags are visible to other users)")
	fs.StringVar(&o.consulTokenFile, "consul-token-file", "", "`file` holding the Consul ACL token")
	fs.StringVar(&o.consulDC, "consul-dc", "", "Consul datacenter (default: the agent's)")
	fs.StringVar(&o.consulTags, "consul-tag", "", "only use instances with all these `tags` (comma-separated)")
	fs.BoolVar(&o.consulStale, "consul-stale", false, "allow stale reads from any Consul server")
	fs.BoolVar(&o.consulWarning, "consul-include-warning", false, "also use instances whose checks are warning (never critical)")
	fs.DurationVar(&o.consulWait, "consul-wait", time.Minute, "how long one blocking query waits for a change")
	fs.IntVar(&o.consulMaxConns, "consul-max-conns", consul.DefaultMaxConns, "most TCP connections to Consul, whatever the number of services and clients (Consul refuses more than 200 per client IP by default); at least -consul-max-fetches + 3, + 4 more with -dns-listen")
	fs.IntVar(&o.consulMaxFetches, "consul-max-fetches", consul.DefaultConfig().MaxFetches, "most fetches of changed services running at once (besides 2 long polls that tell which services changed)")
	fs.DurationVar(&o.consulResolveInterval, "consul-resolve-interval", consul.DefaultConfig().ResolveInterval, "how often instance addresses that are hostnames are resolved again (a failed lookup keeps the last address)")
	fs.DurationVar(&o.consulResyncInterval, "consul-resync-interval", consul.DefaultConfig().ResyncInterval, "how often every watched service is fetched again, a safety net besides the change polls")

	fs.BoolVar(&o.register, "register", false, "register this balancer in Consul (with a gRPC health check) so clients and other tools find the replicas")
	fs.StringVar(&o.registerService, "register-service", "lookaside", "Consul `service` name the balancer replicas register under")
	fs.StringVar(&o.registerID, "register-id", "", "Consul service `ID` of this replica (default <service>-<host>-<port>)")
	fs.StringVar(&o.advertise, "advertise", "", "`host:port` registered in Consul (default: the listener's address, which must then have a concrete host)")
	fs.DurationVar(&o.checkInterval, "check-interval", 2*time.Second, "interval of the Consul health check of this replica")
	fs.DurationVar(&o.drainDelay, "drain-delay", 2*time.Second, "on SIGTERM with -register, how long to wait after deregistering before ending streams (cut to fit -shutdown-timeout)")
	fs.StringVar(&o.tokenKeyFile, "lb-token-key-file", "", "`file` holding a secret shared with the backends (backend -lb-token-key-file): lists carry keyed lb-tokens (HMAC-SHA256 of the instance ID), which outsiders cannot compute (16 to 4096 bytes; default: unkeyed tokens)")

	fs.StringVar(&o.lb.Policy, "policy", o.lb.Policy, "balancing policy: "+strings.Join(policy.Names(), ", "))
	fs.StringVar(&o.servicePolicies, "service-policy", "", "per-service policies: `service=policy,...` (Consul meta \""+lbserver.PolicyMetaKey+"\" wins)")
	fs.IntVar(&o.lb.PolicyOptions.MaxEntries, "max-list-entries", o.lb.PolicyOptions.MaxEntries, "bound on the list length of weighted policies (weights are scaled down to fit; every endpoint keeps one entry)")
	fs.IntVar(&o.lb.PolicyOptions.HashSubset, "hash-subset", o.lb.PolicyOptions.HashSubset, "source_hash: how many endpoints each client IP gets")
	fs.StringVar(&o.zones, "zone", "", "DNS `zones` (comma-separated) whose names map to services: user-srv.lb.internal → user-srv")
	fs.BoolVar(&o.lb.LoadReports, "load-reports", o.lb.LoadReports, "collect ORCA load reports from backends (for least_load and overload drops)")
	fs.DurationVar(&o.lb.LoadReport.Interval, "load-report-interval", o.lb.LoadReport.Interval, "ORCA report interval asked of backends")
	fs.DurationVar(&o.lb.LoadWeight.BlackoutPeriod, "load-blackout", o.lb.LoadWeight.BlackoutPeriod, "least_load: how long a backend must report before its load counts")
	fs.Float64Var(&o.lb.LoadWeight.OverloadThreshold, "overload-threshold", o.lb.LoadWeight.OverloadThreshold, "utilization above which a backend is overloaded; calls are dropped when all are")
	fs.Float64Var(&o.lb.LoadWeight.MaxDropShare, "max-drop-share", o.lb.LoadWeight.MaxDropShare, "most calls dropped for overload, as a share (0: never drop for overload; rate limits have -max-rate-limit-drop-share)")
	fs.StringVar(&o.rateLimits, "rate-limit", "", "per-service call rate limits over all clients: `service=calls/s,...` (excess calls dropped by clients; measured from ClientStats)")
	fs.Float64Var(&o.lb.MaxRateLimitDropShare, "max-rate-limit-drop-share", o.lb.MaxRateLimitDropShare, "most calls dropped to keep a service under its -rate-limit, as a share in (0, 1]")
	fs.Float64Var(&o.lb.MaxClientRateShare, "max-client-rate-share", o.lb.MaxClientRateShare, "most the streams of one client address (IPv4 address, IPv6 /64) count for in a rate-limited service's measured rate, as a share of its -rate-limit in (0, 100]: N addresses raise it by at most N × share × 1.5 × limit (with a 10s -client-stats-interval)")
	fs.Float64Var(&o.lb.MaxClientCallRate, "max-client-call-rate", o.lb.MaxClientCallRate, "most calls per second one client stream is believed to start; ClientStats claiming more are clamped (and counted as bad)")
	fs.StringVar(&o.aliases, "alias", "", "map client names to services: `name=service,...` (name with or without port)")
	fs.IntVar(&o.lb.MaxNameLength, "max-name-length", o.lb.MaxNameLength, "longest name accepted in an initial request, in bytes")
	fs.DurationVar(&o.lb.ClientStatsInterval, "client-stats-interval", o.lb.ClientStatsInterval, "how often clients send ClientStats (0: never)")
	fs.DurationVar(&o.lb.InitialRequestTimeout, "initial-request-timeout", o.lb.InitialRequestTimeout, "end streams that send no initial request within this time")
	fs.DurationVar(&o.lb.FirstListTimeout, "first-list-timeout", o.lb.FirstListTimeout, "answer with fallback if discovery has no answer for a new service within this time")
	fs.DurationVar(&o.lb.WatchLinger, "watch-linger", o.lb.WatchLinger, "keep watching a service this long after its last client left")
	fs.IntVar(&o.lb.MaxServices, "max-services", o.lb.MaxServices, "most services watched at once (streams for more end with ResourceExhausted)")
	fs.DurationVar(&o.lb.MaxStreamAge, "max-stream-age", o.lb.MaxStreamAge, "end streams and connections after about this long (±10%), so clients re-spread over replicas (0: never)")
	fs.IntVar(&o.lb.MaxStreams, "max-streams", o.lb.MaxStreams, "most balancer streams open at once; more end with ResourceExhausted (clients retry with backoff)")
	fs.IntVar(&o.lb.MaxStreamsPerIP, "max-streams-per-ip", o.lb.MaxStreamsPerIP, "most streams open at once from one client IP address (clients behind one NAT share it)")
	fs.IntVar(&o.lb.MaxStreamsPerConn, "max-streams-per-conn", o.lb.MaxStreamsPerConn, "most streams open at once on one client connection (a grpc-go client uses one)")
	fs.Float64Var(&o.lb.MaxStreamRatePerIP, "max-stream-rate-per-ip", o.lb.MaxStreamRatePerIP, "most new streams per second from one client address (IPv4 address, IPv6 /64), -stream-burst-per-ip at once; more end with ResourceExhausted before any handler runs (clients behind one NAT share it; 0: off)")
	fs.IntVar(&o.lb.StreamBurstPerIP, "stream-burst-per-ip", o.lb.StreamBurstPerIP, "new streams one client address may open at once, beyond -max-stream-rate-per-ip")
	fs.IntVar(&o.lb.MaxIgnoredMessages, "max-ignored-messages", o.lb.MaxIgnoredMessages, "end a stream (ResourceExhausted) with more than this many ignored messages within a minute: ClientStats more often than twice per -client-stats-interval or with negative counts, other messages after the initial request (0: off)")
	fs.IntVar(&o.lb.MaxConns, "max-conns", o.lb.MaxConns, "most client connections open at once; more are closed as soon as accepted")
	fs.IntVar(&o.lb.MaxConnsPerIP, "max-conns-per-ip", o.lb.MaxConnsPerIP, "most client connections open at once from one IP address; more are closed as soon as accepted")
	fs.DurationVar(&o.lb.SendTimeout, "send-timeout", o.lb.SendTimeout, "end a stream whose client does not read its lists within this time (ResourceExhausted)")
	fs.IntVar(&o.lb.MaxRequestSize, "max-request-size", o.lb.MaxRequestSize, "largest message a client may send, in `bytes`; a larger one ends its stream (ResourceExhausted) unread")

	o.dns.addFlags(fs)

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.staticSpec != "" && o.staticFile != "" {
		return nil, errors.New("-static and -static-file are exclusive")
	}
	if o.drainDelay < 0 {
		return nil, fmt.Errorf("-drain-delay %v is negative", o.drainDelay)
	}
	if o.shutdownTimeout <= 0 {
		return nil, fmt.Errorf("-shutdown-timeout %v must be positive", o.shutdownTimeout)
	}
	aliases, err := lbserver.ParseAliases(o.aliases, o.lb.MaxNameLength)
	if err != nil {
		return nil, fmt.Errorf("-alias: %w", err)
	}
	o.lb.Aliases = aliases
	pols, err := lbserver.ParseAliases(o.servicePolicies, o.lb.MaxNameLength)
	if err != nil {
		return nil, fmt.Errorf("-service-policy: %w", err)
	}
	o.lb.ServicePolicies = pols
	if o.lb.RateLimits, err = parseRateLimits(o.rateLimits); err != nil {
		return nil, fmt.Errorf("-rate-limit: %w", err)
	}
	for _, z := range strings.Split(o.zones, ",") {
		if z = strings.TrimSuffix(strings.TrimSpace(z), "."); z != "" {
			o.lb.Zones = append(o.lb.Zones, z)
		}
	}
	if err := o.dns.parse(o); err != nil {
		return nil, err
	}
	return o, nil
}

func parseRateLimits(spec string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		svc, v, ok := strings.Cut(kv, "=")
		limit, err := strconv.ParseFloat(v, 64)
		if !ok || svc == "" || err != nil || !(limit > 0) || math.IsInf(limit, 1) {
			return nil, fmt.Errorf("%q: want service=calls per second, a positive number", kv)
		}
		out[svc] = limit
	}
	return out, nil
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}

func (o *options) source(log *slog.Logger) (discovery.Source, string, error) {
	switch {
	case o.staticSpec != "":
		services, err := static.ParseSpec(o.staticSpec)
		if err != nil {
			return nil, "", fmt.Errorf("-static: %w", err)
		}
		return static.New(services), "static", nil
	case o.staticFile != "":
		services, err := static.LoadFile(o.staticFile)
		if err != nil {
			return nil, "", fmt.Errorf("-static-file: %w", err)
		}
		return static.New(services), "static file " + o.staticFile, nil
	}
	client, err := o.consulClient()
	if err != nil {
		return nil, "", err
	}
	cfg := consul.DefaultConfig()
	cfg.Client = consul.API(client)
	cfg.Datacenter = o.consulDC
	cfg.AllowStale = o.consulStale
	cfg.IncludeWarning = o.consulWarning
	cfg.WaitTime = o.consulWait
	cfg.MaxFetches = o.consulMaxFetches
	cfg.ResolveInterval = o.consulResolveInterval
	cfg.ResyncInterval = o.consulResyncInterval
	if need := consul.ConnsNeeded(o.consulMaxFetches); o.consulMaxConns < need {
		return nil, "", fmt.Errorf("-consul-max-conns %d is below the %d connections that -consul-max-fetches %d needs (fetches + 2 long polls + a probe)", o.consulMaxConns, need, o.consulMaxFetches)
	}
	cfg.Logger = log
	for _, t := range strings.Split(o.consulTags, ",") {
		if t = strings.TrimSpace(t); t != "" {
			cfg.Tags = append(cfg.Tags, t)
		}
	}
	src, err := consul.New(cfg)
	if err != nil {
		return nil, "", err
	}
	return src, "consul", nil
}

// consulClient returns the one Consul client of the process, so that its
// connections stay within -consul-max-conns. Not safe for concurrent use.
func (o *options) consulClient() (*api.Client, error) {
	if o.consulAPI != nil {
		return o.consulAPI, nil
	}
	c, err := consul.NewClient(consul.ClientConfig{Address: o.consulAddr, Token: o.consulToken, TokenFile: o.consulTokenFile, Datacenter: o.consulDC, MaxConns: o.consulMaxConns})
	if err != nil {
		return nil, fmt.Errorf("-consul-max-conns: %w", err)
	}
	o.consulAPI = c
	return c, nil
}

// registration returns the Consul registration of this replica listening
// on addr, or nil without -register.
func (o *options) registration(addr net.Addr) (*consulreg.Instance, error) {
	if !o.register {
		return nil, nil
	}
	adv := o.advertise
	if adv == "" {
		adv = addr.String()
	}
	host, port, err := consulreg.SplitAddr(adv)
	if err != nil {
		return nil, fmt.Errorf("-advertise: %w", err)
	}
	id := o.registerID
	if id == "" {
		id = fmt.Sprintf("%s-%s-%d", o.registerService, host, port)
	}
	in := &consulreg.Instance{ID: id, Service: o.registerService, Addr: adv, CheckInterval: o.checkInterval}
	if err := in.Validate(); err != nil {
		return nil, err
	}
	return in, nil
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	log, err := newLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	if o.tokenKeyFile != "" {
		if o.lb.LBTokenKey, err = lbtoken.LoadKey(o.tokenKeyFile, log); err != nil {
			fmt.Fprintf(stderr, "lbserver: -lb-token-key-file: %v\n", err)
			return 2
		}
	}
	src, kind, err := o.source(log)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	o.lb.Source = src
	o.lb.Logger = log
	srv, err := lbserver.New(o.lb)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 1
	}
	defer lis.Close()
	ctx, fail := context.WithCancel(ctx)
	defer fail()
	stopDNS, code, err := o.dns.start(o, srv, lis.Addr(), fail, log)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return code
	}
	dnsStopping := false
	defer func() {
		if !dnsStopping {
			stopDNS() // on early returns; see below for the normal one
		}
	}()
	reg, err := o.registration(lis.Addr())
	if err != nil {
		fmt.Fprintf(stderr, "lbserver: %v\n", err)
		return 2
	}
	// The whole shutdown fits -shutdown-timeout: Serve (health, drain,
	// streams, watchers) takes it but a moment kept for the DNS responder.
	serve := lbserver.ServeOptions{ShutdownTimeout: o.shutdownTimeout - min(o.shutdownTimeout/10, 500*time.Millisecond)}
	if reg != nil {
		client, err := o.consulClient()
		if err != nil {
			fmt.Fprintf(stderr, "lbserver: %v\n", err)
			return 2
		}
		// Registered before serving: the health check fails for a moment
		// and then passes, which is what Consul expects of a new instance.
		if err := consulreg.Register(ctx, client, *reg); err != nil {
			fmt.Fprintf(stderr, "lbserver: %v\n", err)
			return 1
		}
		log.Info("registered in Consul", "service", reg.Service, "id", reg.ID, "addr", reg.Addr)
		// ctx ends when the drain's share of -shutdown-timeout is spent.
		serve.Drain = func(ctx context.Context) {
			if err := consulreg.Deregister(ctx, client, reg.ID); err != nil {
				msg := "deregistration failed; Consul drops this replica once its check is critical"
				if ctx.Err() != nil {
					msg = "shutdown: deregistration cut to fit -shutdown-timeout; Consul drops this replica once its check is critical"
				}
				log.Warn(msg, "err", err)
				return
			}
			start := time.Now()
			timer := time.NewTimer(o.drainDelay)
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-ctx.Done():
				log.Warn("shutdown: -drain-delay cut to fit -shutdown-timeout", "waited", time.Since(start).Round(time.Millisecond),
					"drain_delay", o.drainDelay, "shutdown_timeout", o.shutdownTimeout)
			}
		}
	}
	log.Info("serving", "addr", lis.Addr().String(), "discovery", kind, "policy", o.lb.Policy)
	fmt.Fprintf(stdout, "lbserver listening on %s\n", lis.Addr())
	var shutdownStart atomic.Pointer[time.Time]
	stopLog := context.AfterFunc(ctx, func() {
		now := time.Now()
		shutdownStart.Store(&now)
		log.Info("shutting down; a second signal exits at once", "timeout", o.shutdownTimeout)
	})
	defer stopLog()
	err = lbserver.Serve(ctx, lis, srv, serve)
	// The DNS responder answers until the drain is over: by then other
	// replicas' answers no longer list this one. It gets what is left of
	// -shutdown-timeout.
	start := time.Now()
	if p := shutdownStart.Load(); p != nil {
		start = *p
	}
	dnsStopping = true
	dnsDone := make(chan error, 1)
	go func() { dnsDone <- stopDNS() }()
	left := time.NewTimer(max(o.shutdownTimeout-time.Since(start), 0))
	defer left.Stop()
	select {
	case dnsErr := <-dnsDone:
		err = errors.Join(err, dnsErr)
	case <-left.C:
		log.Warn("shutdown: DNS responder still stopping at -shutdown-timeout; exiting without waiting", "timeout", o.shutdownTimeout)
	}
	if err != nil {
		log.Error("stopped", "err", err)
		return 1
	}
	log.Info("stopped", "shutdown", time.Since(start).Round(time.Millisecond))
	return 0
}

// dnsOptions are the flags of the built-in DNS responder (package
// dnsserver), which is off without -dns-listen.
type dnsOptions struct {
	listen      string
	zone        string
	ttl         time.Duration
	lbService   string
	balancers   string
	childPolicy string
	allow       string
	rateLimit   float64
	rateBurst   int
	maxInflight int
	maxTCPConns int

	// Set by parse.
	cfg    dnsserver.Config
	static dnsserver.StaticBalancers
}

func (d *dnsOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&d.listen, "dns-listen", "", "answer DNS for -dns-zone on this `host:port`, UDP and TCP (off by default): clients dial dns://<host:port>/<service>.<zone>:<port> with no config")
	fs.StringVar(&d.zone, "dns-zone", "lb.internal", "the DNS `zone` answered with -dns-listen; also added to -zone")
	fs.DurationVar(&d.ttl, "dns-ttl", 5*time.Second, "TTL of DNS records and of negative DNS answers (whole seconds, 1s to 1h)")
	fs.StringVar(&d.lbService, "dns-lb-service", "", "Consul `service` of the balancer replicas the DNS SRV records list (default: -register-service)")
	fs.StringVar(&d.balancers, "dns-balancers", "", "fixed balancer replicas for the DNS SRV records instead of Consul: `ip:port,...` (default with -static: this replica's address)")
	fs.StringVar(&d.childPolicy, "dns-child-policy", dnsserver.RoundRobin, "grpclb child policy in the DNS TXT service config: round_robin or pick_first, per service with `service=policy` (comma-separated)")
	def := dnsserver.DefaultConfig()
	var allow []string
	for _, p := range def.Allow {
		allow = append(allow, p.String())
	}
	fs.StringVar(&d.allow, "dns-allow", strings.Join(allow, ","), "source `networks` the DNS responder answers (CIDR prefixes or addresses, comma-separated); UDP questions from elsewhere are dropped and TCP connections closed. Link-local is not in the default; 0.0.0.0/0,::/0 answers everyone")
	fs.Float64Var(&d.rateLimit, "dns-rate-limit", def.RateLimit, "UDP DNS answers per second per source (an IPv4 address or an IPv6 /64); over it one question in two gets an empty truncated answer (clients retry over TCP, not rate limited) and the others none")
	fs.IntVar(&d.rateBurst, "dns-rate-burst", def.RateBurst, "burst of -dns-rate-limit: UDP DNS answers a source may get at once")
	fs.IntVar(&d.maxInflight, "dns-max-inflight", def.MaxInflight, "UDP DNS questions answered at once; more are dropped")
	fs.IntVar(&d.maxTCPConns, "dns-max-tcp-conns", def.MaxTCPConns, fmt.Sprintf("open DNS TCP connections (at most %d from one IP); more are closed at once", def.MaxTCPConnsPerSource))
}

// parse checks the DNS flags and adds the zone to the balancer's zones.
func (d *dnsOptions) parse(o *options) error {
	if d.listen == "" {
		return nil
	}
	cfg := dnsserver.DefaultConfig()
	cfg.Zone = strings.TrimSuffix(strings.TrimSpace(d.zone), ".")
	cfg.TTL = d.ttl
	def, per, err := dnsserver.ParseChildPolicies(d.childPolicy)
	if err != nil {
		return fmt.Errorf("-dns-child-policy: %w", err)
	}
	if def != "" {
		cfg.ChildPolicy = def
	}
	cfg.ServiceChildPolicies = per
	if cfg.Allow, err = dnsserver.ParseAllow(d.allow); err != nil {
		return fmt.Errorf("-dns-allow: %w", err)
	}
	cfg.RateLimit, cfg.RateBurst, cfg.MaxInflight, cfg.MaxTCPConns = d.rateLimit, d.rateBurst, d.maxInflight, d.maxTCPConns
	if d.rateLimit <= 0 || math.IsInf(d.rateLimit, 0) || math.IsNaN(d.rateLimit) {
		return fmt.Errorf("-dns-rate-limit %v: want a positive number of answers per second", d.rateLimit)
	}
	if d.rateBurst < 1 {
		return fmt.Errorf("-dns-rate-burst %d: want at least 1", d.rateBurst)
	}
	if d.maxInflight < 1 {
		return fmt.Errorf("-dns-max-inflight %d: want at least 1", d.maxInflight)
	}
	if d.maxTCPConns < 1 {
		return fmt.Errorf("-dns-max-tcp-conns %d: want at least 1", d.maxTCPConns)
	}
	cfg.MaxTCPConnsPerSource = min(cfg.MaxTCPConnsPerSource, cfg.MaxTCPConns)
	if d.balancers != "" {
		if d.static, err = dnsserver.ParseBalancers(d.balancers); err != nil {
			return fmt.Errorf("-dns-balancers: %w", err)
		}
	}
	if d.lbService == "" {
		d.lbService = o.registerService
	}
	if !slices.ContainsFunc(o.lb.Zones, func(z string) bool { return strings.EqualFold(z, cfg.Zone) }) {
		o.lb.Zones = append(o.lb.Zones, cfg.Zone)
	}
	d.cfg = cfg
	return nil
}

// start starts the DNS responder, answering with srv's backends and the
// replicas (-dns-balancers, Consul's -dns-lb-service, or with -static this
// replica at addr), and returns the function that stops it and waits. A
// failure while serving calls fail. stop may be called more than once.
// Without -dns-listen it starts nothing.
// On error, code is the exit code.
func (d *dnsOptions) start(o *options, srv *lbserver.Server, addr net.Addr, fail func(), log *slog.Logger) (stop func() error, code int, err error) {
	if d.listen == "" {
		return func() error { return nil }, 0, nil
	}
	cfg := d.cfg
	cfg.Catalog = srv
	cfg.Names = lbserver.NameMapper{Aliases: o.lb.Aliases, Zones: o.lb.Zones, MaxLength: o.lb.MaxNameLength}
	cfg.Logger = log
	var replicas *dnsserver.Replicas
	switch {
	case d.static != nil:
		cfg.Balancers = d.static
	case o.staticSpec != "" || o.staticFile != "":
		self := o.advertise
		if self == "" {
			self = addr.String()
		}
		lbs, err := dnsserver.ParseBalancers(self)
		if err != nil {
			return nil, 2, fmt.Errorf("-dns-listen without Consul lists this replica, %s, which is not an IP:port: set -dns-balancers or -advertise", self)
		}
		cfg.Balancers = lbs
	default:
		client, err := o.consulClient()
		if err != nil {
			return nil, 2, err
		}
		ccfg := consul.DefaultConfig()
		ccfg.Client = consul.API(client)
		ccfg.Datacenter = o.consulDC
		ccfg.AllowStale = o.consulStale
		ccfg.WaitTime = o.consulWait
		// One service watched: one fetch at a time is enough, and keeps
		// this source within 4 of the shared -consul-max-conns.
		ccfg.MaxFetches = 1
		ccfg.ResolveInterval = o.consulResolveInterval
		ccfg.ResyncInterval = o.consulResyncInterval
		ccfg.Logger = log
		src, err := consul.New(ccfg)
		if err != nil {
			return nil, 2, err
		}
		replicas = dnsserver.NewReplicas(src, d.lbService, log)
		cfg.Balancers = replicas
	}
	ds, err := dnsserver.New(cfg)
	if err != nil {
		return nil, 2, err
	}
	pc, tl, err := dnsserver.Listen(d.listen)
	if err != nil {
		return nil, 1, fmt.Errorf("-dns-listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	run := func(f func(context.Context) error) {
		err := f(ctx)
		if err != nil {
			log.Error("DNS responder failed", "err", err)
			fail()
		}
		errs <- err
	}
	n := 1
	go run(func(ctx context.Context) error { return ds.Serve(ctx, pc, tl) })
	if replicas != nil {
		n++
		go run(replicas.Run)
	}
	log.Info("DNS responder", "addr", pc.LocalAddr().String(), "zone", ds.Zone(), "ttl", cfg.TTL, "child_policy", cfg.ChildPolicy)
	var once sync.Once
	var stopErr error
	return func() error {
		once.Do(func() {
			cancel()
			var all []error
			for range n {
				all = append(all, <-errs)
			}
			stopErr = errors.Join(all...)
		})
		return stopErr
	}, 0, nil
}
