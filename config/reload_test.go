package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestReloadable(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	tests := []struct {
		name string
		edit func(c *Config)
		want []string // paths needing a restart
	}{
		{"nothing", func(*Config) {}, nil},
		{"services", func(c *Config) {
			c.Services = map[string]Service{"a": {Policy: "random", Aliases: []string{"x"}, RateLimit: 5, MaxDropShare: f(0.1), ChildPolicy: "pick_first"}}
		}, nil},
		{"balancer policy and options", func(c *Config) {
			c.Balancer.Policy, c.Balancer.MaxListEntries, c.Balancer.HashSubset = "source_hash", 64, 3
			c.Balancer.ChildPolicy, c.Balancer.Zones = "pick_first", []string{"lb.example"}
		}, nil},
		{"limits", func(c *Config) {
			c.Limits.MaxStreams, c.Limits.MaxStreamsPerIP, c.Limits.MaxStreamsPerConn = 10, 5, 2
			c.Limits.MaxStreamRatePerIP, c.Limits.StreamBurstPerIP, c.Limits.MaxIgnoredMessages = 1, 1, 1
			c.Limits.MaxConns, c.Limits.MaxConnsPerIP, c.Limits.SendTimeout = 10, 5, Duration(time.Second)
		}, nil},
		{"raising max streams per conn", func(c *Config) { c.Limits.MaxStreamsPerConn = 101 }, []string{"limits.max_streams_per_conn"}},
		{"max request size", func(c *Config) { c.Limits.MaxRequestSize = 8192 }, []string{"limits.max_request_size"}},
		{"rate limits and overload", func(c *Config) {
			c.RateLimits = RateLimits{MaxDropShare: 0.5, MaxClientRateShare: 1, MaxClientCallRate: 10}
			c.LoadReports.Blackout, c.LoadReports.OverloadThreshold, c.LoadReports.MaxDropShare = 0, 0.8, 0.1
		}, nil},
		{"load report collection", func(c *Config) {
			c.LoadReports.Enabled, c.LoadReports.Interval, c.LoadReports.TLS.Enabled = false, Duration(2*time.Second), true
		}, []string{"load_reports.enabled", "load_reports.interval", "load_reports.tls.enabled"}},
		{"server TLS paths", func(c *Config) { c.TLS = ServerTLS{CertFile: "a", KeyFile: "b", ClientCAFile: "c"} }, []string{"tls.cert_file", "tls.client_ca_file", "tls.key_file"}},
		{"log", func(c *Config) { c.Log = Log{Level: "debug", Format: "json"} }, []string{"log.format"}},
		{"listeners", func(c *Config) {
			c.Listen, c.Admin.Listen, c.Admin.Pprof, c.DNS.Listen, c.DNS.Zone = ":1", ":2", true, ":3", "x.example"
		}, []string{"admin.listen", "admin.pprof", "dns.listen", "dns.zone", "listen"}},
		{"child policies with DNS on", func(c *Config) {
			c.Balancer.ChildPolicy = "pick_first"
			c.Services = map[string]Service{"a": {ChildPolicy: "pick_first", Policy: "random"}}
			c.DNS.Listen = ":53"
		}, []string{"balancer.child_policy", "dns.listen", "services.a.child_policy"}},
		{"consul, static, register", func(c *Config) {
			c.Consul.Address, c.Consul.Tags, c.Consul.TLS.CAFile = "x:1", []string{"t"}, "ca"
			c.Static.Services = map[string][]string{"a": {"127.0.0.1:1"}}
			c.Register.Enabled = true
		}, []string{"consul.address", "consul.tags", "consul.tls.ca_file", "register.enabled", "static.services.a"}},
		{"balancer restart fields", func(c *Config) {
			c.Balancer.MaxNameLength, c.Balancer.ClientStatsInterval, c.Balancer.MaxStreamAge = 100, 0, 0
			c.Balancer.LBTokenKeyFile = "k"
		}, []string{"balancer.client_stats_interval", "balancer.lb_token_key_file", "balancer.max_name_length", "balancer.max_stream_age"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := Default()
			tt.edit(&next)
			if diff := cmp.Diff(tt.want, Default().Reloadable(next)); diff != "" {
				t.Errorf("Reloadable (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReloadableChildPolicyWithDNS checks the per-service path: with the
// DNS responder on in both configs, a service's child policy needs a
// restart, its policy does not.
func TestReloadableChildPolicyWithDNS(t *testing.T) {
	cur := Default()
	cur.DNS.Listen = ":53"
	cur.Services = map[string]Service{"a": {}}
	next := cur
	next.Services = map[string]Service{"A": {ChildPolicy: "pick_first", Policy: "random"}}
	if got, want := cur.Reloadable(next), []string{"services.a.child_policy"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Reloadable = %v, want %v", got, want)
	}
	// Back: the service's child policy is removed.
	if got, want := next.Reloadable(cur), []string{"services.a.child_policy"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Reloadable back = %v, want %v", got, want)
	}
	// The same child policy under another spelling of the name is no change.
	cur.Services = map[string]Service{"a": {ChildPolicy: "pick_first"}}
	if got := cur.Reloadable(next); got != nil {
		t.Errorf("Reloadable of a renamed key = %v, want nil", got)
	}
}

// TestEveryPathClassified lists each leaf of the tree with its class, so
// that a new field is classified on purpose (and documented).
func TestEveryPathClassified(t *testing.T) {
	var reload, restart []string
	for _, p := range typePaths(reflect.TypeFor[Config](), "") {
		if IsReloadable(strings.ReplaceAll(p, "<name>", "x")) {
			reload = append(reload, p)
		} else {
			restart = append(restart, p)
		}
	}
	wantReload := "log.level balancer.policy balancer.max_list_entries balancer.hash_subset balancer.child_policy balancer.zones " +
		"load_reports.blackout load_reports.overload_threshold load_reports.max_drop_share " +
		"load_reports.latency_outliers.enabled load_reports.latency_outliers.factor load_reports.latency_outliers.readmit_factor " +
		"load_reports.latency_outliers.min_excess load_reports.latency_outliers.eject_after load_reports.latency_outliers.min_endpoints load_reports.latency_outliers.max_ejected_fraction " +
		"load_reports.latency_outliers.base_ejection_time load_reports.latency_outliers.max_ejection_time load_reports.latency_outliers.probe_share " +
		"rate_limits.max_drop_share rate_limits.max_client_rate_share rate_limits.max_client_call_rate " +
		"limits.max_streams limits.max_streams_per_ip limits.max_streams_per_conn limits.max_stream_rate_per_ip limits.stream_burst_per_ip " +
		"limits.max_ignored_messages limits.max_conns limits.max_conns_per_ip limits.send_timeout " +
		"services.<name>.policy services.<name>.max_list_entries services.<name>.hash_subset services.<name>.aliases services.<name>.tags " +
		"services.<name>.rate_limit services.<name>.max_drop_share services.<name>.max_rate_limit_drop_share services.<name>.child_policy services.<name>.latency_outliers"
	if got := strings.Join(reload, " "); got != wantReload {
		t.Errorf("reloadable paths:\n got: %s\nwant: %s", got, wantReload)
	}
	if len(reload)+len(restart) != len(typePaths(reflect.TypeFor[Config](), "")) || len(restart) < 40 {
		t.Errorf("restart paths: %v", restart)
	}
}

func TestDiff(t *testing.T) {
	a, b := Default(), Default()
	b.DNS.Allow = append([]string(nil), b.DNS.Allow[1:]...)
	b.Services = map[string]Service{"x": {}}
	a.Services = map[string]Service{"y": {}}
	a.Consul.Tags, b.Consul.Tags = nil, []string{} // nil and empty are alike
	want := []string{"dns.allow", "services.x", "services.y"}
	if diff := cmp.Diff(want, Diff(a, b)); diff != "" {
		t.Errorf("Diff (-want +got):\n%s", diff)
	}
}
