package config

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/lookaside-lb/lookaside/policy/all"
)

// testFiles makes the files the validation table names, in a temporary
// directory: file (readable), key (a usable lb-token key), short (a key
// too short), and returns their paths, a directory and a missing path.
type testFiles struct{ dir, file, key, short, static, missing string }

func newTestFiles(t *testing.T) testFiles {
	dir := t.TempDir()
	tf := testFiles{
		dir:     dir,
		file:    filepath.Join(dir, "file.pem"),
		key:     filepath.Join(dir, "lbtoken.key"),
		short:   filepath.Join(dir, "short.key"),
		static:  filepath.Join(dir, "backends.json"),
		missing: filepath.Join(dir, "missing"),
	}
	for path, data := range map[string]string{tf.file: "x", tf.key: strings.Repeat("k", 32) + "\n", tf.short: "short\n", tf.static: `{"services": {"a": [{"addr": "127.0.0.1:1"}]}}`} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return tf
}

func TestValidate(t *testing.T) {
	tf := newTestFiles(t)
	f := func(v float64) *float64 { return &v }
	d := func(s string) Duration {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		return Duration(v)
	}
	tests := []struct {
		name string
		edit func(c *Config)
		want []string // nil: valid
	}{
		{"defaults", func(*Config) {}, nil},

		// Top level and log.
		{"listen", func(c *Config) { c.Listen = "7000" }, []string{`listen: "7000" is not host:port (such as 127.0.0.1:7000, [::1]:7000 or :7000)`}},
		{"listen port", func(c *Config) { c.Listen = ":70000" }, []string{`listen: ":70000" has a port that is not in [0, 65535]`}},
		{"listen host", func(c *Config) { c.Listen = "a/b:1" }, []string{`listen: "a/b:1" has a host that is not a name or an IP address`}},
		{"listen any port", func(c *Config) { c.Listen = "127.0.0.1:0" }, nil},
		{"shutdown timeout", func(c *Config) { c.ShutdownTimeout = 0 }, []string{`shutdown_timeout: 0s must be positive`}},
		{"log level", func(c *Config) { c.Log.Level = "verbose" }, []string{`log.level: "verbose" is not a level: want debug, info, warn or error`}},
		{"log format", func(c *Config) { c.Log.Format = "logfmt" }, []string{`log.format: "logfmt" is not a format: want text or json`}},
		{"log level case", func(c *Config) { c.Log.Level = "WARN" }, nil},

		// Consul.
		{"consul address host:port", func(c *Config) { c.Consul.Address = "consul.service:8500" }, nil},
		{"consul address https", func(c *Config) { c.Consul.Address = "https://consul.example" }, nil},
		{"consul address https port", func(c *Config) { c.Consul.Address = "https://[::1]:8501" }, nil},
		{"consul address unix", func(c *Config) { c.Consul.Address = "unix:///run/consul.sock" }, nil},
		{"consul address no port", func(c *Config) { c.Consul.Address = "consul" }, []string{`consul.address: "consul" is not host:port (such as 127.0.0.1:8500), http(s)://host[:port] or unix:///path`}},
		{"consul address scheme", func(c *Config) { c.Consul.Address = "ftp://x:1" }, []string{`consul.address: "ftp://x:1" has a scheme other than http://, https:// or unix://`}},
		{"consul address path", func(c *Config) { c.Consul.Address = "http://x:1/v1" }, []string{`consul.address: "http://x:1/v1" is not scheme://host[:port]`}},
		{"consul address port", func(c *Config) { c.Consul.Address = "http://x:port" }, []string{`consul.address: "http://x:port" is not scheme://host[:port]`}},
		{"consul datacenter encoding", func(c *Config) { c.Consul.Datacenter = "dc\xff" }, []string{`consul.datacenter: "dc\xff" is not valid UTF-8`}},
		{"consul address unix empty", func(c *Config) { c.Consul.Address = "unix://" }, []string{`consul.address: "unix://" has no socket path after unix://`}},
		{"consul token and file", func(c *Config) { c.Consul.Token, c.Consul.TokenFile = "secret", tf.file }, []string{`consul.token_file: "` + tf.file + `" and consul.token are both set: set one`}},
		{"consul token file missing", func(c *Config) { c.Consul.TokenFile = tf.missing }, []string{`consul.token_file: "` + tf.missing + `" cannot be read: no such file or directory`}},
		{"consul token file directory", func(c *Config) { c.Consul.TokenFile = tf.dir }, []string{`consul.token_file: "` + tf.dir + `" is not a regular file`}},
		{"consul datacenter", func(c *Config) { c.Consul.Datacenter = "dc 1" }, []string{`consul.datacenter: "dc 1" has '/', '?', '#', '%' or white space`}},
		{"consul tags", func(c *Config) { c.Consul.Tags = []string{"a", "", "b,c", "A", "x y"} }, []string{
			`consul.tags[1]: "" is empty`,
			`consul.tags[2]: "b,c" has ',', '@' or white space`,
			`consul.tags[3]: "A" is listed twice (tags match case-insensitively)`,
			`consul.tags[4]: "x y" has ',', '@' or white space`,
		}},
		{"consul wait", func(c *Config) { c.Consul.Wait = d("500ms") }, []string{`consul.wait: 500ms is not in [1s, 10m]`}},
		{"consul wait high", func(c *Config) { c.Consul.Wait = d("11m") }, []string{`consul.wait: 11m is not in [1s, 10m]`}},
		{"consul max conns", func(c *Config) { c.Consul.MaxConns = 2000 }, []string{`consul.max_conns: 2000 is not in [1, 1024]`}},
		{"consul max conns zero", func(c *Config) { c.Consul.MaxConns = 0 }, []string{`consul.max_conns: 0 is not in [1, 1024]`}},
		{"consul max fetches", func(c *Config) { c.Consul.MaxFetches = 0 }, []string{`consul.max_fetches: 0 is not in [1, 256]`}},
		{"consul conns below fetches", func(c *Config) { c.Consul.MaxConns, c.Consul.MaxFetches = 10, 8 }, []string{
			`consul.max_conns: 10 is below the 11 connections needed: consul.max_fetches 8 needs 11 (fetches + 2 long polls + a probe)`,
		}},
		{"consul conns fit fetches", func(c *Config) { c.Consul.MaxConns, c.Consul.MaxFetches = 11, 8 }, nil},
		{"consul conns with DNS", func(c *Config) { c.Consul.MaxConns, c.DNS.Listen = 11, "127.0.0.1:53" }, []string{
			`consul.max_conns: 11 is below the 15 connections needed: consul.max_fetches 8 needs 11 (fetches + 2 long polls + a probe), and the DNS responder's watch of the replicas 4 more`,
		}},
		{"consul conns with DNS and fixed balancers", func(c *Config) {
			c.Consul.MaxConns, c.DNS.Listen, c.DNS.Balancers = 11, "127.0.0.1:53", []string{"10.0.0.1:7000"}
		}, nil},
		{"consul resolve interval", func(c *Config) { c.Consul.ResolveInterval = d("2h") }, []string{`consul.resolve_interval: 2h is not in [1s, 1h]`}},
		{"consul resync interval", func(c *Config) { c.Consul.ResyncInterval = d("5s") }, []string{`consul.resync_interval: 5s is not in [10s, 24h]`}},
		{"consul tls off with files", func(c *Config) {
			c.Consul.TLS = ClientTLS{CAFile: tf.file, ServerName: "consul", InsecureSkipVerify: true}
		}, []string{
			`consul.tls.ca_file: "` + tf.file + `" has no effect: consul.tls.enabled is false`,
			`consul.tls.insecure_skip_verify: true has no effect: consul.tls.enabled is false`,
			`consul.tls.server_name: "consul" has no effect: consul.tls.enabled is false`,
		}},
		{"consul tls", func(c *Config) {
			c.Consul.TLS = ClientTLS{Enabled: true, CAFile: tf.file, CertFile: tf.file, KeyFile: tf.file, ServerName: "consul"}
		}, nil},
		{"consul tls cert without key", func(c *Config) { c.Consul.TLS = ClientTLS{Enabled: true, CertFile: tf.file} }, []string{
			`consul.tls.key_file: "" is needed with consul.tls.cert_file (a client certificate needs its key)`,
		}},
		{"consul tls key without cert", func(c *Config) { c.Consul.TLS = ClientTLS{Enabled: true, KeyFile: tf.missing} }, []string{
			`consul.tls.cert_file: "" is needed with consul.tls.key_file (a key needs its certificate)`,
			`consul.tls.key_file: "` + tf.missing + `" cannot be read: no such file or directory`,
		}},
		{"consul tls insecure with CA", func(c *Config) { c.Consul.TLS = ClientTLS{Enabled: true, CAFile: tf.file, InsecureSkipVerify: true} }, []string{
			`consul.tls.insecure_skip_verify: true and consul.tls.ca_file are both set: the CA would be ignored`,
		}},

		// Static.
		{"static services", func(c *Config) {
			c.Static.Services = map[string][]string{"user-srv": {"127.0.0.1:1", "[::1]:2*3"}}
		}, nil},
		{"static file", func(c *Config) { c.Static.File = tf.static }, nil},
		{"static file contents", func(c *Config) { c.Static.File = tf.file }, []string{
			`static.file: "` + tf.file + `" is not a static backends file: line 1, column 1: invalid character 'x' looking for beginning of value`,
		}},
		{"static file missing", func(c *Config) { c.Static.File = tf.missing }, []string{`static.file: "` + tf.missing + `" cannot be read: no such file or directory`}},
		{"static both", func(c *Config) {
			c.Static.File, c.Static.Services = tf.static, map[string][]string{"a": {"127.0.0.1:1"}}
		}, []string{`static.file: "` + tf.static + `" and static.services are both set: set one`}},
		{"static addresses", func(c *Config) {
			c.Static.Services = map[string][]string{
				"a":   {"host:1", "127.0.0.1:0", "127.0.0.1:1*0", "127.0.0.1:2,127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:4*2"},
				"b c": nil,
			}
		}, []string{
			`static.services."b c": "b c" has '/', '?', '#', '=', ';' or white space`,
			`static.services."b c": has no address`,
			`static.services.a[0]: "host:1" is not ip:port or ip:port*weight: want an IP literal and a port, like 10.0.0.1:50051 or [::1]:50051`,
			`static.services.a[1]: "127.0.0.1:0" is not ip:port or ip:port*weight: port 0 out of range 1-65535`,
			`static.services.a[2]: "127.0.0.1:1*0" is not ip:port or ip:port*weight: weight 0 out of range 1-10000`,
			`static.services.a[3]: "127.0.0.1:2,127.0.0.1:3" is not ip:port or ip:port*weight`,
			`static.services.a[5]: "127.0.0.1:4*2" is listed twice`,
		}},
		{"static service names", func(c *Config) {
			c.Static.Services = map[string][]string{"": {"127.0.0.1:1"}, strings.Repeat("s", 256): {"127.0.0.1:1"}, "a\xff": {"127.0.0.1:1"}, "a=b": {"127.0.0.1:1"}}
		}, []string{
			`static.services."": "" is empty`,
			`static.services."a\xff": "a\xff" is not valid UTF-8`,
			`static.services.a=b: "a=b" has '/', '?', '#', '=', ';' or white space`,
			`static.services.` + strings.Repeat("s", 256) + `: "` + strings.Repeat("s", 256) + `" is longer than 255 bytes`,
		}},
		{"static and consul watch settings", func(c *Config) {
			c.Static.File = tf.static
			c.Consul.Tags, c.Consul.Stale, c.Consul.Address = []string{"x"}, true, "consul:8500"
		}, []string{
			`consul.address: has no effect: static lists the backends and register.enabled is false`,
			`consul.stale: has no effect: static lists the backends (static and consul's watch settings are exclusive)`,
			`consul.tags: has no effect: static lists the backends (static and consul's watch settings are exclusive)`,
		}},
		{"static with register keeps the consul connection", func(c *Config) {
			c.Static.File, c.Consul.Address = tf.static, "consul:8500"
			c.Register.Enabled, c.Register.Advertise = true, "10.0.0.1:7000"
		}, nil},

		// Register.
		{"register", func(c *Config) { c.Register.Enabled, c.Listen = true, "10.0.0.1:7000" }, nil},
		{"register needs a host", func(c *Config) { c.Register.Enabled = true }, []string{`register.advertise: "" is needed: listen ":7000" has no host others can reach`}},
		{"register unspecified host", func(c *Config) { c.Register.Enabled, c.Listen = true, "[::]:7000" }, []string{`register.advertise: "" is needed: listen "[::]:7000" has no host others can reach`}},
		{"register advertise", func(c *Config) { c.Register.Enabled, c.Register.Advertise = true, "0.0.0.0:7000" }, []string{`register.advertise: "0.0.0.0:7000" needs a host others can reach and a port in [1, 65535]`}},
		{"register advertise port", func(c *Config) { c.Register.Advertise = "lb1:0" }, []string{`register.advertise: "lb1:0" needs a host others can reach and a port in [1, 65535]`}},
		{"register advertise syntax", func(c *Config) { c.Register.Advertise = "lb1" }, []string{`register.advertise: "lb1" is not host:port (such as 127.0.0.1:7000, [::1]:7000 or :7000)`}},
		{"register names", func(c *Config) { c.Register.Service, c.Register.ID = "", "a/b" }, []string{
			`register.id: "a/b" has '/', '?', '#', '%' or white space`,
			`register.service: "" is empty`,
		}},
		{"register durations", func(c *Config) { c.Register.CheckInterval, c.Register.DrainDelay = 0, d("-1s") }, []string{
			`register.check_interval: 0s must be positive`,
			`register.drain_delay: -1s is negative`,
		}},

		// Balancer.
		{"policy", func(c *Config) { c.Balancer.Policy = "fastest" }, []string{
			`balancer.policy: "fastest" is not a policy (known: least_connections, least_load, random, round_robin, source_hash, weighted_random, weighted_round_robin)`,
		}},
		{"list entries", func(c *Config) { c.Balancer.MaxListEntries = 20000 }, []string{`balancer.max_list_entries: 20000 is not in [1, 16384]`}},
		{"hash subset", func(c *Config) { c.Balancer.MaxListEntries, c.Balancer.HashSubset = 4, 5 }, []string{`balancer.hash_subset: 5 is not in [1, balancer.max_list_entries 4]`}},
		{"child policy", func(c *Config) { c.Balancer.ChildPolicy = "grpclb" }, []string{`balancer.child_policy: "grpclb" is not a child policy: want round_robin or pick_first`}},
		{"zones", func(c *Config) {
			c.Balancer.Zones = []string{"lb.internal", "LB.internal", ".x", "x.", "a..b", "a:1", "a b", ""}
		}, []string{
			`balancer.zones[1]: "LB.internal" is listed twice (zones match case-insensitively)`,
			`balancer.zones[2]: ".x" is not a domain name without leading or trailing dot`,
			`balancer.zones[3]: "x." is not a domain name without leading or trailing dot`,
			`balancer.zones[4]: "a..b" is not a domain name without leading or trailing dot`,
			`balancer.zones[5]: "a:1" is not a domain name without leading or trailing dot`,
			`balancer.zones[6]: "a b" is not a domain name without leading or trailing dot`,
			`balancer.zones[7]: "" is not a domain name without leading or trailing dot`,
		}},
		{"max name length", func(c *Config) { c.Balancer.MaxNameLength = 2000 }, []string{`balancer.max_name_length: 2000 is not in [1, 1024]`}},
		{"client stats interval", func(c *Config) { c.Balancer.ClientStatsInterval = d("500ms") }, []string{`balancer.client_stats_interval: 500ms is not 0 (off) or at least 1s`}},
		{"client stats off", func(c *Config) { c.Balancer.ClientStatsInterval = 0 }, nil},
		{"initial request timeout", func(c *Config) { c.Balancer.InitialRequestTimeout = d("50ms") }, []string{`balancer.initial_request_timeout: 50ms is under 100ms`}},
		{"first list timeout", func(c *Config) { c.Balancer.FirstListTimeout = d("2m") }, []string{`balancer.first_list_timeout: 2m is not in (0, 1m]`}},
		{"first list timeout zero", func(c *Config) { c.Balancer.FirstListTimeout = 0 }, []string{`balancer.first_list_timeout: 0s is not in (0, 1m]`}},
		{"watch linger", func(c *Config) { c.Balancer.WatchLinger = d("-1m") }, []string{`balancer.watch_linger: -1m is negative`}},
		{"max services", func(c *Config) { c.Balancer.MaxServices = 0 }, []string{`balancer.max_services: 0 is under 1`}},
		{"max stream age", func(c *Config) { c.Balancer.MaxStreamAge = d("5s") }, []string{`balancer.max_stream_age: 5s is not 0 (never) or at least 10s`}},
		{"transport", func(c *Config) { c.Balancer.Transport = "h3" }, []string{`balancer.transport: "h3" is not lookaside or grpc`}},
		{"max stream age off", func(c *Config) { c.Balancer.MaxStreamAge = 0 }, nil},
		{"lb token key", func(c *Config) { c.Balancer.LBTokenKeyFile = tf.key }, nil},
		{"lb token key short", func(c *Config) { c.Balancer.LBTokenKeyFile = tf.short }, []string{
			`balancer.lb_token_key_file: "` + tf.short + `" holds no usable key: key has 5 bytes, want at least 16 (for example: head -c 32 /dev/urandom | base64) (key file ` + tf.short + `)`,
		}},
		{"lb token key missing", func(c *Config) { c.Balancer.LBTokenKeyFile = tf.missing }, []string{`balancer.lb_token_key_file: "` + tf.missing + `" cannot be read: no such file or directory`}},

		// Load reports.
		{"load report interval is never clamped", func(c *Config) { c.LoadReports.Interval = d("2m") }, []string{`load_reports.interval: 2m is not in [10ms, 1m]`}},
		{"load report interval low", func(c *Config) { c.LoadReports.Interval = d("5ms") }, []string{`load_reports.interval: 5ms is not in [10ms, 1m]`}},
		{"blackout", func(c *Config) { c.LoadReports.Blackout = d("-1s") }, []string{`load_reports.blackout: -1s is negative`}},
		{"overload threshold", func(c *Config) { c.LoadReports.OverloadThreshold = 0 }, []string{`load_reports.overload_threshold: 0 is not a positive number`}},
		{"overload threshold NaN", func(c *Config) { c.LoadReports.OverloadThreshold = math.NaN() }, []string{`load_reports.overload_threshold: NaN is not a positive number`}},
		{"overload drop share", func(c *Config) { c.LoadReports.MaxDropShare = 1 }, []string{`load_reports.max_drop_share: 1 is not in [0, 0.99]`}},
		{"overload drops off", func(c *Config) { c.LoadReports.MaxDropShare = 0 }, nil},
		{"load report tls without reports", func(c *Config) { c.LoadReports.Enabled, c.LoadReports.TLS.Enabled = false, true }, []string{
			`load_reports.tls.enabled: true has no effect: load_reports.enabled is false`,
		}},
		{"load report tls", func(c *Config) { c.LoadReports.TLS = ClientTLS{KeyFile: tf.file} }, []string{
			`load_reports.tls.key_file: "` + tf.file + `" has no effect: load_reports.tls.enabled is false`,
		}},

		// Rate limits.
		{"rate limit drop share", func(c *Config) { c.RateLimits.MaxDropShare = 0 }, []string{`rate_limits.max_drop_share: 0 is not in (0, 1]`}},
		{"client rate share", func(c *Config) { c.RateLimits.MaxClientRateShare = 101 }, []string{`rate_limits.max_client_rate_share: 101 is not in (0, 100]`}},
		{"client call rate", func(c *Config) { c.RateLimits.MaxClientCallRate = math.Inf(1) }, []string{`rate_limits.max_client_call_rate: +Inf is not a positive number`}},

		// Limits.
		{"limits", func(c *Config) {
			c.Limits = Limits{MaxStreams: 0, MaxStreamsPerIP: 2, MaxStreamsPerConn: 3, MaxStreamRatePerIP: -1, StreamBurstPerIP: 0,
				MaxIgnoredMessages: -1, MaxConns: 0, MaxConnsPerIP: 2, SendTimeout: d("11m"), MaxRequestSize: 1024}
		}, []string{
			`limits.max_conns: 0 is under 1`,
			`limits.max_ignored_messages: -1 is not in [0 (off), 1048576]`,
			`limits.max_request_size: 1024 is not in [4096, 4194304]`,
			`limits.max_stream_rate_per_ip: -1 is not in [0 (off), 1e+06] streams/s`,
			`limits.max_streams: 0 is under 1`,
			`limits.max_streams_per_conn: 3 is not in [1, limits.max_streams_per_ip 2]`,
			`limits.send_timeout: 11m is not in [1s, 10m]`,
		}},
		{"limits bounded by limits", func(c *Config) {
			c.Limits.MaxStreams, c.Limits.MaxStreamsPerIP, c.Limits.MaxStreamsPerConn = 10, 20, 15
			c.Limits.MaxConnsPerIP = 20001
		}, []string{
			`limits.max_conns_per_ip: 20001 is not in [1, limits.max_conns 20000]`,
			`limits.max_streams_per_ip: 20 is not in [1, limits.max_streams 10]`,
		}},
		{"streams per connection over the HTTP/2 bound", func(c *Config) {
			c.Limits.MaxStreams, c.Limits.MaxStreamsPerIP, c.Limits.MaxStreamsPerConn = 1<<31, 1<<31, 1<<31
		}, []string{`limits.max_streams_per_conn: 2147483648 is over 1073741824`}},
		{"stream burst", func(c *Config) { c.Limits.StreamBurstPerIP = 0 }, []string{`limits.stream_burst_per_ip: 0 is not in [1, 1048576]`}},
		{"stream burst with the rate off", func(c *Config) { c.Limits.MaxStreamRatePerIP, c.Limits.StreamBurstPerIP = 0, 0 }, nil},

		// DNS.
		{"dns", func(c *Config) { c.DNS.Listen = "127.0.0.1:5353" }, nil},
		{"dns on a taken port", func(c *Config) { c.DNS.Listen = ":7000" }, []string{`dns.listen: ":7000" is also listen: the DNS responder needs its own port`}},
		{"dns on the admin port", func(c *Config) { c.DNS.Listen, c.Admin.Listen = "127.0.0.1:9000", "127.0.0.1:9000" }, []string{
			`dns.listen: "127.0.0.1:9000" is also admin.listen: the DNS responder needs its own port`,
		}},
		{"any ports may repeat", func(c *Config) { c.Listen, c.DNS.Listen, c.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0" }, nil},
		{"dns listen", func(c *Config) { c.DNS.Listen = "localhost" }, []string{`dns.listen: "localhost" is not host:port (such as 127.0.0.1:7000, [::1]:7000 or :7000)`}},
		{"dns zone", func(c *Config) { c.DNS.Zone = "lb internal" }, []string{`dns.zone: "lb internal" is not a domain name without leading or trailing dot`}},
		{"dns zone empty", func(c *Config) { c.DNS.Zone = "" }, []string{`dns.zone: "" is not a domain name without leading or trailing dot`}},
		{"dns ttl", func(c *Config) { c.DNS.TTL = d("1500ms") }, []string{`dns.ttl: 1.5s is not whole seconds in [1s, 1h]`}},
		{"dns lb service", func(c *Config) { c.DNS.LBService = "a b" }, []string{`dns.lb_service: "a b" has '/', '?', '#', '%' or white space`}},
		{"dns balancers", func(c *Config) {
			c.DNS.Balancers = []string{"10.0.0.1:7000", "lb1:7000", "10.0.0.1:7000", "10.0.0.2:0"}
		}, []string{
			`dns.balancers[1]: "lb1:7000" is not an IP:port (hostnames are not accepted: clients resolve SRV targets through this server)`,
			`dns.balancers[2]: "10.0.0.1:7000" is listed twice`,
			`dns.balancers[3]: "10.0.0.2:0" is not an IP:port (hostnames are not accepted: clients resolve SRV targets through this server)`,
		}},
		{"dns allow", func(c *Config) { c.DNS.Allow = []string{"10.0.0.1/8", "fe80::1%eth0", "x", "0.0.0.0/0", "192.0.2.7"} }, []string{
			`dns.allow[0]: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)`,
			`dns.allow[1]: "fe80::1%eth0" is neither an address nor a CIDR prefix`,
			`dns.allow[2]: "x" is neither an address nor a CIDR prefix`,
		}},
		{"dns allow items", func(c *Config) { c.DNS.Allow = []string{" ", "10.0.0.0/8,10.1.0.0/16", "10.0.0.0/40"} }, []string{
			`dns.allow[0]: " " is not an address or a CIDR prefix`,
			`dns.allow[1]: "10.0.0.0/8,10.1.0.0/16" is not an address or a CIDR prefix`,
			`dns.allow[2]: "10.0.0.0/40" is not an address or a CIDR prefix`,
		}},
		{"dns allow empty", func(c *Config) { c.DNS.Allow = nil }, []string{`dns.allow: [] lists no network: list 0.0.0.0/0 and ::/0 to answer everyone`}},
		{"dns rates", func(c *Config) { c.DNS.RateLimit, c.DNS.RateBurst, c.DNS.MaxInflight, c.DNS.MaxTCPConns = 0, 0, 0, 0 }, []string{
			`dns.max_inflight: 0 is under 1`,
			`dns.max_tcp_conns: 0 is under 1`,
			`dns.rate_burst: 0 is under 1`,
			`dns.rate_limit: 0 is not a positive number of answers per second`,
		}},
		{"dns with static needs this replica's IP", func(c *Config) { c.DNS.Listen, c.Static.File = ":53", tf.static }, []string{
			`dns.balancers: [] are needed: with static backends the SRV records list this replica, and listen ":7000" is not an IP others can reach (set dns.balancers or register.advertise)`,
		}},
		{"dns with static and an IP", func(c *Config) { c.DNS.Listen, c.Static.File, c.Listen = ":53", tf.static, "10.0.0.1:0" }, nil},

		// Server TLS.
		{"tls", func(c *Config) { c.TLS = ServerTLS{CertFile: tf.file, KeyFile: tf.file, ClientCAFile: tf.file} }, nil},
		{"tls cert without key", func(c *Config) { c.TLS.CertFile = tf.file }, []string{`tls.key_file: "" is needed with tls.cert_file`}},
		{"tls key without cert", func(c *Config) { c.TLS.KeyFile = tf.file }, []string{`tls.cert_file: "" is needed with tls.key_file`}},
		{"tls client CA alone", func(c *Config) { c.TLS.ClientCAFile = tf.file }, []string{
			`tls.client_ca_file: "` + tf.file + `" needs tls.cert_file and tls.key_file (mTLS is TLS with client certificates)`,
		}},
		{"tls files missing", func(c *Config) { c.TLS = ServerTLS{CertFile: tf.missing, KeyFile: tf.dir} }, []string{
			`tls.cert_file: "` + tf.missing + `" cannot be read: no such file or directory`,
			`tls.key_file: "` + tf.dir + `" is not a regular file`,
		}},

		// Admin.
		{"admin", func(c *Config) { c.Admin = Admin{Listen: "127.0.0.1:9000", Pprof: true} }, nil},
		{"admin listen", func(c *Config) { c.Admin.Listen = "9000" }, []string{`admin.listen: "9000" is not host:port (such as 127.0.0.1:7000, [::1]:7000 or :7000)`}},
		{"admin on the balancer's port", func(c *Config) { c.Admin.Listen = ":7000" }, []string{`admin.listen: ":7000" is also listen: the admin listener needs its own port`}},
		{"pprof without admin", func(c *Config) { c.Admin.Pprof = true }, []string{`admin.pprof: true has no effect: admin.listen is empty (the admin listener is off)`}},

		// Services.
		{"services", func(c *Config) {
			c.Services = map[string]Service{
				"user-srv": {Policy: "least_load", MaxListEntries: 64, HashSubset: 2, Aliases: []string{"users", "users:443", "Users.example."},
					Tags: []string{"canary"}, RateLimit: 100, MaxDropShare: f(0.2), MaxRateLimitDropShare: f(1), ChildPolicy: "pick_first"},
				"orders": {},
			}
		}, nil},
		{"service names", func(c *Config) {
			c.Services = map[string]Service{"": {}, "a:80": {}, "a@canary": {}, "a b": {}, ".a": {}, "User-Srv": {}, "user-srv": {}, strings.Repeat("x", 256): {}}
		}, []string{
			`services."": "" is empty`,
			`services.".a": ".a" has an empty label`,
			`services."a b": "a b" contains ' '`,
			`services.a:80: "a:80" has ':': a service name has no port`,
			`services.a@canary: "a@canary" has '@': a service's settings apply to every tag filter of it (filter with tags)`,
			`services.user-srv: "user-srv" is the same service as "User-Srv" (names match case-insensitively, tags in any order)`,
			`services.` + strings.Repeat("x", 256) + `: "` + strings.Repeat("x", 256) + `" is 256 bytes, longer than 255`,
		}},
		{"service policy", func(c *Config) { c.Services = map[string]Service{"a": {Policy: "fastest", ChildPolicy: "grpclb"}} }, []string{
			`services.a.child_policy: "grpclb" is not a child policy: want round_robin or pick_first`,
			`services.a.policy: "fastest" is not a policy (known: least_connections, least_load, random, round_robin, source_hash, weighted_random, weighted_round_robin)`,
		}},
		{"service policy options", func(c *Config) {
			c.Balancer.MaxListEntries = 8
			c.Balancer.HashSubset = 4
			c.Services = map[string]Service{"a": {MaxListEntries: -1}, "b": {HashSubset: 9}, "c": {MaxListEntries: 16, HashSubset: 16},
				"d": {MaxListEntries: 2, HashSubset: 3}, "e": {MaxListEntries: 3}, "f": {MaxListEntries: 3, HashSubset: 1}}
		}, []string{
			`services.a.max_list_entries: -1 is not in [1, 16384]`,
			`services.b.hash_subset: 9 is not 0 (inherit) or in [1, balancer.max_list_entries 8]`,
			`services.d.hash_subset: 3 is not 0 (inherit) or in [1, services.d.max_list_entries 2]`,
			`services.e.max_list_entries: 3 is below balancer.hash_subset 4, which the service inherits (set its hash_subset)`,
		}},
		{"service rate limit", func(c *Config) { c.Services = map[string]Service{"a": {RateLimit: -1}, "b": {RateLimit: math.Inf(1)}} }, []string{
			`services.a.rate_limit: -1 is not 0 (no limit) or a positive number of calls per second`,
			`services.b.rate_limit: +Inf is not 0 (no limit) or a positive number of calls per second`,
		}},
		{"rate limit needs client stats", func(c *Config) {
			c.Balancer.ClientStatsInterval = 0
			c.Services = map[string]Service{"user-srv": {RateLimit: 100}}
		}, []string{`services.user-srv.rate_limit: 100 needs client stats: balancer.client_stats_interval is 0`}},
		{"service drop shares", func(c *Config) {
			c.Services = map[string]Service{"a": {MaxDropShare: f(0), MaxRateLimitDropShare: f(0)}, "b": {MaxDropShare: f(1), MaxRateLimitDropShare: f(1.5)}}
		}, []string{
			`services.a.max_drop_share: 0 is not in (0, 0.99] (leave it out to inherit load_reports.max_drop_share)`,
			`services.a.max_rate_limit_drop_share: 0 is not in (0, 1] (leave it out to inherit rate_limits.max_drop_share)`,
			`services.b.max_drop_share: 1 is not in (0, 0.99] (leave it out to inherit load_reports.max_drop_share)`,
			`services.b.max_rate_limit_drop_share: 1.5 is not in (0, 1] (leave it out to inherit rate_limits.max_drop_share)`,
		}},
		{"service tags", func(c *Config) { c.Services = map[string]Service{"a": {Tags: []string{"v1", "V1", "a@b"}}} }, []string{
			`services.a.tags[1]: "V1" is listed twice (tags match case-insensitively)`,
			`services.a.tags[2]: "a@b" has ',', '@' or white space`,
		}},
		{"tags with static backends", func(c *Config) {
			c.Static.Services = map[string][]string{"a": {"127.0.0.1:1"}}
			c.Services = map[string]Service{"a": {Tags: []string{"canary"}}}
		}, []string{`services.a.tags: cannot work with static backends: static lists carry no tags, so clients naming the service would get no instance`}},
		{"tags longer than a name", func(c *Config) {
			c.Balancer.MaxNameLength = 10
			c.Services = map[string]Service{"user-srv": {Tags: []string{"canary"}}}
		}, []string{`services.user-srv.tags: make the watched name 15 bytes, longer than balancer.max_name_length 10`}},
		{"aliases", func(c *Config) {
			c.Services = map[string]Service{
				"a": {Aliases: []string{"x", "X.", "b", "", "with space"}},
				"b": {Aliases: []string{"x", "B:80"}},
			}
		}, []string{
			`services.a.aliases[1]: "X." is listed twice (aliases match case-insensitively)`,
			`services.a.aliases[2]: "b" is the name of services.b: a name maps to one service`,
			`services.a.aliases[3]: "" is empty`,
			`services.a.aliases[4]: "with space" contains ' '`,
			`services.b.aliases[0]: "x" is also an alias of services.a (aliases match case-insensitively)`,
		}},
		{"alias of its own service", func(c *Config) { c.Services = map[string]Service{"a": {Aliases: []string{"A"}}} }, []string{
			`services.a.aliases[0]: "A" is the name of services.a: a name maps to one service`,
		}},
		{"long alias with a short max name length", func(c *Config) {
			c.Balancer.MaxNameLength = 4
			c.Services = map[string]Service{"a": {Aliases: []string{"users"}}}
		}, []string{`services.a.aliases[0]: "users" is 5 bytes, longer than 4`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			err := c.Validate()
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
				var es Errors
				if !errors.As(err, &es) || len(es) != len(got) {
					t.Errorf("Validate error is %T with %d lines, want Errors, one per line", err, len(got))
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("Validate:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(tt.want, "\n      "))
			}
		})
	}
}

// TestValidateEveryErrorAtOnce checks that one bad value does not hide
// another, and that the errors come sorted by path.
func TestValidateEveryErrorAtOnce(t *testing.T) {
	c, err := Parse([]byte(`
listen: nowhere
limits:
  max_streams_per_ip: 0
load_reports:
  interval: 2m
services:
  user-srv:
    rate_limit: -5
dns:
  allow: [10.0.0.1/8]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := `dns.allow[0]: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)
limits.max_streams_per_ip: 0 is not in [1, limits.max_streams 50000]
listen: "nowhere" is not host:port (such as 127.0.0.1:7000, [::1]:7000 or :7000)
load_reports.interval: 2m is not in [10ms, 1m]
services.user-srv.rate_limit: -5 is not 0 (no limit) or a positive number of calls per second`
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate:\n got: %v\nwant: %s", err, want)
	}
}

func TestComparePaths(t *testing.T) {
	es := Errors{{Path: "dns.allow[10]"}, {Path: "dns.allow[2]"}, {Path: "dns"}, {Path: "a"}, {Path: "dns.allow[2].x"}}
	_ = es.sorted()
	var got []string
	for _, e := range es {
		got = append(got, e.Path)
	}
	if want := "a dns dns.allow[2] dns.allow[2].x dns.allow[10]"; strings.Join(got, " ") != want {
		t.Errorf("sorted paths = %v, want %s", got, want)
	}
}
