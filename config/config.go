package config

// Config is the whole configuration of one balancer replica: the file's
// tree, after defaults and before flags. Start from Default; Parse and Load
// decode a file on top of it; Validate checks every field.
//
// The zero value of a field inside a service section means "inherit the
// balancer-wide setting"; elsewhere fields hold their defaults after
// Default, and a value the file sets replaces it.
//
// Each field's doc says whether a running replica applies a change on
// SIGHUP ("Reloadable") or needs a restart ("Restart"); Reloadable
// compares two configs by these rules. docs/config.md lists every field.
type Config struct {
	// Listen is the balancer's address (host:port; port 0 picks one).
	// Default ":7000". Restart.
	Listen string `yaml:"listen"`
	// ShutdownTimeout bounds the whole shutdown on SIGINT or SIGTERM.
	// Default 15s; positive. Restart.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	Log             Log      `yaml:"log"`
	// Consul is where backends come from, unless Static lists them.
	Consul Consul `yaml:"consul"`
	// Static lists fixed backends instead of Consul.
	Static   Static   `yaml:"static"`
	Register Register `yaml:"register"`
	// Balancer holds the defaults of every service and how client names
	// map to services.
	Balancer    Balancer    `yaml:"balancer"`
	LoadReports LoadReports `yaml:"load_reports"`
	RateLimits  RateLimits  `yaml:"rate_limits"`
	Limits      Limits      `yaml:"limits"`
	DNS         DNS         `yaml:"dns"`
	// TLS is the balancer listener's TLS (and mTLS with ClientCAFile).
	TLS   ServerTLS `yaml:"tls"`
	Admin Admin     `yaml:"admin"`
	// XDS serves gRPC's xDS clients on the balancer listener.
	XDS XDS `yaml:"xds"`
	// Services holds per-service settings, by Consul service name (case is
	// ignored; no port and no "@tag" filter: a service's settings apply to
	// every tag filter of it, and Service.Tags makes clients naming it get
	// only tagged instances). Reloadable.
	Services map[string]Service `yaml:"services"`
}

// Log configures the process's logs.
type Log struct {
	// Level is debug, info, warn or error. Default info. Reloadable.
	Level string `yaml:"level"`
	// Format is text or json. Default text. Restart.
	Format string `yaml:"format"`
}

// Consul configures the Consul client and how services are watched. Empty
// fields fall back to the standard CONSUL_* environment variables. Every
// field: Restart.
type Consul struct {
	// Address of the agent: host:port, http(s)://host[:port] or
	// unix:///path. Default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `yaml:"address"`
	// Token is the ACL token (redacted by Marshal). Prefer TokenFile or
	// $CONSUL_HTTP_TOKEN. Exclusive with TokenFile.
	Token string `yaml:"token"`
	// TokenFile is a file holding the ACL token; must be readable.
	TokenFile string `yaml:"token_file"`
	// Datacenter to query. Default: the agent's.
	Datacenter string `yaml:"datacenter"`
	// Tags: only instances with all these tags are used. Default none.
	Tags []string `yaml:"tags"`
	// Stale allows stale reads from any Consul server. Default false.
	Stale bool `yaml:"stale"`
	// IncludeWarning also uses instances whose checks are warning.
	// Default false.
	IncludeWarning bool `yaml:"include_warning"`
	// Wait is how long one blocking query waits. Default 1m; 1s to 10m.
	Wait Duration `yaml:"wait"`
	// MaxConns bounds the TCP connections to Consul. Default 16; 1 to
	// 1024, and at least consul.ConnsNeeded(MaxFetches) (+4 when the DNS
	// responder watches the replicas in Consul).
	MaxConns int `yaml:"max_conns"`
	// MaxFetches bounds the fetches of changed services running at once.
	// Default 8; 1 to 256.
	MaxFetches int `yaml:"max_fetches"`
	// ResolveInterval is how often hostnames of instances are resolved
	// again. Default 30s; 1s to 1h.
	ResolveInterval Duration `yaml:"resolve_interval"`
	// ResyncInterval is how often every watched service is fetched again.
	// Default 5m; 10s to 24h.
	ResyncInterval Duration `yaml:"resync_interval"`
	// TLS toward Consul (besides CONSUL_HTTP_SSL and the other CONSUL_*
	// variables).
	TLS ClientTLS `yaml:"tls"`
}

// Static lists fixed backends: a JSON File (see README) or Services here;
// not both. With static backends, Consul's watch settings are rejected,
// and its connection settings too unless Register is enabled. Restart.
type Static struct {
	// File is a JSON file of services (discovery/static.LoadFile).
	File string `yaml:"file"`
	// Services maps a service to its instances, "ip:port" or
	// "ip:port*weight".
	Services map[string][]string `yaml:"services"`
}

