package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/clock"
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
	// Logger receives the server's logs. Default slog.Default(). Lines a
	// client can cause are limited to one per kind per second.
	Logger *slog.Logger

	// Directory, if set, tells which services exist without a watch: an
	// A/AAAA question about a service it does not know is answered NODATA
	// at once, without asking the Catalog, so that DNS questions for
	// random names never make the balancer watch them. Default: the
	// Catalog, if it is a discovery.Directory; else none.
	Directory discovery.Directory

	// Allow lists the source networks answered. A UDP question from
	// elsewhere is dropped without an answer, a TCP connection from
	// elsewhere is closed at once; both are counted in Stats.Denied.
	// Default DefaultAllow: loopback and private ranges. Empty is
	// invalid: list 0.0.0.0/0 and ::/0 to answer everyone.
	Allow []netip.Prefix
	// RateLimit is the number of UDP answers per second each source (see
	// RateLimitIPv4Bits) gets, with bursts of RateBurst: a token bucket.
	// Over it, one question in RateLimitSlip gets an empty answer with the
	// TC bit (real clients retry over TCP, which is not rate limited) and
	// the others are dropped, as in BIND's response rate limiting.
	// Default 200; more than 0.
	RateLimit float64
	// RateBurst is the size of each source's bucket. Default 400; at
	// least 1.
	RateBurst int
	// RateLimitSlip: over the rate, every RateLimitSlip-th question gets a
	// truncated empty answer, the others nothing. 0 drops all, 1
	// truncates all. Default 2.
	RateLimitSlip int
	// RateLimitSources bounds the number of sources whose buckets are
	// kept; a new source evicts the one seen longest ago. Default 10000
	// (about 1 MB).
	RateLimitSources int
	// RateLimitIPv4Bits and RateLimitIPv6Bits are the prefix lengths that
	// make one source: by default one IPv4 address (32), and one IPv6 /64,
	// since a host may use any address of its /64.
	RateLimitIPv4Bits, RateLimitIPv6Bits int
	// MaxUDPRatio bounds a UDP answer to MaxUDPRatio times the size of its
	// question (and to the client's EDNS0 buffer and MaxUDPSize); a larger
	// answer is truncated with the TC bit. Default 10; 1 to 100.
	MaxUDPRatio int
	// MaxInflight bounds the UDP questions being answered at once (each
	// runs in its own goroutine); questions over it are dropped and
	// counted in Stats.Overloaded. Default 256.
	MaxInflight int
	// MaxTCPConns bounds the open TCP connections, MaxTCPConnsPerSource
	// those from one IP address; a connection over either is closed at
	// once and counted in Stats.TCPRejected. Each connection answers its
	// questions one at a time, so at most MaxInflight + MaxTCPConns
	// questions are answered at once. Defaults 128 and 16.
	MaxTCPConns, MaxTCPConnsPerSource int
	// Clock is the time seam of the rate limiter. Default clock.Real{}.
	Clock clock.Clock
	// Observer, if set, is told of every answer and of every question or
	// connection the guard stops, for metrics (see Observer). Default nil.
	Observer Observer
}

// DefaultAllow is the default of Config.Allow: loopback and the private
// ranges (RFC 1918, RFC 4193). Link-local ranges are not in it.
func DefaultAllow() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"} {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
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
		Allow:                DefaultAllow(),
		RateLimit:            200,
		RateBurst:            400,
		RateLimitSlip:        2,
		RateLimitSources:     10000,
		RateLimitIPv4Bits:    32,
		RateLimitIPv6Bits:    64,
		MaxUDPRatio:          10,
		MaxInflight:          256,
		MaxTCPConns:          128,
		MaxTCPConnsPerSource: 16,
		Clock:                clock.Real{},
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
	if len(c.Allow) == 0 {
		errs = append(errs, errors.New("no allowed source network (0.0.0.0/0 and ::/0 allow all)"))
	}
	for _, p := range c.Allow {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("allowed source network %v is not valid", p))
		}
	}
	if !(c.RateLimit > 0) || math.IsInf(c.RateLimit, 0) {
		errs = append(errs, fmt.Errorf("rate limit %v is not a positive number of answers per second", c.RateLimit))
	}
	if c.RateBurst < 1 {
		errs = append(errs, fmt.Errorf("rate burst %d is less than 1", c.RateBurst))
	}
	if c.RateLimitSlip < 0 || c.RateLimitSlip > 10 {
		errs = append(errs, fmt.Errorf("rate limit slip %d is not in [0, 10]", c.RateLimitSlip))
	}
	if c.RateLimitSources < 1 || c.RateLimitSources > 10_000_000 {
		errs = append(errs, fmt.Errorf("rate limit sources %d is not in [1, 10000000]", c.RateLimitSources))
	}
	if c.RateLimitIPv4Bits < 8 || c.RateLimitIPv4Bits > 32 || c.RateLimitIPv6Bits < 16 || c.RateLimitIPv6Bits > 128 {
		errs = append(errs, fmt.Errorf("rate limit prefixes /%d and /%d are not in [8, 32] and [16, 128]", c.RateLimitIPv4Bits, c.RateLimitIPv6Bits))
	}
	if c.MaxUDPRatio < 1 || c.MaxUDPRatio > 100 {
		errs = append(errs, fmt.Errorf("max UDP ratio %d is not in [1, 100]", c.MaxUDPRatio))
	}
	if c.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("max in-flight %d is less than 1", c.MaxInflight))
	}
	if c.MaxTCPConns < 1 || c.MaxTCPConnsPerSource < 1 {
		errs = append(errs, fmt.Errorf("max TCP connections %d and per source %d: want at least 1", c.MaxTCPConns, c.MaxTCPConnsPerSource))
	}
	if c.Clock == nil {
		errs = append(errs, errors.New("no clock"))
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

// ParseAllow parses "10.0.0.0/8,192.0.2.7,::1" into source networks: CIDR
// prefixes or single addresses. A prefix with host bits set is rejected,
// so that a typo does not widen the list silently.
func ParseAllow(spec string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(item, "/") {
			var err error
			if p, err = netip.ParsePrefix(item); err != nil {
				return nil, fmt.Errorf("dnsserver: source network %q: %w", item, err)
			}
			if p.Masked() != p {
				return nil, fmt.Errorf("dnsserver: source network %q has host bits set (did you mean %s?)", item, p.Masked())
			}
		} else {
			a, err := netip.ParseAddr(item)
			if err != nil || a.Zone() != "" {
				return nil, fmt.Errorf("dnsserver: source network %q is neither an address nor a CIDR prefix", item)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("dnsserver: no source network")
	}
	return out, nil
}
