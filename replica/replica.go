package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/admin"
	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/metrics"
	_ "github.com/lookaside-lb/lookaside/policy/all" // every policy, by name
)

// Options are what a replica gets besides its configuration.
type Options struct {
	// Logger receives every part's logs; Level, if set, is the level
	// variable behind it, which Reload sets from log.level. Default: a
	// text logger on stderr built by NewLogger from the config.
	Logger *slog.Logger
	Level  *slog.LevelVar
	// Listening, if set, is called once from Run when every listener is
	// bound, before serving.
	Listening func(Addrs)
}

// Addrs are the addresses a running replica listens on; nil for a
// listener that is off.
type Addrs struct {
	Balancer net.Addr
	Admin    net.Addr
	DNS      net.Addr
}

// Replica is one balancer replica. Create it with New and run it once
// with Run; Reload may be called at any time, also concurrently with Run.
type Replica struct {
	log       *slog.Logger
	level     *slog.LevelVar
	listening func(Addrs)
	srv       *lbserver.Server
	src       discovery.Source
	kind      string      // "consul", "static", ...
	consul    *api.Client // nil with static backends
	// consulAddr is Consul's address as configured, for the status page.
	consulAddr string
	serverTLS  *tlsfiles.Store // nil without tls.cert_file
	orcaTLS    *tlsfiles.Store // nil without load_reports.tls
	metrics    *metrics.Metrics
	started    time.Time

	addr     atomic.Pointer[string]             // the balancer's address, once listening
	regID    atomic.Pointer[string]             // the Consul ID of this replica, once registered
	replicas atomic.Pointer[discovery.Snapshot] // the replicas registered in Consul
	draining atomic.Bool

	mu  sync.Mutex
	cfg config.Config // guarded by mu: the configuration in force

	ran atomic.Bool
}

// New checks cfg and builds the replica's parts, without listening or
// talking to Consul. Errors name the configuration field.
func New(cfg config.Config, opts Options) (*Replica, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Replica{log: opts.Logger, level: opts.Level, listening: opts.Listening, cfg: cfg, started: time.Now(), consulAddr: cfg.Consul.Address}
	if r.log == nil {
		log, level, err := NewLogger(cfg.Log, stderr)
		if err != nil {
			return nil, err
		}
		r.log, r.level = log, level
	}
	lc := lbConfig(cfg)
	var err error
	if r.serverTLS, err = serverTLS(cfg.TLS, cfg.Register.Enabled, r.log); err != nil {
		return nil, err
	}
	if r.orcaTLS, err = clientTLS("load_reports.tls", cfg.LoadReports.TLS, r.log); err != nil {
		return nil, err
	}
	if r.orcaTLS != nil {
		lc.LoadReport.Credentials = r.orcaTLS.ClientCredentials()
	}
	if f := cfg.Balancer.LBTokenKeyFile; f != "" {
		key, err := lbtoken.LoadKey(f, r.log)
		if err != nil {
			return nil, fmt.Errorf("balancer.lb_token_key_file: %w", err)
		}
		lc.LBTokenKey = key
	}
	if !isStatic(cfg) || cfg.Register.Enabled {
		c, err := consulClient(cfg.Consul)
		if err != nil {
			return nil, err
		}
		r.consul = c
	}
	r.metrics = metrics.New(metrics.Sources{})
	if isStatic(cfg) {
		src, kind, err := staticSource(cfg.Static)
		if err != nil {
			return nil, err
		}
		r.src, r.kind = src, kind
	} else {
		src, err := consul.New(r.consulSourceConfig(cfg.Consul, r.log))
		if err != nil {
			return nil, err
		}
		r.src, r.kind = src, "consul"
	}
	lc.Source = r.src
	lc.Logger = r.log
	lc.Observer = r.metrics
	srv, err := lbserver.New(lc)
	if err != nil {
		return nil, err
	}
	r.srv = srv
	ms := metrics.Sources{Balancer: srv}
	if d, ok := r.src.(discovery.Directory); ok {
		ms.Directory = d
	}
	if cs, ok := r.src.(*consul.Source); ok {
		ms.Consul = cs
	}
	ms.Certificates = map[string]func() time.Time{}
	if s := r.serverTLS; s != nil {
		ms.Certificates["balancer"] = func() time.Time { return s.Info().NotAfter }
	}
	if s := r.orcaTLS; s != nil {
		ms.Certificates["orca"] = func() time.Time { return s.Info().NotAfter }
	}
	r.metrics.Attach(ms)
	return r, nil
}