// Register makes this replica findable in Consul. Every field: Restart.
type Register struct {
	// Enabled registers the replica, with a gRPC health check. Default
	// false.
	Enabled bool `yaml:"enabled"`
	// Service is the Consul service of the replicas. Default "lookaside".
	Service string `yaml:"service"`
	// ID of this replica. Default <service>-<host>-<port>.
	ID string `yaml:"id"`
	// Advertise is the host:port registered. Default: the listener's
	// address, which must then have a concrete host.
	Advertise string `yaml:"advertise"`
	// CheckInterval of the Consul health check. Default 2s; positive.
	CheckInterval Duration `yaml:"check_interval"`
	// DrainDelay: on SIGTERM, how long to wait after deregistering before
	// ending streams (cut to fit ShutdownTimeout). Default 2s; not
	// negative.
	DrainDelay Duration `yaml:"drain_delay"`
}

// Balancer holds balancer-wide settings and the defaults of every service.
type Balancer struct {
	// Policy is the default balancing policy (policy.Names). Default
	// round_robin. Reloadable.
	Policy string `yaml:"policy"`
	// MaxListEntries bounds the lists of weighted policies. Default 512;
	// 1 to 16384. Reloadable.
	MaxListEntries int `yaml:"max_list_entries"`
	// HashSubset is how many endpoints source_hash gives each client.
	// Default 1; 1 to MaxListEntries. Reloadable.
	HashSubset int `yaml:"hash_subset"`
	// ChildPolicy is the grpclb child policy clients are told to use
	// (DNS TXT) and assumed to use (calls per endpoint on the status page):
	// round_robin or pick_first. Default round_robin. Reloadable, but with
	// the DNS responder on, its TXT records change on restart only.
	ChildPolicy string `yaml:"child_policy"`
	// Zones are DNS zones whose names map to services
	// (user-srv.lb.internal → user-srv); dns.zone is added when the DNS
	// responder is on. Reloadable.
	Zones []string `yaml:"zones"`
	// MaxNameLength is the longest name accepted in an initial request.
	// Default 255; 1 to 1024. Restart.
	MaxNameLength int `yaml:"max_name_length"`
	// ClientStatsInterval is how often clients send ClientStats. Default
	// 10s; 0 (never) or at least 1s. Restart.
	ClientStatsInterval Duration `yaml:"client_stats_interval"`
	// InitialRequestTimeout ends streams that send no initial request.
	// Default 10s; at least 100ms. Restart.
	InitialRequestTimeout Duration `yaml:"initial_request_timeout"`
	// FirstListTimeout: fallback if discovery has no answer for a new
	// service within it. Default 5s; (0, 1m]. Restart.
	FirstListTimeout Duration `yaml:"first_list_timeout"`
	// WatchLinger keeps watching a service after its last client left.
	// Default 1m; not negative. Restart.
	WatchLinger Duration `yaml:"watch_linger"`
	// MaxServices bounds the services watched at once. Default 10000; at
	// least 1. Restart.
	MaxServices int `yaml:"max_services"`
	// MaxStreamAge ends streams after about this long. Default 30m; 0
	// (never) or at least 10s. Restart.
	MaxStreamAge Duration `yaml:"max_stream_age"`
	// Transport serves BalanceLoad connections: lookaside (the balancer's
	// own HTTP/2 transport, about half the memory per client) or grpc
	// (grpc-go's server). Default lookaside. Restart.
	Transport string `yaml:"transport"`
	// LBTokenKeyFile holds a secret shared with the backends for keyed
	// lb-tokens (16 to 4096 bytes). Default none. Restart.
	LBTokenKeyFile string `yaml:"lb_token_key_file"`
}

// LoadReports configures ORCA load collection and overload drops.
type LoadReports struct {
	// Enabled collects ORCA reports from backends, for the services whose
	// policy is least_load or that set their own MaxDropShare. Default
	// true. Restart.
	Enabled bool `yaml:"enabled"`
	// Interval asked of backends. Default 1s; 10ms to 1m (rejected
	// outside, never clamped). Restart.
	Interval Duration `yaml:"interval"`
	// Blackout: how long a backend must report before its load counts.
	// Default 10s; not negative. Reloadable.
	Blackout Duration `yaml:"blackout"`
	// OverloadThreshold is the utilization above which a backend is
	// overloaded. Default 0.9; positive. Reloadable.
	OverloadThreshold float64 `yaml:"overload_threshold"`
	// MaxDropShare bounds overload drops of least_load services (other
	// services drop only with their own Service.MaxDropShare). Default 0.5;
	// 0 (never drop) to 0.99. Reloadable.
	MaxDropShare float64 `yaml:"max_drop_share"`
	// LatencyOutliers configures latency outlier detection for least_load
	// services. Reloadable.
	LatencyOutliers LatencyOutliers `yaml:"latency_outliers"`
	// TLS of the ORCA streams to backends. Restart.
	TLS ClientTLS `yaml:"tls"`
}

