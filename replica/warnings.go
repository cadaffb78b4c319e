package replica

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/lookaside-lb/lookaside/config"
)

// Warnings returns what in a valid cfg cannot work as its author likely
// meant, one sentence each, for the log at start-up and on reload.
func Warnings(cfg config.Config) []string {
	var out []string
	if cfg.DNS.Listen != "" && !isStatic(cfg) && len(cfg.DNS.Balancers) == 0 {
		lbService := cfg.DNS.LBService
		if lbService == "" {
			lbService = cfg.Register.Service
		}
		if !cfg.Register.Enabled {
			out = append(out, fmt.Sprintf("dns.listen is set but this replica does not register in Consul (register.enabled is false): "+
				"the SRV records list the healthy instances of the Consul service %q, and with none registered clients find no balancer; "+
				"set register.enabled or dns.balancers", lbService))
		} else if cfg.DNS.LBService != "" && cfg.DNS.LBService != cfg.Register.Service {
			out = append(out, fmt.Sprintf("dns.lb_service %q differs from register.service %q: the SRV records do not list this replica",
				cfg.DNS.LBService, cfg.Register.Service))
		}
	}
	if cfg.Admin.Listen != "" && cfg.Admin.Pprof && !loopback(cfg.Admin.Listen) {
		out = append(out, fmt.Sprintf("admin.listen %q is not a loopback address and admin.pprof is on: profiles and the status page are open to that network", cfg.Admin.Listen))
	}
	return out
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
