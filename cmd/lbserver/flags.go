package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy"
)

// The flags are bound to the fields of a config tree: a flag given on the
// command line overrides the file (-config), and everything then goes
// through config.Validate, the one validation rule. groups orders -h.
var groups = []struct {
	title string
	flags []string
}{
	{"General", []string{"config", "validate", "print-config", "listen", "shutdown-timeout", "log-level", "log-format"}},
	{"Backends from Consul (CONSUL_HTTP_ADDR and the other CONSUL_* variables are honoured; flags win)", []string{
		"consul", "consul-token", "consul-token-file", "consul-dc", "consul-tag", "consul-stale", "consul-include-warning",
		"consul-wait", "consul-max-conns", "consul-max-fetches", "consul-resolve-interval", "consul-resync-interval",
		"consul-ca-file", "consul-cert-file", "consul-key-file", "consul-tls-server-name"}},
	{"Backends from a fixed list instead", []string{"static", "static-file"}},
	{"Registering this replica in Consul", []string{"register", "register-service", "register-id", "advertise", "check-interval", "drain-delay"}},
	{"Balancing (per service: the config file's services section)", []string{
		"policy", "service-policy", "max-list-entries", "hash-subset", "alias", "zone", "max-name-length",
		"client-stats-interval", "initial-request-timeout", "first-list-timeout", "watch-linger", "max-services", "max-stream-age", "transport",
		"lb-token-key-file"}},
	{"Load reports (ORCA) and overload drops", []string{"load-reports", "load-report-interval", "load-blackout", "overload-threshold", "max-drop-share",
		"orca-tls-ca", "orca-tls-cert", "orca-tls-key", "orca-tls-server-name"}},
	{"Latency outliers (least_load)", []string{"latency-outliers", "service-latency-outliers", "outlier-factor", "outlier-readmit-factor",
		"outlier-min-excess", "outlier-eject-after", "outlier-min-endpoints", "outlier-max-ejected-fraction", "outlier-base-ejection-time", "outlier-max-ejection-time",
		"outlier-probe-share"}},
	{"Rate limits", []string{"rate-limit", "max-rate-limit-drop-share", "max-client-rate-share", "max-client-call-rate"}},
	{"Limits on what clients can make the balancer hold", []string{
		"max-streams", "max-streams-per-ip", "max-streams-per-conn", "max-stream-rate-per-ip", "stream-burst-per-ip",
		"max-ignored-messages", "max-conns", "max-conns-per-ip", "send-timeout", "max-request-size"}},
	{"DNS responder", []string{"dns-listen", "dns-zone", "dns-ttl", "dns-lb-service", "dns-balancers", "dns-child-policy",
		"dns-allow", "dns-rate-limit", "dns-rate-burst", "dns-max-inflight", "dns-max-tcp-conns"}},
	{"TLS on the balancer listener", []string{"tls-cert", "tls-key", "tls-client-ca"}},
	{"Admin listener (metrics, status page, pprof, channelz)", []string{"admin-listen", "admin-pprof"}},
	{"xDS clients (xds:///service; see docs/xds.md and lbserver xds-bootstrap)", []string{"xds"}},
}

// command holds the flags that are not part of the config tree.
type command struct {
	configFile  string
	validate    bool
	printConfig bool
}

