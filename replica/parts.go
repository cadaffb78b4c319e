package replica

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/discovery/static"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy"
)

// consulClient builds the process's one Consul client, so that every part
// together stays within consul.max_conns.
func consulClient(c config.Consul) (*api.Client, error) {
	client, err := consul.NewClient(consul.ClientConfig{
		Address:    c.Address,
		Token:      c.Token,
		TokenFile:  c.TokenFile,
		Datacenter: c.Datacenter,
		MaxConns:   c.MaxConns,

		UseTLS:             c.TLS.Enabled,
		CAFile:             c.TLS.CAFile,
		CertFile:           c.TLS.CertFile,
		KeyFile:            c.TLS.KeyFile,
		ServerName:         c.TLS.ServerName,
		InsecureSkipVerify: c.TLS.InsecureSkipVerify,
	})
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	return client, nil
}

// isStatic reports whether cfg lists fixed backends instead of Consul.
func isStatic(cfg config.Config) bool {
	return cfg.Static.File != "" || len(cfg.Static.Services) > 0
}

// staticSource builds the fixed list of backends, from static.file or
// static.services (the latter parsed by the same rule as -static).
func staticSource(s config.Static) (discovery.Source, string, error) {
	if s.File != "" {
		services, err := static.LoadFile(s.File)
		if err != nil {
			return nil, "", fmt.Errorf("static.file: %w", err)
		}
		return static.New(services), "static file " + s.File, nil
	}
	var spec []string
	for _, svc := range slices.Sorted(maps.Keys(s.Services)) {
		spec = append(spec, svc+"="+strings.Join(s.Services[svc], ","))
	}
	services, err := static.ParseSpec(strings.Join(spec, ";"))
	if err != nil {
		return nil, "", fmt.Errorf("static.services: %w", err)
	}
	return static.New(services), "static", nil
}

// consulSourceConfig is a Consul source's configuration from cfg's consul
// section, on the replica's one client and reporting to its metrics.
func (r *Replica) consulSourceConfig(c config.Consul, log *slog.Logger) consul.Config {
	cc := consul.DefaultConfig()
	cc.Client = consul.API(r.consul)
	cc.Observer = r.metrics
	cc.Datacenter = c.Datacenter
	cc.AllowStale = c.Stale
	cc.IncludeWarning = c.IncludeWarning
	cc.WaitTime = c.Wait.D()
	cc.MaxFetches = c.MaxFetches
	cc.ResolveInterval = c.ResolveInterval.D()
	cc.ResyncInterval = c.ResyncInterval.D()
	cc.Tags = slices.Clone(c.Tags)
	cc.Logger = log
	return cc
}

// lbConfig is the balancer's configuration from cfg, without its Source,
// Logger and Observer, which New adds.
func lbConfig(cfg config.Config) lbserver.Config {
	lc := lbserver.DefaultConfig()
	lc.Settings = lbSettings(cfg)
	b := cfg.Balancer
	lc.MaxNameLength = b.MaxNameLength
	lc.ClientStatsInterval = b.ClientStatsInterval.D()
	lc.InitialRequestTimeout = b.InitialRequestTimeout.D()
	lc.FirstListTimeout = b.FirstListTimeout.D()
	lc.WatchLinger = b.WatchLinger.D()
	lc.MaxServices = b.MaxServices
	lc.MaxStreamAge = b.MaxStreamAge.D()
	lc.Transport = b.Transport
	lc.MaxRequestSize = cfg.Limits.MaxRequestSize
	lc.LoadReports = cfg.LoadReports.Enabled
	lc.XDS = cfg.XDS.Enabled
	lc.LoadReport.Interval = cfg.LoadReports.Interval.D()
	return lc
}

// lbSettings is the reloadable part of the balancer's configuration.
func lbSettings(cfg config.Config) lbserver.Settings {
	ls := lbserver.DefaultSettings()
	b := cfg.Balancer
	ls.Policy = b.Policy
	ls.PolicyOptions.MaxEntries = b.MaxListEntries
	ls.PolicyOptions.HashSubset = b.HashSubset
	ls.Zones = cfg.Zones()
	ls.Aliases = cfg.Aliases()

	l := cfg.Limits
	ls.MaxStreams, ls.MaxStreamsPerIP, ls.MaxStreamsPerConn = l.MaxStreams, l.MaxStreamsPerIP, l.MaxStreamsPerConn
	ls.MaxStreamRatePerIP, ls.StreamBurstPerIP = l.MaxStreamRatePerIP, l.StreamBurstPerIP
	ls.MaxIgnoredMessages = l.MaxIgnoredMessages
	ls.MaxConns, ls.MaxConnsPerIP = l.MaxConns, l.MaxConnsPerIP
	ls.SendTimeout = l.SendTimeout.D()

	lr := cfg.LoadReports
	ls.LoadWeight.BlackoutPeriod = lr.Blackout.D()
	ls.LoadWeight.OverloadThreshold = lr.OverloadThreshold
	ls.LoadWeight.MaxDropShare = lr.MaxDropShare
	ls.LoadWeight.Outliers = lr.LatencyOutliers.Outliers()

	rl := cfg.RateLimits
	ls.MaxRateLimitDropShare = rl.MaxDropShare
	ls.MaxClientRateShare = rl.MaxClientRateShare
	ls.MaxClientCallRate = rl.MaxClientCallRate

	child := cfg.ChildPolicies()
	for name, s := range cfg.Canonical().Services {
		ss := lbserver.ServiceSettings{
			Policy:        s.Policy,
			PolicyOptions: policy.Options{MaxEntries: s.MaxListEntries, HashSubset: s.HashSubset},
			RateLimit:     s.RateLimit,
			ChildPolicy:   child[name],
		}
		if ss.ChildPolicy == "" {
			ss.ChildPolicy = b.ChildPolicy
		}
		if s.MaxDropShare != nil {
			ss.MaxDropShare = *s.MaxDropShare
		}
		if s.MaxRateLimitDropShare != nil {
			ss.MaxRateLimitDropShare = *s.MaxRateLimitDropShare
		}
		switch {
		case s.LatencyOutliers == nil:
		case *s.LatencyOutliers:
			ss.LatencyOutliers = lbserver.OutliersOn
		default:
			ss.LatencyOutliers = lbserver.OutliersOff
		}
		ls.Services[name] = ss
	}
	return ls
}