// LatencyOutliers configures how least_load treats a backend much slower
// than its peers: it gets a probe share of the calls instead of its load
// weight (see loadweight.OutlierConfig, whose defaults these are). Every
// field: Reloadable.
type LatencyOutliers struct {
	// Enabled detects outliers in every least_load service that does not
	// set services.<name>.latency_outliers. Default true.
	Enabled bool `yaml:"enabled"`
	// Factor: a backend is ejected above factor × the median latency of
	// the service's backends. Default 2; (1, 1000].
	Factor float64 `yaml:"factor"`
	// ReadmitFactor: readmitted at or under readmit_factor × the median.
	// Default 1.5; (1, factor].
	ReadmitFactor float64 `yaml:"readmit_factor"`
	// MinExcess: ejected only that much above the median too. Default
	// 1ms; not negative.
	MinExcess Duration `yaml:"min_excess"`
	// EjectAfter: ejected once above the line for this long. Default 2s;
	// not negative (0: at once).
	EjectAfter Duration `yaml:"eject_after"`
	// MinEndpoints with a known latency for any ejection. Default 3; at
	// least 3.
	MinEndpoints int `yaml:"min_endpoints"`
	// MaxEjectedFraction of a service's backends ejected at once (at
	// least one). Default 0.5; (0, 1].
	MaxEjectedFraction float64 `yaml:"max_ejected_fraction"`
	// BaseEjectionTime is the least time a backend stays ejected; ejected
	// again soon after its readmission, twice as long as the last time.
	// Default 5s; positive.
	BaseEjectionTime Duration `yaml:"base_ejection_time"`
	// MaxEjectionTime caps the ejection time. Default 5m; at least
	// base_ejection_time.
	MaxEjectionTime Duration `yaml:"max_ejection_time"`
	// ProbeShare of the service's calls each ejected backend gets (at
	// most a tenth of an even share). Default 0.005; (0, 0.1].
	ProbeShare float64 `yaml:"probe_share"`
}

// RateLimits configures how per-service rate limits are enforced. Every
// field: Reloadable.
type RateLimits struct {
	// MaxDropShare bounds rate-limit drops. Default 0.9; (0, 1].
	MaxDropShare float64 `yaml:"max_drop_share"`
	// MaxClientRateShare caps what one client address counts for in a
	// service's measured rate, as a share of its limit. Default 0.5;
	// (0, 100].
	MaxClientRateShare float64 `yaml:"max_client_rate_share"`
	// MaxClientCallRate is the most calls per second one stream is
	// believed to start. Default 100000; positive.
	MaxClientCallRate float64 `yaml:"max_client_call_rate"`
}

// Limits bound what clients can make the balancer hold. Reloadable but
// MaxRequestSize (Restart); MaxStreamsPerConn may be lowered, not raised,
// without a restart.
type Limits struct {
	// MaxStreams: default 50000; at least 1.
	MaxStreams int `yaml:"max_streams"`
	// MaxStreamsPerIP: default 1000; 1 to MaxStreams.
	MaxStreamsPerIP int `yaml:"max_streams_per_ip"`
	// MaxStreamsPerConn: default 100; 1 to MaxStreamsPerIP.
	MaxStreamsPerConn int `yaml:"max_streams_per_conn"`
	// MaxStreamRatePerIP: new streams per second per client address.
	// Default 100; 0 (off) to 1e6.
	MaxStreamRatePerIP float64 `yaml:"max_stream_rate_per_ip"`
	// StreamBurstPerIP: default 200; 1 to 2^20 (when the rate is on).
	StreamBurstPerIP int `yaml:"stream_burst_per_ip"`
	// MaxIgnoredMessages per stream and minute. Default 100; 0 (off) to
	// 2^20.
	MaxIgnoredMessages int `yaml:"max_ignored_messages"`
	// MaxConns: default 20000; at least 1.
	MaxConns int `yaml:"max_conns"`
	// MaxConnsPerIP: default 500; 1 to MaxConns.
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// SendTimeout: default 30s; 1s to 10m.
	SendTimeout Duration `yaml:"send_timeout"`
	// MaxRequestSize in bytes: default 65536; 4096 to 4194304. Restart.
	MaxRequestSize int `yaml:"max_request_size"`
}

