package replica

import (
	"strings"
	"testing"

	"github.com/lookaside-lb/lookaside/config"
)

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		edit func(*config.Config)
		want string // "" for none
	}{
		{"defaults", func(*config.Config) {}, ""},
		{"DNS without replicas to publish", func(c *config.Config) { c.DNS.Listen = "127.0.0.1:53" }, "dns.listen is set but this replica does not register"},
		{"DNS with registration", func(c *config.Config) {
			c.DNS.Listen, c.Register.Enabled, c.Register.Advertise = "127.0.0.1:53", true, "10.0.0.1:7000"
		}, ""},
		{"DNS publishing another service", func(c *config.Config) {
			c.DNS.Listen, c.Register.Enabled, c.DNS.LBService = "127.0.0.1:53", true, "other-lb"
		}, `dns.lb_service "other-lb" differs from register.service "lookaside"`},
		{"DNS with fixed balancers", func(c *config.Config) {
			c.DNS.Listen, c.DNS.Balancers = "127.0.0.1:53", []string{"10.0.0.1:7000"}
		}, ""},
		{"pprof on every address", func(c *config.Config) { c.Admin.Listen, c.Admin.Pprof = ":9090", true }, `admin.listen ":9090" is not a loopback address`},
		{"pprof on loopback", func(c *config.Config) { c.Admin.Listen, c.Admin.Pprof = "127.0.0.1:9090", true }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.Default()
			tc.edit(&cfg)
			got := strings.Join(Warnings(cfg), "\n")
			if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
				t.Errorf("warnings %q; want %q", got, tc.want)
			}
		})
	}
}