// Start builds a replica of cfg (New), runs it (Run) until ctx ends, and
// waits until it listens: it returns the replica, its addresses, and a
// channel that receives Run's result once it returns. An error means it
// did not get to listen (a Run that failed before is waited for).
// opts.Listening, if set, is still called.
func Start(ctx context.Context, cfg config.Config, opts Options) (*Replica, Addrs, <-chan error, error) {
	addrs := make(chan Addrs, 1)
	listening := opts.Listening
	opts.Listening = func(a Addrs) {
		if listening != nil {
			listening(a)
		}
		addrs <- a
	}
	r, err := New(cfg, opts)
	if err != nil {
		return nil, Addrs{}, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case a := <-addrs:
		return r, a, done, nil
	case err := <-done:
		if err == nil {
			err = errors.New("replica: stopped before listening")
		}
		return nil, Addrs{}, nil, err
	}
}

// Server is the replica's balancer, for tests and status.
func (r *Replica) Server() *lbserver.Server { return r.srv }

// Config returns the configuration in force.
func (r *Replica) Config() config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// Run listens, registers the replica in Consul with register.enabled,
// and serves until ctx ends; then it shuts down within
// shutdown_timeout: health NOT_SERVING, deregistration and drain delay,
// the end of every stream, the DNS responder last. It returns nil after
// a clean shutdown. Run may be called once.
func (r *Replica) Run(ctx context.Context) error {
	if r.ran.Swap(true) {
		return errors.New("replica: Run called twice")
	}
	cfg := r.Config()
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		r.srv.Close()
		return fmt.Errorf("listen: %w", err)
	}
	defer lis.Close()
	addrs := Addrs{Balancer: lis.Addr()}
	a := lis.Addr().String()
	r.addr.Store(&a)

	// Helpers (certificate pollers, the admin listener, the replicas'
	// watch) run until Run returns; the admin listener until after the
	// drain, so that it can be watched.
	helpers, stopHelpers := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopHelpers(); wg.Wait() }()
	for _, s := range []*tlsfiles.Store{r.serverTLS, r.orcaTLS} {
		if s != nil {
			wg.Go(func() { s.Run(helpers) })
		}
	}
	if cfg.Admin.Listen != "" {
		alis, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			r.srv.Close()
			return fmt.Errorf("admin.listen: %w", err)
		}
		h, err := admin.New(admin.Options{Status: r.status, Metrics: r.metricsHandler(), Pprof: cfg.Admin.Pprof, Channelz: true, Logger: r.log})
		if err != nil {
			alis.Close()
			r.srv.Close()
			return err
		}
		addrs.Admin = alis.Addr()
		wg.Go(func() {
			if err := admin.Serve(helpers, alis, h); err != nil {
				r.log.Error("admin listener failed", "err", err)
			}
		})
	}
	if _, ok := r.src.(*consul.Source); ok && (cfg.Register.Enabled || cfg.DNS.Listen != "") {
		svc := cfg.DNS.LBService
		if svc == "" {
			svc = cfg.Register.Service
		}
		wg.Go(func() { r.watchReplicas(helpers, svc) })
	}
	ctx, fail := context.WithCancel(ctx)
	defer fail()

	stopDNS := func() error { return nil }
	dns, err := newDNS(cfg, r, lis.Addr().String())
	if err == nil && dns != nil {
		addrs.DNS, stopDNS, err = dns.start(fail)
	}
	if err != nil {
		r.srv.Close()
		return err
	}
	dnsStopping := false
	defer func() {
		if !dnsStopping {
			stopDNS() // on early returns; see below for the normal one
		}
	}()
	reg, err := registration(cfg, lis.Addr())
	if err != nil {
		r.srv.Close()
		return err
	}
	timeout := cfg.ShutdownTimeout.D()
	// The whole shutdown fits shutdown_timeout: Serve (health, drain,
	// streams, watchers) takes it but a moment kept for the DNS responder.
	serve := lbserver.ServeOptions{ShutdownTimeout: timeout - min(timeout/10, 500*time.Millisecond)}
	if err = serveTLS(r.serverTLS, &serve); err != nil {
		r.srv.Close()
		return err
	}
	if reg != nil {
		// Registered before serving: the health check fails for a moment
		// and then passes, which is what Consul expects of a new instance.
		if err := consulreg.Register(ctx, r.consul, *reg); err != nil {
			r.srv.Close()
			return err
		}
		r.log.Info("registered in Consul", "service", reg.Service, "id", reg.ID, "addr", reg.Addr)
		r.regID.Store(&reg.ID)
		serve.Drain = r.drain(reg.ID, cfg.Register.DrainDelay.D(), timeout)
	}
	var shutdownStart atomic.Pointer[time.Time]
	shutdownLogged := make(chan struct{})
	stopLog := context.AfterFunc(ctx, func() {
		now := time.Now()
		shutdownStart.Store(&now)
		r.draining.Store(true)
		r.log.Info("shutting down; a second signal exits at once", "timeout", timeout.String())
		close(shutdownLogged)
	})
	defer stopLog()
	r.log.Info("serving", "addr", lis.Addr().String(), "discovery", r.kind, "policy", cfg.Balancer.Policy)
	for _, w := range Warnings(cfg) {
		r.log.Warn("configuration: " + w)
	}
	if r.listening != nil {
		r.listening(addrs)
	}
	err = lbserver.Serve(ctx, lis, r.srv, serve)
	if ctx.Err() != nil {
		<-shutdownLogged // the line comes before the ones that end the shutdown
	}
	// The DNS responder answers until the drain is over: by then other
	// replicas' answers no longer list this one. It gets what is left of
	// shutdown_timeout.
	start := time.Now()
	if p := shutdownStart.Load(); p != nil {
		start = *p
	}
	dnsStopping = true
	dnsDone := make(chan error, 1)
	go func() { dnsDone <- stopDNS() }()
	left := time.NewTimer(max(timeout-time.Since(start), 0))
	defer left.Stop()
	select {
	case dnsErr := <-dnsDone:
		err = errors.Join(err, dnsErr)
	case <-left.C:
		r.log.Warn("shutdown: DNS responder still stopping at shutdown_timeout; exiting without waiting", "timeout", timeout.String())
	}
	if err != nil {
		return err
	}
	r.log.Info("stopped", "shutdown", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// drain deregisters the replica and waits drainDelay for that to reach
// clients, both cut when ctx ends (its share of shutdown_timeout spent).
func (r *Replica) drain(id string, drainDelay, timeout time.Duration) func(context.Context) {
	return func(ctx context.Context) {
		if err := consulreg.Deregister(ctx, r.consul, id); err != nil {
			msg := "deregistration failed; Consul drops this replica once its check is critical"
			if ctx.Err() != nil {
				msg = "shutdown: deregistration cut to fit shutdown_timeout; Consul drops this replica once its check is critical"
			}
			r.log.Warn(msg, "err", err)
			return
		}
		start := time.Now()
		timer := time.NewTimer(drainDelay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-ctx.Done():
			r.log.Warn("shutdown: register.drain_delay cut to fit shutdown_timeout", "waited", time.Since(start).Round(time.Millisecond).String(),
				"drain_delay", drainDelay.String(), "shutdown_timeout", timeout.String())
		}
	}
}

// registration returns the Consul registration of this replica listening
// on addr, or nil without register.enabled.
func registration(cfg config.Config, addr net.Addr) (*consulreg.Instance, error) {
	rc := cfg.Register
	if !rc.Enabled {
		return nil, nil
	}
	adv := rc.Advertise
	if adv == "" {
		adv = addr.String()
	}
	host, port, err := consulreg.SplitAddr(adv)
	if err != nil {
		return nil, fmt.Errorf("register.advertise: %w", err)
	}
	id := rc.ID
	if id == "" {
		id = fmt.Sprintf("%s-%s-%d", rc.Service, host, port)
	}
	in := &consulreg.Instance{ID: id, Service: rc.Service, Addr: adv, CheckInterval: rc.CheckInterval.D()}
	if cfg.TLS.CertFile != "" {
		// Consul checks the replica over TLS; an agent verifies with its
		// own CA, which seldom holds the balancer's, so it does not verify.
		// Under mTLS the check needs no certificate (serverTLS).
		in.CheckTLS, in.CheckTLSSkipVerify = true, true
	}
	if err := in.Validate(); err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	return in, nil
}
