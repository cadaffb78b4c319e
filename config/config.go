package config

// Config is the whole configuration of one balancer replica: the file's
// tree, after defaults and before flags. Start from Default; Parse and Load
// decode a file on top of it; Validate checks every field.
//
// The zero value of a field inside a service section means "inherit the
// balancer-wide setting"; elsewhere fields hold their defaults after
// Default, and a value the file sets replaces it.
type Config struct {
	// Listen is the balancer's address (host:port; port 0 picks one).
	Listen string `yaml:"listen"`
	// ShutdownTimeout bounds the whole shutdown on SIGINT or SIGTERM.
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
	// Services holds per-service settings, by Consul service name (case is
	// ignored; an "@tag,tag" suffix selects a tag-filtered variant).
	Services map[string]Service `yaml:"services"`
}

// Log configures the process's logs.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn or error
	Format string `yaml:"format"` // text or json
}

// Consul configures the Consul client and how services are watched. Empty
// fields fall back to the standard CONSUL_* environment variables.
type Consul struct {
	Address        string   `yaml:"address"`
	Token          string   `yaml:"token"`
	TokenFile      string   `yaml:"token_file"`
	Datacenter     string   `yaml:"datacenter"`
	Tags           []string `yaml:"tags"`
	Stale          bool     `yaml:"stale"`
	IncludeWarning bool     `yaml:"include_warning"`
	Wait           Duration `yaml:"wait"`
	MaxConns       int      `yaml:"max_conns"`
	MaxFetches     int      `yaml:"max_fetches"`
	// ResolveInterval is how often hostnames of instances are resolved again.
	ResolveInterval Duration `yaml:"resolve_interval"`
	// ResyncInterval is how often every watched service is fetched again.
	ResyncInterval Duration  `yaml:"resync_interval"`
	TLS            ClientTLS `yaml:"tls"`
}

// Static lists fixed backends: a JSON File (see README) or Services here.
type Static struct {
	File string `yaml:"file"`
	// Services maps a service to its instances, "ip:port" or
	// "ip:port*weight".
	Services map[string][]string `yaml:"services"`
}

// Register makes this replica findable in Consul.
type Register struct {
	Enabled       bool     `yaml:"enabled"`
	Service       string   `yaml:"service"`
	ID            string   `yaml:"id"`
	Advertise     string   `yaml:"advertise"`
	CheckInterval Duration `yaml:"check_interval"`
	DrainDelay    Duration `yaml:"drain_delay"`
}

// Balancer holds balancer-wide settings and the defaults of every service.
type Balancer struct {
	Policy         string `yaml:"policy"`
	MaxListEntries int    `yaml:"max_list_entries"`
	HashSubset     int    `yaml:"hash_subset"`
	// ChildPolicy is the grpclb child policy clients are told to use
	// (DNS TXT) and assumed to use (calls per endpoint on the status page).
	ChildPolicy           string   `yaml:"child_policy"`
	Zones                 []string `yaml:"zones"`
	MaxNameLength         int      `yaml:"max_name_length"`
	ClientStatsInterval   Duration `yaml:"client_stats_interval"`
	InitialRequestTimeout Duration `yaml:"initial_request_timeout"`
	FirstListTimeout      Duration `yaml:"first_list_timeout"`
	WatchLinger           Duration `yaml:"watch_linger"`
	MaxServices           int      `yaml:"max_services"`
	MaxStreamAge          Duration `yaml:"max_stream_age"`
	LBTokenKeyFile        string   `yaml:"lb_token_key_file"`
}

// LoadReports configures ORCA load collection and overload drops.
type LoadReports struct {
	Enabled           bool      `yaml:"enabled"`
	Interval          Duration  `yaml:"interval"`
	Blackout          Duration  `yaml:"blackout"`
	OverloadThreshold float64   `yaml:"overload_threshold"`
	MaxDropShare      float64   `yaml:"max_drop_share"`
	TLS               ClientTLS `yaml:"tls"`
}

// RateLimits configures how per-service rate limits are enforced.
type RateLimits struct {
	MaxDropShare       float64 `yaml:"max_drop_share"`
	MaxClientRateShare float64 `yaml:"max_client_rate_share"`
	MaxClientCallRate  float64 `yaml:"max_client_call_rate"`
}

// Limits bound what clients can make the balancer hold.
type Limits struct {
	MaxStreams         int      `yaml:"max_streams"`
	MaxStreamsPerIP    int      `yaml:"max_streams_per_ip"`
	MaxStreamsPerConn  int      `yaml:"max_streams_per_conn"`
	MaxStreamRatePerIP float64  `yaml:"max_stream_rate_per_ip"`
	StreamBurstPerIP   int      `yaml:"stream_burst_per_ip"`
	MaxIgnoredMessages int      `yaml:"max_ignored_messages"`
	MaxConns           int      `yaml:"max_conns"`
	MaxConnsPerIP      int      `yaml:"max_conns_per_ip"`
	SendTimeout        Duration `yaml:"send_timeout"`
	MaxRequestSize     int      `yaml:"max_request_size"`
}

// DNS configures the built-in DNS responder, off while Listen is empty.
type DNS struct {
	Listen      string   `yaml:"listen"`
	Zone        string   `yaml:"zone"`
	TTL         Duration `yaml:"ttl"`
	LBService   string   `yaml:"lb_service"`
	Balancers   []string `yaml:"balancers"`
	Allow       []string `yaml:"allow"`
	RateLimit   float64  `yaml:"rate_limit"`
	RateBurst   int      `yaml:"rate_burst"`
	MaxInflight int      `yaml:"max_inflight"`
	MaxTCPConns int      `yaml:"max_tcp_conns"`
}

// ServerTLS is a listener's TLS: a certificate, and with ClientCAFile,
// clients must present a certificate it signed (mTLS). Files are read
// again on SIGHUP and when they change.
type ServerTLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// ClientTLS is TLS toward a server (Consul, backends' ORCA service).
type ClientTLS struct {
	Enabled            bool   `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Admin configures the admin listener: metrics, status page, pprof,
// channelz. Off while Listen is empty.
type Admin struct {
	Listen string `yaml:"listen"`
	Pprof  bool   `yaml:"pprof"`
}

// Service holds one service's settings; zero fields inherit Balancer's,
// LoadReports' and RateLimits' values.
type Service struct {
	Policy         string `yaml:"policy"`
	MaxListEntries int    `yaml:"max_list_entries"`
	HashSubset     int    `yaml:"hash_subset"`
	// Aliases are client names that map to this service.
	Aliases []string `yaml:"aliases"`
	// Tags, when set, make clients naming this service (or an alias) get
	// only instances with all these tags.
	Tags []string `yaml:"tags"`
	// RateLimit caps the service's calls per second over all clients
	// (0: no limit).
	RateLimit float64 `yaml:"rate_limit"`
	// MaxDropShare bounds overload drops (nil: load_reports.max_drop_share).
	MaxDropShare *float64 `yaml:"max_drop_share"`
	// MaxRateLimitDropShare bounds rate-limit drops (nil:
	// rate_limits.max_drop_share).
	MaxRateLimitDropShare *float64 `yaml:"max_rate_limit_drop_share"`
	ChildPolicy           string   `yaml:"child_policy"`
}
