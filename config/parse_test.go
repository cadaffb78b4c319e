package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestDefaultIsTheFlagDefaults pins Default to the defaults lbserver's
// flags had before the config file: a package changing one of its
// defaults shows here.
func TestDefaultIsTheFlagDefaults(t *testing.T) {
	want := Config{
		Listen:          ":7000",
		ShutdownTimeout: Duration(15 * time.Second),
		Log:             Log{Level: "info", Format: "text"},
		Consul: Consul{
			Wait:            Duration(time.Minute),
			MaxConns:        16,
			MaxFetches:      8,
			ResolveInterval: Duration(30 * time.Second),
			ResyncInterval:  Duration(5 * time.Minute),
		},
		Register: Register{Service: "lookaside", CheckInterval: Duration(2 * time.Second), DrainDelay: Duration(2 * time.Second)},
		Balancer: Balancer{
			Policy:                "round_robin",
			MaxListEntries:        512,
			HashSubset:            1,
			ChildPolicy:           "round_robin",
			MaxNameLength:         255,
			ClientStatsInterval:   Duration(10 * time.Second),
			InitialRequestTimeout: Duration(10 * time.Second),
			FirstListTimeout:      Duration(5 * time.Second),
			WatchLinger:           Duration(time.Minute),
			MaxServices:           10000,
			MaxStreamAge:          Duration(30 * time.Minute),
			Transport:             "lookaside",
		},
		LoadReports: LoadReports{Enabled: true, Interval: Duration(time.Second), Blackout: Duration(10 * time.Second), OverloadThreshold: 0.9, MaxDropShare: 0.5,
			LatencyOutliers: LatencyOutliers{Enabled: true, Factor: 2, ReadmitFactor: 1.5, MinExcess: Duration(time.Millisecond), EjectAfter: Duration(2 * time.Second), MinEndpoints: 3,
				MaxEjectedFraction: 0.5, BaseEjectionTime: Duration(5 * time.Second), MaxEjectionTime: Duration(5 * time.Minute), ProbeShare: 0.005}},
		RateLimits: RateLimits{MaxDropShare: 0.9, MaxClientRateShare: 0.5, MaxClientCallRate: 100000},
		Limits: Limits{
			MaxStreams: 50000, MaxStreamsPerIP: 1000, MaxStreamsPerConn: 100,
			MaxStreamRatePerIP: 100, StreamBurstPerIP: 200, MaxIgnoredMessages: 100,
			MaxConns: 20000, MaxConnsPerIP: 500, SendTimeout: Duration(30 * time.Second), MaxRequestSize: 65536,
		},
		DNS: DNS{
			Zone: "lb.internal", TTL: Duration(5 * time.Second),
			Allow:     []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"},
			RateLimit: 200, RateBurst: 400, MaxInflight: 256, MaxTCPConns: 128,
		},
		XDS: XDS{Enabled: true},
	}
	if diff := cmp.Diff(want, Default()); diff != "" {
		t.Errorf("Default() (-want +got):\n%s", diff)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
}

func TestParse(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	tests := []struct {
		name string
		in   string
		// edit turns Default() into the wanted Config.
		edit func(c *Config)
	}{
		{"empty", "", func(*Config) {}},
		{"comments only", "# nothing here\n\n", func(*Config) {}},
		{"document marker only", "---\n", func(*Config) {}},
		{"null sections keep defaults", "consul:\nlimits: ~\n", func(*Config) {}},
		{"top level", "listen: 127.0.0.1:7000\nshutdown_timeout: 1m30s\n", func(c *Config) {
			c.Listen = "127.0.0.1:7000"
			c.ShutdownTimeout = Duration(90 * time.Second)
		}},
		{"zero duration", "balancer:\n  watch_linger: 0\n", func(c *Config) { c.Balancer.WatchLinger = 0 }},
		{"partial section keeps the other defaults", "limits:\n  max_streams: 10\n", func(c *Config) { c.Limits.MaxStreams = 10 }},
		{"lists replace the default", "dns:\n  allow: [10.0.0.0/8]\n", func(c *Config) { c.DNS.Allow = []string{"10.0.0.0/8"} }},
		{"empty list", "dns:\n  allow: []\n", func(c *Config) { c.DNS.Allow = []string{} }},
		{"null keeps the default", "dns:\n  allow:\n  zone: ~\nlisten:\nload_reports:\n  interval: null\n", func(*Config) {}},
		{"null service inherits all", "services:\n  a:\n  b: {max_drop_share: ~}\n", func(c *Config) { c.Services = map[string]Service{"a": {}, "b": {}} }},
		{"yaml 1.1 booleans", "load_reports:\n  enabled: no\n", func(c *Config) { c.LoadReports.Enabled = false }},
		{"integer as float", "load_reports:\n  overload_threshold: 2\n", func(c *Config) { c.LoadReports.OverloadThreshold = 2 }},
		{"service", `
services:
  user-srv:
    policy: least_load
    aliases: [users, "users:443"]
    tags: [canary]
    rate_limit: 500
    max_drop_share: 0.3
    child_policy: pick_first
  orders: {}
  empty:
`, func(c *Config) {
			c.Services = map[string]Service{
				"user-srv": {Policy: "least_load", Aliases: []string{"users", "users:443"}, Tags: []string{"canary"}, RateLimit: 500, MaxDropShare: f(0.3), ChildPolicy: "pick_first"},
				"orders":   {},
				"empty":    {},
			}
		}},
		{"anchors and merge keys", `
consul:
  tls: &t
    enabled: true
    ca_file: /etc/ca.pem
load_reports:
  tls:
    <<: *t
    server_name: backend
`, func(c *Config) {
			c.Consul.TLS = ClientTLS{Enabled: true, CAFile: "/etc/ca.pem"}
			c.LoadReports.TLS = ClientTLS{Enabled: true, CAFile: "/etc/ca.pem", ServerName: "backend"}
		}},
		{"static", "static:\n  services:\n    a: [127.0.0.1:1, '[::1]:2*3']\n", func(c *Config) {
			c.Static.Services = map[string][]string{"a": {"127.0.0.1:1", "[::1]:2*3"}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := Default()
			tt.edit(&want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"unknown top-level key", "listen: :1\nlisten_addr: :2\n",
			`line 2: listen_addr: unknown key (keys of the top level: listen, shutdown_timeout, log, consul, static, register, balancer, load_reports, rate_limits, limits, dns, tls, admin, xds, services)`},
		{"unknown nested key", "consul:\n  adress: x\n",
			`line 2: consul.adress: unknown key (keys of consul: address, token, token_file, datacenter, tags, stale, include_warning, wait, max_conns, max_fetches, resolve_interval, resync_interval, tls)`},
		{"unknown key in a service", "services:\n  a:\n    polcy: random\n",
			`line 3: services.a.polcy: unknown key (keys of services.a: policy, max_list_entries, hash_subset, aliases, tags, rate_limit, max_drop_share, max_rate_limit_drop_share, child_policy, latency_outliers)`},
		{"unknown key in a deep section", "load_reports:\n  tls:\n    ca: x\n",
			`line 3: load_reports.tls.ca: unknown key (keys of load_reports.tls: enabled, ca_file, cert_file, key_file, server_name, insecure_skip_verify)`},
		{"every error at once", "limits:\n  max_streams: lots\n  max_conns: 1.5\nconsul:\n  wait: 15\n  stale: maybe\n",
			"line 2: limits.max_streams: \"lots\" is not an integer\n" +
				"line 3: limits.max_conns: \"1.5\" is not an integer\n" +
				"line 5: consul.wait: \"15\" is not a duration (want a number with a unit: 250ms, 15s, 1m, 1h)\n" +
				`line 6: consul.stale: "maybe" is not true or false`},
		{"float", "rate_limits:\n  max_drop_share: half\n", `line 2: rate_limits.max_drop_share: "half" is not a number`},
		{"integer overflow", "limits:\n  max_streams: 99999999999999999999\n", `line 2: limits.max_streams: "99999999999999999999" is not an integer`},
		{"exponent is not an integer", "limits:\n  max_streams: 1e3\n", `line 2: limits.max_streams: "1e3" is not an integer`},
		{"list for a string", "listen: [a, b]\n", `line 1: listen: want a string, not a list`},
		{"mapping for a duration", "shutdown_timeout: {a: 1}\n", `line 1: shutdown_timeout: want a duration such as 15s, not a mapping`},
		{"scalar for a section", "consul: localhost\n", `line 1: consul: want a mapping of consul's keys, not "localhost"`},
		{"scalar for a list", "dns:\n  allow: 10.0.0.0/8\n", `line 2: dns.allow: want a list, not "10.0.0.0/8"`},
		{"list element", "consul:\n  tags: [a, [b]]\n", `line 2: consul.tags[1]: want a string, not a list`},
		{"scalar for services", "services: user-srv\n", `line 1: services: want a mapping, not "user-srv"`},
		{"top level not a mapping", "- a\n- b\n", `line 1: want a mapping of the top level's keys, not a list`},
		{"key set twice", "listen: :1\nlog:\n  level: info\nlisten: :2\n", `line 4: listen: is set twice (first at line 1)`},
		{"service set twice", "services:\n  a: {}\n  a: {}\n", `line 3: services.a: is set twice (first at line 2)`},
		{"dotted service key is quoted", "services:\n  a.b:\n    x: 1\n", `line 3: services."a.b".x: unknown key (keys of services."a.b": policy, max_list_entries, hash_subset, aliases, tags, rate_limit, max_drop_share, max_rate_limit_drop_share, child_policy, latency_outliers)`},
		{"two documents", "listen: :1\n---\nlisten: :2\n", `line 2: a second YAML document: a config file holds one (remove the ---)`},
		{"syntax", "listen: :1\n  bad: indent\n", `line 2: YAML syntax: mapping values are not allowed in this context`},
		{"tab indentation", "consul:\n\taddress: x\n", `line 2: YAML syntax: found character that cannot start any token`},
		{"mapping key", "? [a]\n: b\n", `line 1: a key is a list: keys are names`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse(%q) = nil error, want %q", tt.in, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("Parse error:\n got: %s\nwant: %s", err, tt.want)
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Errorf("Parse error is %T, want Errors", err)
			}
			if diff := cmp.Diff(Default(), got); diff != "" {
				t.Errorf("Parse returned a config on error (-Default +got):\n%s", diff)
			}
		})
	}
}

// deepMerges is a services section of n services, each merging the
// previous one into itself.
func deepMerges(n int) string {
	var b strings.Builder
	b.WriteString("services:\n  s0: &s0 {policy: random}\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "  s%d: &s%d {<<: *s%d}\n", i, i, i-1)
	}
	return b.String()
}

func TestParseAliases(t *testing.T) {
	// Each service merges the previous one twice: 2^30 values expanded.
	var bomb strings.Builder
	bomb.WriteString("services:\n  s0: &s0 {policy: random}\n")
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&bomb, "  s%d: &s%d {<<: [*s%d, *s%d]}\n", i, i, i-1, i-1)
	}
	tests := []struct {
		name, in, want string
	}{
		{"bomb", bomb.String(), "line 3: services.s14: the file expands to more than 100000 values (aliases): too many"},
		{"deep merges", deepMerges(70), "line 2: services.s61.policy: nests more than 64 deep (merge keys count)"},
		{"merge of itself", "consul: &a\n  <<: *a\n", "line 2: consul: *a refers to the value that holds it"},
		{"merge of itself in a list", "consul: &a\n  <<: [*a]\n", "line 2: consul: *a refers to the value that holds it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := Parse([]byte(tt.in))
			if err == nil || err.Error() != tt.want {
				t.Errorf("Parse error:\n got: %v\nwant: %s", err, tt.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Parse took %v", d)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("listen: 127.0.0.1:7001\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil || c.Listen != "127.0.0.1:7001" {
		t.Errorf("Load(good) = %q, %v", c.Listen, err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("listen: :1\nlimits:\n  max_streams: x\n  nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	want := bad + ": line 3: limits.max_streams: \"x\" is not an integer\n" +
		bad + ": line 4: limits.nope: unknown key (keys of limits: max_streams, max_streams_per_ip, max_streams_per_conn, max_stream_rate_per_ip, stream_burst_per_ip, max_ignored_messages, max_conns, max_conns_per_ip, send_timeout, max_request_size)"
	if err == nil || err.Error() != want {
		t.Errorf("Load(bad) error:\n got: %v\nwant: %s", err, want)
	}
	missing := filepath.Join(dir, "missing.yaml")
	_, err = Load(missing)
	if want := missing + ": cannot be read: no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("Load(missing) error = %v, want %s", err, want)
	}
}