// bindFlags defines every flag on fs, bound to cfg's fields, whose
// current values are the defaults -h shows.
func bindFlags(fs *flag.FlagSet, cfg *config.Config, cmd *command) {
	fs.StringVar(&cmd.configFile, "config", "", "YAML config `file` (see docs/config.md); flags given on the command line override it; SIGHUP reloads it")
	fs.BoolVar(&cmd.validate, "validate", false, "check the configuration (file and flags), print every error, and exit: 0 if valid")
	fs.BoolVar(&cmd.printConfig, "print-config", false, "with -validate: print the effective configuration as YAML (secrets redacted)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address to serve the balancer on (`host:port`; port 0 picks one)")
	durVar(fs, &cfg.ShutdownTimeout, "shutdown-timeout", "bound on the whole shutdown on SIGINT or SIGTERM (deregistration, -drain-delay, ending streams, stopping DNS): what would exceed it is cut and logged; a second signal exits at once")
	fs.StringVar(&cfg.Log.Level, "log-level", cfg.Log.Level, "log level: debug, info, warn or error")
	fs.StringVar(&cfg.Log.Format, "log-format", cfg.Log.Format, "log format: text or json")

	c := &cfg.Consul
	fs.StringVar(&c.Address, "consul", c.Address, "Consul agent `address` (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500; https:// for TLS)")
	fs.StringVar(&c.Token, "consul-token", c.Token, "Consul ACL token (prefer -consul-token-file or $CONSUL_HTTP_TOKEN: flags are visible to other users)")
	fs.StringVar(&c.TokenFile, "consul-token-file", c.TokenFile, "`file` holding the Consul ACL token")
	fs.StringVar(&c.Datacenter, "consul-dc", c.Datacenter, "Consul datacenter (default: the agent's)")
	listVar(fs, &c.Tags, "consul-tag", "only use instances with all these `tags` (comma-separated)")
	fs.BoolVar(&c.Stale, "consul-stale", c.Stale, "allow stale reads from any Consul server")
	fs.BoolVar(&c.IncludeWarning, "consul-include-warning", c.IncludeWarning, "also use instances whose checks are warning (never critical)")
	durVar(fs, &c.Wait, "consul-wait", "how long one blocking query waits for a change")
	fs.IntVar(&c.MaxConns, "consul-max-conns", c.MaxConns, "most TCP connections to Consul, whatever the number of services and clients (Consul refuses more than 200 per client IP by default); at least -consul-max-fetches + 3, + 4 more with -dns-listen")
	fs.IntVar(&c.MaxFetches, "consul-max-fetches", c.MaxFetches, "most fetches of changed services running at once (besides 2 long polls that tell which services changed)")
	durVar(fs, &c.ResolveInterval, "consul-resolve-interval", "how often instance addresses that are hostnames are resolved again (a failed lookup keeps the last address)")
	durVar(fs, &c.ResyncInterval, "consul-resync-interval", "how often every watched service is fetched again, a safety net besides the change polls")
	fs.StringVar(&c.TLS.CAFile, "consul-ca-file", c.TLS.CAFile, "CA certificate `file` to verify Consul's HTTPS certificate (default $CONSUL_CACERT)")
	fs.StringVar(&c.TLS.CertFile, "consul-cert-file", c.TLS.CertFile, "client certificate `file` for Consul (default $CONSUL_CLIENT_CERT)")
	fs.StringVar(&c.TLS.KeyFile, "consul-key-file", c.TLS.KeyFile, "client key `file` for Consul (default $CONSUL_CLIENT_KEY)")
	fs.StringVar(&c.TLS.ServerName, "consul-tls-server-name", c.TLS.ServerName, "server `name` expected in Consul's certificate (default $CONSUL_TLS_SERVER_NAME)")

	fs.Var(staticSpec{&cfg.Static.Services}, "static", "fixed backends instead of Consul, as a `spec`: svc=ip:port[*weight],...;svc2=...")
	fs.StringVar(&cfg.Static.File, "static-file", cfg.Static.File, "fixed backends instead of Consul, from a JSON `file` (see README)")

	r := &cfg.Register
	fs.BoolVar(&r.Enabled, "register", r.Enabled, "register this balancer in Consul (with a gRPC health check) so clients and other tools find the replicas")
	fs.StringVar(&r.Service, "register-service", r.Service, "Consul `service` name the balancer replicas register under")
	fs.StringVar(&r.ID, "register-id", r.ID, "Consul service `ID` of this replica (default <service>-<host>-<port>)")
	fs.StringVar(&r.Advertise, "advertise", r.Advertise, "`host:port` registered in Consul (default: the listener's address, which must then have a concrete host)")
	durVar(fs, &r.CheckInterval, "check-interval", "interval of the Consul health check of this replica")
	durVar(fs, &r.DrainDelay, "drain-delay", "on SIGTERM with -register, how long to wait after deregistering before ending streams (cut to fit -shutdown-timeout)")

	b := &cfg.Balancer
	fs.StringVar(&b.Policy, "policy", b.Policy, "default balancing policy: "+strings.Join(policy.Names(), ", "))
	fs.Var(newPerService(cfg, func(s *config.Service, v string) error { s.Policy = v; return nil }), "service-policy",
		"per-service policies: `service=policy,...` (Consul meta \""+lbserver.PolicyMetaKey+"\" wins)")
	fs.IntVar(&b.MaxListEntries, "max-list-entries", b.MaxListEntries, "bound on the list length of weighted policies (weights are scaled down to fit; every endpoint keeps one entry)")
	fs.IntVar(&b.HashSubset, "hash-subset", b.HashSubset, "source_hash: how many endpoints each client IP gets")
	fs.Var(aliasFlag{cfg}, "alias", "map client names to services: `name=service,...` (name with or without port)")
	listVar(fs, &b.Zones, "zone", "DNS `zones` (comma-separated) whose names map to services: user-srv.lb.internal → user-srv")
	fs.IntVar(&b.MaxNameLength, "max-name-length", b.MaxNameLength, "longest name accepted in an initial request, in bytes")
	durVar(fs, &b.ClientStatsInterval, "client-stats-interval", "how often clients send ClientStats (0: never)")
	durVar(fs, &b.InitialRequestTimeout, "initial-request-timeout", "end streams that send no initial request within this time")
	durVar(fs, &b.FirstListTimeout, "first-list-timeout", "answer with fallback if discovery has no answer for a new service within this time")
	durVar(fs, &b.WatchLinger, "watch-linger", "keep watching a service this long after its last client left")
	fs.IntVar(&b.MaxServices, "max-services", b.MaxServices, "most services watched at once (streams for more end with ResourceExhausted)")
	durVar(fs, &b.MaxStreamAge, "max-stream-age", "end streams and connections after about this long (±10%), so clients re-spread over replicas (0: never)")
	fs.StringVar(&b.Transport, "transport", b.Transport, "what serves BalanceLoad connections: lookaside (the balancer's own HTTP/2 transport: about half the memory per client, changes reach many clients sooner) or grpc (grpc-go's server)")
	fs.StringVar(&b.LBTokenKeyFile, "lb-token-key-file", b.LBTokenKeyFile, "`file` holding a secret shared with the backends (backend -lb-token-key-file): lists carry keyed lb-tokens (HMAC-SHA256 of the instance ID), which outsiders cannot compute (16 to 4096 bytes; default: unkeyed tokens)")

	lr := &cfg.LoadReports
	fs.BoolVar(&lr.Enabled, "load-reports", lr.Enabled, "collect ORCA load reports from the backends of least_load services and of services with their own max_drop_share")
	durVar(fs, &lr.Interval, "load-report-interval", "ORCA report interval asked of backends (10ms to 1m)")
	durVar(fs, &lr.Blackout, "load-blackout", "least_load: how long a backend must report before its load counts")
	fs.Float64Var(&lr.OverloadThreshold, "overload-threshold", lr.OverloadThreshold, "utilization above which a backend is overloaded; calls are dropped when all are")
	fs.Float64Var(&lr.MaxDropShare, "max-drop-share", lr.MaxDropShare, "most calls dropped for overload by least_load services, as a share (0: never drop for overload; other services drop only with their own services.<name>.max_drop_share; rate limits have -max-rate-limit-drop-share)")
	lo := &lr.LatencyOutliers
	fs.BoolVar(&lo.Enabled, "latency-outliers", lo.Enabled, "least_load: give a backend much slower than its peers (mean calls in flight / QPS, from ORCA) a probe share of the calls instead of its load weight, in every service without its own -service-latency-outliers")
	fs.Var(newPerService(cfg, func(s *config.Service, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		s.LatencyOutliers = &b
		return nil
	}), "service-latency-outliers", "per-service latency outlier detection under least_load: `service=true|false,...` (default -latency-outliers)")
	fs.Float64Var(&lo.Factor, "outlier-factor", lo.Factor, "eject a backend whose latency is above this many times the median of its service's backends, in (1, 1000]")
	fs.Float64Var(&lo.ReadmitFactor, "outlier-readmit-factor", lo.ReadmitFactor, "readmit an ejected backend once its latency is at most this many times the median, in (1, -outlier-factor]")
	durVar(fs, &lo.MinExcess, "outlier-min-excess", "eject only a backend at least this much slower than the median")
	durVar(fs, &lo.EjectAfter, "outlier-eject-after", "eject a backend only once its latency has stayed above the line this long (0: at once)")
	fs.IntVar(&lo.MinEndpoints, "outlier-min-endpoints", lo.MinEndpoints, "backends with a known latency needed for any ejection (at least 3)")
	fs.Float64Var(&lo.MaxEjectedFraction, "outlier-max-ejected-fraction", lo.MaxEjectedFraction, "most of a service's backends ejected at once, as a share in (0, 1] (at least one)")
	durVar(fs, &lo.BaseEjectionTime, "outlier-base-ejection-time", "least time a backend stays ejected; ejected again soon after its readmission, twice as long as the last time")
	durVar(fs, &lo.MaxEjectionTime, "outlier-max-ejection-time", "most time a backend stays ejected once its latency is back")
	fs.Float64Var(&lo.ProbeShare, "outlier-probe-share", lo.ProbeShare, "share of its service's calls an ejected backend gets, in (0, 0.1] (at most a tenth of an even share)")
	fs.StringVar(&lr.TLS.CAFile, "orca-tls-ca", lr.TLS.CAFile, "CA certificate `file`: ORCA streams to backends use TLS and verify the backends' certificates with it")
	fs.StringVar(&lr.TLS.CertFile, "orca-tls-cert", lr.TLS.CertFile, "client certificate `file` for ORCA streams (backends requiring mTLS)")
	fs.StringVar(&lr.TLS.KeyFile, "orca-tls-key", lr.TLS.KeyFile, "client key `file` for ORCA streams")
	fs.StringVar(&lr.TLS.ServerName, "orca-tls-server-name", lr.TLS.ServerName, "server `name` expected in the backends' certificates (default: the host of each backend's address)")

	rl := &cfg.RateLimits
	fs.Var(newPerService(cfg, func(s *config.Service, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number of calls per second", v)
		}
		s.RateLimit = f
		return nil
	}), "rate-limit", "per-service call rate limits over all clients: `service=calls/s,...` (excess calls dropped by clients; measured from ClientStats)")
	fs.Float64Var(&rl.MaxDropShare, "max-rate-limit-drop-share", rl.MaxDropShare, "most calls dropped to keep a service under its -rate-limit, as a share in (0, 1]")
	fs.Float64Var(&rl.MaxClientRateShare, "max-client-rate-share", rl.MaxClientRateShare, "most the streams of one client address (IPv4 address, IPv6 /64) count for in a rate-limited service's measured rate, as a share of its -rate-limit in (0, 100]: N addresses raise it by at most N × share × 1.5 × limit (with a 10s -client-stats-interval)")
	fs.Float64Var(&rl.MaxClientCallRate, "max-client-call-rate", rl.MaxClientCallRate, "most calls per second one client stream is believed to start; ClientStats claiming more are clamped (and counted as bad)")

	l := &cfg.Limits
	fs.IntVar(&l.MaxStreams, "max-streams", l.MaxStreams, "most balancer streams open at once; more end with ResourceExhausted (clients retry with backoff)")
	fs.IntVar(&l.MaxStreamsPerIP, "max-streams-per-ip", l.MaxStreamsPerIP, "most streams open at once from one client IP address (clients behind one NAT share it)")
	fs.IntVar(&l.MaxStreamsPerConn, "max-streams-per-conn", l.MaxStreamsPerConn, "most streams open at once on one client connection (a grpc-go client uses one)")
	fs.Float64Var(&l.MaxStreamRatePerIP, "max-stream-rate-per-ip", l.MaxStreamRatePerIP, "most new streams per second from one client address (IPv4 address, IPv6 /64), -stream-burst-per-ip at once; more end with ResourceExhausted before any handler runs (clients behind one NAT share it; 0: off)")
	fs.IntVar(&l.StreamBurstPerIP, "stream-burst-per-ip", l.StreamBurstPerIP, "new streams one client address may open at once, beyond -max-stream-rate-per-ip")
	fs.IntVar(&l.MaxIgnoredMessages, "max-ignored-messages", l.MaxIgnoredMessages, "end a stream (ResourceExhausted) with more than this many ignored messages within a minute: ClientStats more often than twice per -client-stats-interval or with negative counts, other messages after the initial request (0: off)")
	fs.IntVar(&l.MaxConns, "max-conns", l.MaxConns, "most client connections open at once; more are closed as soon as accepted")
	fs.IntVar(&l.MaxConnsPerIP, "max-conns-per-ip", l.MaxConnsPerIP, "most client connections open at once from one IP address; more are closed as soon as accepted")
	durVar(fs, &l.SendTimeout, "send-timeout", "end a stream whose client does not read its lists within this time (ResourceExhausted)")
	fs.IntVar(&l.MaxRequestSize, "max-request-size", l.MaxRequestSize, "largest message a client may send, in `bytes`; a larger one ends its stream (ResourceExhausted) unread")

	d := &cfg.DNS
	fs.StringVar(&d.Listen, "dns-listen", d.Listen, "answer DNS for -dns-zone on this `host:port`, UDP and TCP (off by default): clients dial dns://<host:port>/<service>.<zone>:<port> with no config")
	fs.StringVar(&d.Zone, "dns-zone", d.Zone, "the DNS `zone` answered with -dns-listen; also added to -zone")
	durVar(fs, &d.TTL, "dns-ttl", "TTL of DNS records and of negative DNS answers (whole seconds, 1s to 1h)")
	fs.StringVar(&d.LBService, "dns-lb-service", d.LBService, "Consul `service` of the balancer replicas the DNS SRV records list (default: -register-service)")
	listVar(fs, &d.Balancers, "dns-balancers", "fixed balancer replicas for the DNS SRV records instead of Consul: `ip:port,...` (default with -static: this replica's address)")
	fs.Var(newChildPolicyFlag(cfg), "dns-child-policy", "grpclb child policy in the DNS TXT service config: round_robin or pick_first, per service with `service=policy` (comma-separated)")
	listVar(fs, &d.Allow, "dns-allow", "source `networks` the DNS responder answers (CIDR prefixes or addresses, comma-separated); UDP questions from elsewhere are dropped and TCP connections closed. Link-local is not in the default; 0.0.0.0/0,::/0 answers everyone")
	fs.Float64Var(&d.RateLimit, "dns-rate-limit", d.RateLimit, "UDP DNS answers per second per source (an IPv4 address or an IPv6 /64); over it one question in two gets an empty truncated answer (clients retry over TCP, not rate limited) and the others none")
	fs.IntVar(&d.RateBurst, "dns-rate-burst", d.RateBurst, "burst of -dns-rate-limit: UDP DNS answers a source may get at once")
	fs.IntVar(&d.MaxInflight, "dns-max-inflight", d.MaxInflight, "UDP DNS questions answered at once; more are dropped")
	fs.IntVar(&d.MaxTCPConns, "dns-max-tcp-conns", d.MaxTCPConns, "open DNS TCP connections; more are closed at once")

	t := &cfg.TLS
	fs.StringVar(&t.CertFile, "tls-cert", t.CertFile, "certificate `file` (PEM, with its chain): the balancer listener serves TLS; re-read on change and on SIGHUP")
	fs.StringVar(&t.KeyFile, "tls-key", t.KeyFile, "private key `file` (PEM) of -tls-cert")
	fs.StringVar(&t.ClientCAFile, "tls-client-ca", t.ClientCAFile, "CA certificates `file` (PEM): clients must present a certificate it signed (mTLS)")

	a := &cfg.Admin
	fs.StringVar(&a.Listen, "admin-listen", a.Listen, "serve /metrics (Prometheus), the status page (/), /status.json and channelz on this `host:port` (off by default; keep it on loopback or a private network)")
	fs.BoolVar(&a.Pprof, "admin-pprof", a.Pprof, "also serve Go's /debug/pprof/ on -admin-listen")

	fs.BoolVar(&cfg.XDS.Enabled, "xds", cfg.XDS.Enabled, "also serve gRPC's xDS clients on -listen (ADS and LRS, with the listener's TLS): they dial xds:///<service> with a bootstrap naming this balancer (-xds=false: grpclb only)")
}