// DNS configures the built-in DNS responder, off while Listen is empty.
// Every field: Restart.
type DNS struct {
	// Listen is the host:port answered on, UDP and TCP. Default "" (off).
	Listen string `yaml:"listen"`
	// Zone answered; also a balancer zone. Default lb.internal.
	Zone string `yaml:"zone"`
	// TTL of records and negative answers. Default 5s; whole seconds,
	// 1s to 1h.
	TTL Duration `yaml:"ttl"`
	// LBService is the Consul service of the replicas listed in SRV
	// records. Default: register.service.
	LBService string `yaml:"lb_service"`
	// Balancers are fixed replicas (IP:port) for the SRV records instead
	// of Consul. Default: from Consul, or with static backends this
	// replica.
	Balancers []string `yaml:"balancers"`
	// Allow lists the source networks answered (CIDR or address).
	// Default loopback and private ranges; not empty.
	Allow []string `yaml:"allow"`
	// RateLimit: UDP answers per second per source. Default 200; positive.
	RateLimit float64 `yaml:"rate_limit"`
	// RateBurst: default 400; at least 1.
	RateBurst int `yaml:"rate_burst"`
	// MaxInflight: UDP questions answered at once. Default 256; at least 1.
	MaxInflight int `yaml:"max_inflight"`
	// MaxTCPConns: open DNS TCP connections. Default 128; at least 1.
	MaxTCPConns int `yaml:"max_tcp_conns"`
}

// ServerTLS is a listener's TLS: a certificate, and with ClientCAFile,
// clients must present a certificate it signed (mTLS). The files'
// contents are read again on SIGHUP and when they change (a rotated
// certificate needs no restart); the paths: Restart. CertFile and KeyFile
// are set together or not at all; ClientCAFile needs them.
type ServerTLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// ClientTLS is TLS toward a server (Consul, backends' ORCA service). The
// other fields need Enabled; CertFile and KeyFile (a client certificate)
// go together.
type ClientTLS struct {
	Enabled            bool   `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Admin configures the admin listener: metrics, status page, pprof,
// channelz. Off while Listen is empty. Restart.
type Admin struct {
	// Listen is the admin listener's host:port (keep it on loopback or a
	// management network). Default "" (off).
	Listen string `yaml:"listen"`
	// Pprof serves /debug/pprof/ there. Default false; needs Listen.
	Pprof bool `yaml:"pprof"`
}

// XDS configures the xDS face: the Aggregated Discovery Service (State
// of the World) and the Load Reporting Service, served on Listen with its
// TLS, from the same watches and policies as grpclb (docs/xds.md). Restart.
type XDS struct {
	// Enabled serves xDS on the balancer listener. Default true.
	Enabled bool `yaml:"enabled"`
}

// Service holds one service's settings; zero fields (and absent keys)
// inherit Balancer's, LoadReports' and RateLimits' values. Reloadable.
type Service struct {
	// Policy of the service (Consul meta "lb-policy" wins). "": the
	// balancer's.
	Policy string `yaml:"policy,omitempty"`
	// MaxListEntries and HashSubset: 0 inherits the balancer's.
	MaxListEntries int `yaml:"max_list_entries,omitempty"`
	HashSubset     int `yaml:"hash_subset,omitempty"`
	// Aliases are client names that map to this service ("users",
	// "users:443"); case is ignored. An alias belongs to one service and
	// is not a service's own name.
	Aliases []string `yaml:"aliases,omitempty"`
	// Tags, when set, make clients naming this service (or an alias) get
	// only instances with all these tags.
	Tags []string `yaml:"tags,omitempty"`
	// RateLimit caps the service's calls per second over all clients
	// (0: no limit). Needs balancer.client_stats_interval above 0.
	RateLimit float64 `yaml:"rate_limit,omitempty"`
	// MaxDropShare bounds overload drops, in (0, 0.99] (absent:
	// load_reports.max_drop_share under least_load, no overload drops
	// under another policy). Setting it makes the service collect load
	// reports whatever its policy.
	MaxDropShare *float64 `yaml:"max_drop_share,omitempty"`
	// MaxRateLimitDropShare bounds rate-limit drops, in (0, 1] (absent:
	// rate_limits.max_drop_share).
	MaxRateLimitDropShare *float64 `yaml:"max_rate_limit_drop_share,omitempty"`
	// ChildPolicy: round_robin or pick_first; "": the balancer's.
	ChildPolicy string `yaml:"child_policy,omitempty"`
	// LatencyOutliers turns latency outlier detection on or off for the
	// service under least_load (absent:
	// load_reports.latency_outliers.enabled, true by default). It has no
	// effect under another policy.
	LatencyOutliers *bool `yaml:"latency_outliers,omitempty"`
}
