package config

import (
	"time"

	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/loadweight"
)

// Defaults that belong to the process rather than to a package's Config.
const (
	DefaultListen          = ":7000"
	DefaultShutdownTimeout = 15 * time.Second
	DefaultLogLevel        = "info"
	DefaultLogFormat       = "text"
	DefaultRegisterService = "lookaside"
	DefaultCheckInterval   = 2 * time.Second
	DefaultDrainDelay      = 2 * time.Second
	DefaultDNSZone         = "lb.internal"
)

// Default returns the configuration of an empty file: the defaults of
// lbserver's flags before the config file existed, taken from the
// packages' DefaultConfig functions. Load reports are on; the admin
// listener, the DNS responder and registration are off; backends come
// from Consul (the CONSUL_* environment, else 127.0.0.1:8500).
func Default() Config {
	lb := lbserver.DefaultConfig()
	cc := consul.DefaultConfig()
	dc := dnsserver.DefaultConfig()
	allow := make([]string, 0, len(dc.Allow))
	for _, p := range dc.Allow {
		allow = append(allow, p.String())
	}
	return Config{
		Listen:          DefaultListen,
		ShutdownTimeout: Duration(DefaultShutdownTimeout),
		Log:             Log{Level: DefaultLogLevel, Format: DefaultLogFormat},
		Consul: Consul{
			Wait:            Duration(cc.WaitTime),
			MaxConns:        consul.DefaultMaxConns,
			MaxFetches:      cc.MaxFetches,
			ResolveInterval: Duration(cc.ResolveInterval),
			ResyncInterval:  Duration(cc.ResyncInterval),
		},
		XDS: XDS{Enabled: lb.XDS},
		Register: Register{
			Service:       DefaultRegisterService,
			CheckInterval: Duration(DefaultCheckInterval),
			DrainDelay:    Duration(DefaultDrainDelay),
		},
		Balancer: Balancer{
			Policy:                lb.Policy,
			MaxListEntries:        lb.PolicyOptions.MaxEntries,
			HashSubset:            lb.PolicyOptions.HashSubset,
			ChildPolicy:           dc.ChildPolicy,
			MaxNameLength:         lb.MaxNameLength,
			ClientStatsInterval:   Duration(lb.ClientStatsInterval),
			InitialRequestTimeout: Duration(lb.InitialRequestTimeout),
			FirstListTimeout:      Duration(lb.FirstListTimeout),
			WatchLinger:           Duration(lb.WatchLinger),
			MaxServices:           lb.MaxServices,
			MaxStreamAge:          Duration(lb.MaxStreamAge),
			Transport:             lb.Transport,
		},
		LoadReports: LoadReports{
			Enabled:           lb.LoadReports,
			Interval:          Duration(lb.LoadReport.Interval),
			Blackout:          Duration(lb.LoadWeight.BlackoutPeriod),
			OverloadThreshold: lb.LoadWeight.OverloadThreshold,
			MaxDropShare:      lb.LoadWeight.MaxDropShare,
			LatencyOutliers:   latencyOutliers(lb.LoadWeight.Outliers),
		},
		RateLimits: RateLimits{
			MaxDropShare:       lb.MaxRateLimitDropShare,
			MaxClientRateShare: lb.MaxClientRateShare,
			MaxClientCallRate:  lb.MaxClientCallRate,
		},
		Limits: Limits{
			MaxStreams:         lb.MaxStreams,
			MaxStreamsPerIP:    lb.MaxStreamsPerIP,
			MaxStreamsPerConn:  lb.MaxStreamsPerConn,
			MaxStreamRatePerIP: lb.MaxStreamRatePerIP,
			StreamBurstPerIP:   lb.StreamBurstPerIP,
			MaxIgnoredMessages: lb.MaxIgnoredMessages,
			MaxConns:           lb.MaxConns,
			MaxConnsPerIP:      lb.MaxConnsPerIP,
			SendTimeout:        Duration(lb.SendTimeout),
			MaxRequestSize:     lb.MaxRequestSize,
		},
		DNS: DNS{
			Zone:        DefaultDNSZone,
			TTL:         Duration(dc.TTL),
			Allow:       allow,
			RateLimit:   dc.RateLimit,
			RateBurst:   dc.RateBurst,
			MaxInflight: dc.MaxInflight,
			MaxTCPConns: dc.MaxTCPConns,
		},
	}
}

// latencyOutliers is the configuration of o.
func latencyOutliers(o loadweight.OutlierConfig) LatencyOutliers {
	return LatencyOutliers{
		Enabled:            o.Enabled,
		Factor:             o.Factor,
		ReadmitFactor:      o.ReadmitFactor,
		MinExcess:          Duration(o.MinExcess),
		EjectAfter:         Duration(o.EjectAfter),
		MinEndpoints:       o.MinEndpoints,
		MaxEjectedFraction: o.MaxEjectedFraction,
		BaseEjectionTime:   Duration(o.BaseEjectionTime),
		MaxEjectionTime:    Duration(o.MaxEjectionTime),
		ProbeShare:         o.ProbeShare,
	}
}

// Outliers is the loadweight.OutlierConfig of l.
func (l LatencyOutliers) Outliers() loadweight.OutlierConfig {
	return loadweight.OutlierConfig{
		Enabled:            l.Enabled,
		Factor:             l.Factor,
		ReadmitFactor:      l.ReadmitFactor,
		MinExcess:          l.MinExcess.D(),
		EjectAfter:         l.EjectAfter.D(),
		MinEndpoints:       l.MinEndpoints,
		MaxEjectedFraction: l.MaxEjectedFraction,
		BaseEjectionTime:   l.BaseEjectionTime.D(),
		MaxEjectionTime:    l.MaxEjectionTime.D(),
		ProbeShare:         l.ProbeShare,
	}
}