// usage prints -h: the flags by group.
func usage(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprint(w, `Usage: lbserver [-config FILE] [flags]

Lookaside, a grpclb balancer. Serves grpc.lb.v1.LoadBalancer/BalanceLoad on
-listen. Backends come from Consul or, when -static or -static-file is given,
from a fixed list. Everything can be set in one YAML file (-config; see
docs/config.md); a flag given on the command line overrides the file.
-validate checks a configuration and exits; SIGHUP reloads the file's
per-service settings, limits and certificates without dropping streams (a bad
file is refused and logged, and the running configuration stays).

A client's name ("user-srv:50051") maps to the service "user-srv": the port
(and a -zone suffix) is stripped, then an alias may rename it. What one client
can make the balancer hold is bounded (-max-streams*, -max-conns*, ...), and
names Consul does not list cost no watch. The replica reports NOT_SERVING until
it has read Consul once.

xDS clients (xds:///user-srv) are served on -listen too (-xds);
'lbserver xds-bootstrap -server HOST:PORT' prints the bootstrap they read.
`)
	for _, g := range groups {
		fmt.Fprintf(w, "\n%s:\n", g.title)
		for _, name := range g.flags {
			f := fs.Lookup(name)
			if f == nil {
				continue
			}
			sub := flag.NewFlagSet("", flag.ContinueOnError)
			sub.SetOutput(w)
			sub.Var(f.Value, f.Name, f.Usage)
			sub.Lookup(f.Name).DefValue = f.DefValue
			sub.PrintDefaults()
		}
	}
}

