package dnsserver

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"zone without trailing dot", func(c *Config) { c.Zone = "LB.Internal" }, ""},
		{"no zone", func(c *Config) { c.Zone = "" }, "zone"},
		{"root zone", func(c *Config) { c.Zone = "." }, "zone"},
		{"zone with space", func(c *Config) { c.Zone = "lb internal" }, "zone"},
		{"no catalog", func(c *Config) { c.Catalog = nil }, "catalog"},
		{"no balancers", func(c *Config) { c.Balancers = nil }, "balancers"},
		{"TTL 0", func(c *Config) { c.TTL = 0 }, "TTL"},
		{"TTL fraction", func(c *Config) { c.TTL = 1500 * time.Millisecond }, "TTL"},
		{"TTL 2h", func(c *Config) { c.TTL = 2 * time.Hour }, "TTL"},
		{"lookup timeout 0", func(c *Config) { c.LookupTimeout = 0 }, "lookup timeout"},
		{"child policy", func(c *Config) { c.ChildPolicy = "weighted_round_robin" }, "child policy"},
		{"service child policy", func(c *Config) { c.ServiceChildPolicies = map[string]string{"a": "x"} }, `service "a"`},
		{"UDP size", func(c *Config) { c.MaxUDPSize = 100 }, "UDP size"},
		{"logger", func(c *Config) { c.Logger = nil }, "logger"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.edit(&cfg)
			s, err := New(cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New: %v, want an error about %q", err, tc.want)
			case tc.want == "" && s.Zone() != "lb.internal.":
				t.Errorf("Zone() = %q", s.Zone())
			}
		})
	}
}

func TestParseChildPolicies(t *testing.T) {
	tests := []struct {
		spec    string
		def     string
		per     map[string]string
		wantErr string
	}{
		{"", "", map[string]string{}, ""},
		{"pick_first", PickFirst, map[string]string{}, ""},
		{"round_robin, orders=pick_first ,users=round_robin", RoundRobin, map[string]string{"orders": PickFirst, "users": RoundRobin}, ""},
		{"orders=pick_first", "", map[string]string{"orders": PickFirst}, ""},
		{"least_request", "", nil, "child policy"},
		{"pick_first,round_robin", "", nil, "default is set twice"},
		{"a=pick_first,a=round_robin", "", nil, "set twice"},
		{"=pick_first", "", nil, "empty service"},
	}
	for _, tc := range tests {
		def, per, err := ParseChildPolicies(tc.spec)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseChildPolicies(%q) error %v, want %q", tc.spec, err, tc.wantErr)
			}
			continue
		}
		if err != nil || def != tc.def || !cmp.Equal(per, tc.per) {
			t.Errorf("ParseChildPolicies(%q) = %q, %v, %v; want %q, %v", tc.spec, def, per, err, tc.def, tc.per)
		}
	}
}

func TestParseBalancers(t *testing.T) {
	got, err := ParseBalancers(" 10.0.0.5:7000,[2001:db8::5]:7001,[::ffff:10.0.0.6]:7000")
	want := StaticBalancers{netip.MustParseAddrPort("10.0.0.5:7000"), netip.MustParseAddrPort("[2001:db8::5]:7001"), netip.MustParseAddrPort("10.0.0.6:7000")}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseBalancers = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", " , ", "lb.internal:7000", "10.0.0.5", "10.0.0.5:0", "0.0.0.0:7000", "[::]:7000",
		"10.0.0.5:7000,10.0.0.5:7000", "[fe80::1%eth0]:7000"} {
		if got, err := ParseBalancers(bad); err == nil {
			t.Errorf("ParseBalancers(%q) = %v, want an error", bad, got)
		}
	}
}
