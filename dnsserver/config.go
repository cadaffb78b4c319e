package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
)

// Child policies of the grpclb config published in TXT records.
const (
	RoundRobin = "round_robin"
	PickFirst  = "pick_first"
)

// Catalog knows the passing instances of services. *lbserver.Server is
// one.
type Catalog interface {
	// Endpoints returns the current endpoints of service. For a service it
	// was not asked about before it may block, until it has a first answer
	// or ctx is done; ok is false if it has none. Safe for concurrent use.
	Endpoints(ctx context.Context, service string) (snap discovery.Snapshot, ok bool)
}

// Balancers knows the live balancer replicas. Replicas (from a discovery
// source) and StaticBalancers are two.
type Balancers interface {
	// Balancers returns the replicas' addresses. It may block until it has
	// a first answer or ctx is done; ok is false if it has none. The
	// caller must not modify the slice. Safe for concurrent use.
	Balancers(ctx context.Context) (addrs []netip.AddrPort, ok bool)
}

// Mapper maps a DNS name of the zone ("users.lb.internal", lowercase,
// without trailing dot) to a service. lbserver.NameMapper is one.
type Mapper interface {
	Map(name string) (service string, err error)
}

// Config configures a Server. Start from DefaultConfig; New validates.
type Config struct {
	// Zone is the zone the server is authoritative for, such as
	// "lb.internal" (a trailing dot is optional; case is ignored).
	// Required.
	Zone string
	// Catalog gives the A/AAAA records of services. Required.
	Catalog Catalog
	// Balancers gives the SRV records. Required.
	Balancers Balancers
	// Names maps "<svc>.<zone>" to a service, and must strip the zone:
	// use the balancer's lbserver.NameMapper with Zone in its Zones, so
	// that aliases apply alike. Default: the first label.
	Names Mapper
	// TTL of every record, and the negative TTL (the SOA minimum).
	// Default 5 s; 1 s to 1 h, in whole seconds.
	TTL time.Duration
	// LookupTimeout bounds how long an answer waits for the Catalog or
	// Balancers (only while they have no first answer for a name). Default
	// 2 s; at most 30 s.
	LookupTimeout time.Duration
	// ChildPolicy is the grpclb child policy of services not in
	// ServiceChildPolicies: RoundRobin (the default) or PickFirst.
	ChildPolicy string
	// ServiceChildPolicies overrides ChildPolicy per service.
	ServiceChildPolicies map[string]string
	// MaxUDPSize is the largest UDP answer sent, and the EDNS0 buffer size
	// advertised. Default 1232 (no IP fragmentation); 512 to 4096.
	MaxUDPSize int
	// Logger receives the server's logs. Default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every field but Zone, Catalog and
// Balancers set to its default.
func DefaultConfig() Config {
	return Config{
		TTL:                  5 * time.Second,
		LookupTimeout:        2 * time.Second,
		ChildPolicy:          RoundRobin,
		ServiceChildPolicies: map[string]string{},
		MaxUDPSize:           1232,
		Logger:               slog.Default(),
	}
}

func validChildPolicy(p string) bool { return p == RoundRobin || p == PickFirst }

func (c Config) validate() error {
	var errs []error
	zone := strings.TrimSuffix(c.Zone, ".")
	if _, ok := dns.IsDomainName(zone); !ok || zone == "" || strings.ContainsAny(zone, "\\ *") {
		errs = append(errs, fmt.Errorf("zone %q is not a domain name", c.Zone))
	}
	if c.Catalog == nil {
		errs = append(errs, errors.New("no catalog"))
	}
	if c.Balancers == nil {
		errs = append(errs, errors.New("no balancers"))
	}
	if c.TTL < time.Second || c.TTL > time.Hour || c.TTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("TTL %v is not whole seconds in [1s, 1h]", c.TTL))
	}
	if c.LookupTimeout <= 0 || c.LookupTimeout > 30*time.Second {
		errs = append(errs, fmt.Errorf("lookup timeout %v is not in (0, 30s]", c.LookupTimeout))
	}
	if !validChildPolicy(c.ChildPolicy) {
		errs = append(errs, fmt.Errorf("child policy %q: want %s or %s", c.ChildPolicy, RoundRobin, PickFirst))
	}
	for svc, p := range c.ServiceChildPolicies {
		if !validChildPolicy(p) {
			errs = append(errs, fmt.Errorf("service %q: child policy %q: want %s or %s", svc, p, RoundRobin, PickFirst))
		}
	}
	if c.MaxUDPSize < dns.MinMsgSize || c.MaxUDPSize > dns.DefaultMsgSize {
		errs = append(errs, fmt.Errorf("max UDP size %d is not in [%d, %d]", c.MaxUDPSize, dns.MinMsgSize, dns.DefaultMsgSize))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("no logger"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dnsserver: invalid config: %w", err)
	}
	return nil
}

// ParseChildPolicies parses "round_robin,orders=pick_first": an item
// without '=' sets the default (empty if none), service=policy sets one
// service's. Policies are RoundRobin or PickFirst.
func ParseChildPolicies(spec string) (def string, perService map[string]string, err error) {
	perService = map[string]string{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		svc, p, ok := strings.Cut(item, "=")
		if !ok {
			p, svc = svc, ""
		}
		svc, p = strings.TrimSpace(svc), strings.TrimSpace(p)
		if !validChildPolicy(p) {
			return "", nil, fmt.Errorf("dnsserver: child policy %q: want %s or %s", item, RoundRobin, PickFirst)
		}
		switch {
		case !ok && def != "":
			return "", nil, fmt.Errorf("dnsserver: child policy %q: the default is set twice", item)
		case !ok:
			def = p
		case svc == "":
			return "", nil, fmt.Errorf("dnsserver: child policy %q: empty service", item)
		default:
			if _, dup := perService[svc]; dup {
				return "", nil, fmt.Errorf("dnsserver: child policy %q: service %q is set twice", item, svc)
			}
			perService[svc] = p
		}
	}
	return def, perService, nil
}

// ParseBalancers parses "10.0.0.5:7000,[2001:db8::5]:7000" into a static
// balancer list. Addresses must be IPs with a port (clients resolve SRV
// targets through this server, which only knows the zone); duplicates are
// rejected.
func ParseBalancers(spec string) (StaticBalancers, error) {
	var out StaticBalancers
	seen := map[netip.AddrPort]bool{}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(item)
		if err != nil || ap.Port() == 0 || !ap.Addr().IsValid() || ap.Addr().IsUnspecified() || ap.Addr().Zone() != "" {
			return nil, fmt.Errorf("dnsserver: balancer %q is not an IP:port (hostnames are not accepted)", item)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if seen[ap] {
			return nil, fmt.Errorf("dnsserver: balancer %s is listed twice", ap)
		}
		seen[ap] = true
		out = append(out, ap)
	}
	if len(out) == 0 {
		return nil, errors.New("dnsserver: no balancer address")
	}
	return out, nil
}