// durVar binds a config.Duration to a flag.
func durVar(fs *flag.FlagSet, d *config.Duration, name, usage string) {
	fs.Var((*durationValue)(d), name, usage)
}

type durationValue config.Duration

func (d *durationValue) String() string {
	if d == nil {
		return "0s"
	}
	return time.Duration(*d).String()
}

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 250ms, 15s or 1m")
	}
	*d = durationValue(v)
	return nil
}

// listVar binds a comma-separated list to a flag; given, it replaces the
// file's list.
func listVar(fs *flag.FlagSet, l *[]string, name, usage string) {
	fs.Var(listValue{l}, name, usage)
}

type listValue struct{ l *[]string }

func (v listValue) String() string {
	if v.l == nil {
		return ""
	}
	return strings.Join(*v.l, ",")
}

func (v listValue) Set(s string) error {
	*v.l = nil
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*v.l = append(*v.l, item)
		}
	}
	return nil
}

// editService applies f to cfg's section of service name, creating it.
func editService(cfg *config.Config, name string, f func(*config.Service) error) error {
	if cfg.Services == nil {
		cfg.Services = map[string]config.Service{}
	}
	s := cfg.Services[name]
	if err := f(&s); err != nil {
		return err
	}
	cfg.Services[name] = s
	return nil
}

