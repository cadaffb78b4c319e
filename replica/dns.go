package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// dnsConfig is the DNS responder's configuration from cfg, without its
// Catalog, Names, Balancers and Logger.
func dnsConfig(cfg config.Config) (dnsserver.Config, error) {
	d := cfg.DNS
	dc := dnsserver.DefaultConfig()
	dc.Zone = d.Zone // config.Validate: no dot at either end
	dc.TTL = d.TTL.D()
	if cfg.Balancer.ChildPolicy != "" {
		dc.ChildPolicy = cfg.Balancer.ChildPolicy
	}
	dc.ServiceChildPolicies = cfg.ChildPolicies()
	if len(d.Allow) > 0 {
		allow, err := dnsserver.ParseAllow(strings.Join(d.Allow, ","))
		if err != nil {
			return dc, fmt.Errorf("dns.allow: %w", err)
		}
		dc.Allow = allow
	}
	dc.RateLimit, dc.RateBurst, dc.MaxInflight, dc.MaxTCPConns = d.RateLimit, d.RateBurst, d.MaxInflight, d.MaxTCPConns
	dc.MaxTCPConnsPerSource = min(dc.MaxTCPConnsPerSource, dc.MaxTCPConns)
	return dc, nil
}

// dnsPart is the DNS responder and, with Consul, the watch of the balancer
// replicas its SRV records list.
type dnsPart struct {
	srv      *dnsserver.Server
	replicas *dnsserver.Replicas // nil without Consul
	listen   string
	cfg      dnsserver.Config
	log      *slog.Logger
}

// newDNS builds the DNS responder of cfg, or returns nil when dns.listen
// is empty. self is this replica's address for the SRV records when
// backends are static and dns.balancers is empty; it is only known once
// the balancer listens, so newDNS runs in Run.
func newDNS(cfg config.Config, r *Replica, self string) (*dnsPart, error) {
	if cfg.DNS.Listen == "" {
		return nil, nil
	}
	dc, err := dnsConfig(cfg)
	if err != nil {
		return nil, err
	}
	dc.Catalog = r.srv
	dc.Names = currentNames{r.srv}
	dc.Logger = r.log
	dc.Observer = r.metrics
	p := &dnsPart{listen: cfg.DNS.Listen, log: r.log}
	switch {
	case len(cfg.DNS.Balancers) > 0:
		lbs, err := dnsserver.ParseBalancers(strings.Join(cfg.DNS.Balancers, ","))
		if err != nil {
			return nil, fmt.Errorf("dns.balancers: %w", err)
		}
		dc.Balancers = lbs
	case isStatic(cfg):
		if cfg.Register.Advertise != "" {
			self = cfg.Register.Advertise
		}
		lbs, err := dnsserver.ParseBalancers(self)
		if err != nil {
			return nil, fmt.Errorf("dns.listen without Consul lists this replica, %s, which is not an IP:port: set dns.balancers or register.advertise", self)
		}
		dc.Balancers = lbs
	default:
		// A source of its own (without consul.tags): its lines say so.
		cc := r.consulSourceConfig(cfg.Consul, r.log.With("source", "dns_replicas"))
		cc.IncludeWarning = false
		cc.Tags = nil
		// One service watched: one fetch at a time is enough, and keeps
		// this source within 4 of the shared consul.max_conns.
		cc.MaxFetches = 1
		src, err := consul.New(cc)
		if err != nil {
			return nil, err
		}
		lbService := cfg.DNS.LBService
		if lbService == "" {
			lbService = cfg.Register.Service
		}
		p.replicas = dnsserver.NewReplicas(src, lbService, r.log)
		dc.Balancers = p.replicas
	}
	if p.srv, err = dnsserver.New(dc); err != nil {
		return nil, err
	}
	p.cfg = dc
	return p, nil
}

// start listens and serves until stop is called; a failure while serving
// calls fail. stop returns once everything has stopped; it may be called
// more than once.
func (p *dnsPart) start(fail func()) (addr net.Addr, stop func() error, err error) {
	pc, tl, err := dnsserver.Listen(p.listen)
	if err != nil {
		return nil, nil, fmt.Errorf("dns.listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	run := func(f func(context.Context) error) {
		err := f(ctx)
		if err != nil {
			p.log.Error("DNS responder failed", "err", err)
			fail()
		}
		errs <- err
	}
	n := 1
	go run(func(ctx context.Context) error { return p.srv.Serve(ctx, pc, tl) })
	if p.replicas != nil {
		n++
		go run(p.replicas.Run)
	}
	p.log.Info("DNS responder", "addr", pc.LocalAddr().String(), "zone", p.srv.Zone(), "ttl", p.cfg.TTL.String(), "child_policy", p.cfg.ChildPolicy)
	var once sync.Once
	var stopErr error
	return pc.LocalAddr(), func() error {
		once.Do(func() {
			cancel()
			var all []error
			for range n {
				all = append(all, <-errs)
			}
			stopErr = errors.Join(all...)
		})
		return stopErr
	}, nil
}

var _ dnsserver.Catalog = (*lbserver.Server)(nil)

// currentNames maps names with the balancer's aliases and zones in force,
// so that a reload reaches DNS answers too.
type currentNames struct{ srv *lbserver.Server }

func (c currentNames) Map(name string) (string, error) { return c.srv.Names().Map(name) }