// eachPair calls f for each "key=value" of a comma-separated spec.
func eachPair(spec string, f func(key, value string) error) error {
	for _, kv := range strings.Split(spec, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if k, v = strings.TrimSpace(k), strings.TrimSpace(v); !ok || k == "" || v == "" {
			return fmt.Errorf("%q: want key=value", kv)
		}
		if err := f(k, v); err != nil {
			return fmt.Errorf("%q: %w", kv, err)
		}
	}
	return nil
}

// perService sets one field of services' sections from "service=value,...".
// A service given twice (in one value or in two -flag uses) is an error,
// never the last one silently.
type perService struct {
	cfg  *config.Config
	set  func(s *config.Service, v string) error
	seen map[string]bool
}

func newPerService(cfg *config.Config, set func(s *config.Service, v string) error) perService {
	return perService{cfg: cfg, set: set, seen: map[string]bool{}}
}

func (p perService) String() string { return "" }

func (p perService) Set(spec string) error {
	return eachPair(spec, func(svc, v string) error {
		key := strings.ToLower(svc)
		if p.seen[key] {
			return fmt.Errorf("service %q is given twice", svc)
		}
		p.seen[key] = true
		return editService(p.cfg, svc, func(s *config.Service) error { return p.set(s, v) })
	})
}

// aliasFlag adds "name=service,..." to the services' aliases.
type aliasFlag struct{ cfg *config.Config }

func (aliasFlag) String() string { return "" }

func (a aliasFlag) Set(spec string) error {
	return eachPair(spec, func(name, svc string) error {
		return editService(a.cfg, svc, func(s *config.Service) error {
			s.Aliases = append(s.Aliases, name)
			return nil
		})
	})
}

// childPolicyFlag sets the default child policy ("round_robin") and
// per-service ones ("orders=pick_first", as perService does).
type childPolicyFlag struct{ perService }

func newChildPolicyFlag(cfg *config.Config) childPolicyFlag {
	return childPolicyFlag{newPerService(cfg, func(s *config.Service, v string) error { s.ChildPolicy = v; return nil })}
}

func (c childPolicyFlag) String() string {
	if c.cfg == nil {
		return ""
	}
	return c.cfg.Balancer.ChildPolicy
}

func (c childPolicyFlag) Set(spec string) error {
	var pairs []string
	for _, item := range strings.Split(spec, ",") {
		switch item = strings.TrimSpace(item); {
		case item == "":
		case !strings.Contains(item, "="):
			c.cfg.Balancer.ChildPolicy = item
		default:
			pairs = append(pairs, item)
		}
	}
	return c.perService.Set(strings.Join(pairs, ","))
}

// staticSpec sets static.services from "svc=ip:port[*w],...;svc2=...".
type staticSpec struct{ m *map[string][]string }

func (staticSpec) String() string { return "" }

func (s staticSpec) Set(spec string) error {
	*s.m = map[string][]string{}
	for _, part := range strings.Split(spec, ";") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		svc, list, ok := strings.Cut(part, "=")
		if svc = strings.TrimSpace(svc); !ok || svc == "" {
			return fmt.Errorf("%q: want service=ip:port[*weight],...", part)
		}
		if _, dup := (*s.m)[svc]; dup {
			return fmt.Errorf("service %q is given twice", svc)
		}
		for _, a := range strings.Split(list, ",") {
			if a = strings.TrimSpace(a); a != "" {
				(*s.m)[svc] = append((*s.m)[svc], a)
			}
		}
	}
	return nil
}
