package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"

	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Backend is one instance of the example service. New binds its listener;
// Serve runs it. Its methods are safe for concurrent use.
type Backend struct {
	// Read-only after New.
	cfg    Config // defaults applied; ID and Advertise set
	lis    net.Listener
	srv    *grpc.Server
	health *health.Server
	rec    *loadreport.Recorder
	orca   *loadreport.Reporter
	tls    *tlsfiles.Store // nil without TLS
	log    *slog.Logger
	ready  chan struct{} // closed by Serve once serving and registered

	started  atomic.Bool   // Serve has been called
	latency  atomic.Int64  // time.Duration added to each User call
	callCPU  atomic.Int64  // time.Duration of CPU each User call spins for
	burn     atomic.Uint64 // math.Float64bits of the share of a core to burn
	burnWake chan struct{} // buffered; SetCPUBurn wakes an idle burner

	// healthMu orders health updates, so that the status SetServing asked
	// for last is the one reported.
	healthMu sync.Mutex
	serving  bool // guarded by healthMu: the status SetServing asked for

	// consulMu serializes registration changes; it is held across the
	// (bounded) calls to Consul so that a Deregister cannot be overtaken
	// by a registration still in flight.
	consulMu   sync.Mutex
	registered bool // guarded by consulMu
	left       bool // guarded by consulMu: Deregister was called
}

// New checks cfg, binds the listener and prepares the gRPC server. It does
// not block and does not talk to Consul. The caller must call Serve, which
// alone releases the listener (with a done context it does so at once).
func New(cfg Config) (*Backend, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	if cfg.Advertise == "" {
		cfg.Advertise = lis.Addr().String()
	}
	host, port, err := consulreg.SplitAddr(cfg.Advertise)
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("backend: listening on %s, no address to advertise (set Advertise): %w", lis.Addr(), err)
	}
	if cfg.ID == "" {
		cfg.ID = cfg.Service + "-" + host + "-" + strconv.Itoa(port)
		if err := validID(cfg.ID); err != nil {
			lis.Close()
			return nil, err
		}
	}

	rec, err := loadreport.NewRecorder(loadreport.RecorderConfig{Window: cfg.LoadWindow})
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("backend: %w", err)
	}
	reporter, err := loadreport.NewReporter(capacityMetrics{rec: rec, capacity: cfg.Capacity}, loadreport.ReporterConfig{
		MinInterval: cfg.ORCAMinInterval,
		Logger:      cfg.Logger.With("id", cfg.ID),
	})
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("backend: %w", err)
	}

	var store *tlsfiles.Store
	var extra []grpc.ServerOption
	unaryChain := []grpc.UnaryServerInterceptor{rec.UnaryServerInterceptor()}
	streamChain := []grpc.StreamServerInterceptor{rec.StreamServerInterceptor()}
	if cfg.TLS.CertFile != "" {
		tcfg := cfg.TLS
		tcfg.ClientCertOptional = cfg.HealthWithoutClientCert
		if tcfg.Logger == nil {
			tcfg.Logger = cfg.Logger.With("id", cfg.ID)
		}
		if store, err = tlsfiles.New(tcfg); err != nil {
			lis.Close()
			reporter.Close()
			return nil, fmt.Errorf("backend: %w", err)
		}
		creds, err := store.ServerCredentials()
		if err != nil {
			lis.Close()
			reporter.Close()
			return nil, fmt.Errorf("backend: %w", err)
		}
		extra = append(extra, grpc.Creds(creds))
		if cfg.HealthWithoutClientCert {
			u, st := tlsfiles.RequireVerifiedClient(healthpb.Health_Check_FullMethodName, healthpb.Health_Watch_FullMethodName)
			unaryChain = append(unaryChain, u)
			streamChain = append(streamChain, st)
		}
	}

	b := &Backend{
		cfg:      cfg,
		tls:      store,
		lis:      lis,
		health:   health.NewServer(),
		rec:      rec,
		orca:     reporter,
		log:      cfg.Logger.With("component", "backend", "id", cfg.ID),
		ready:    make(chan struct{}),
		burnWake: make(chan struct{}, 1),
	}
	b.serving = true
	b.SetLatency(cfg.Latency)
	b.SetCallCPU(cfg.CallCPU)
	b.SetCPUBurn(cfg.CPUBurn)

	// The token derives from the ID this instance registers under, which
	// is what balancers derive it from (discovery.Endpoint.TokenID), even
	// when another node registers the same ID.
	v := lbtoken.NewVerifier(cfg.ID, cfg.LBTokenKey, cfg.RequireLBToken, map[string]bool{
		healthpb.Health_Check_FullMethodName: true,
		healthpb.Health_List_FullMethodName:  true,
		healthpb.Health_Watch_FullMethodName: true,
		// Balancers ask for load reports without a token.
		orcasvc.OpenRcaService_StreamCoreMetrics_FullMethodName: true,
	})
	if cfg.AcceptUnkeyedLBToken && cfg.LBTokenKey.Keyed() {
		v.Accept = []string{lbtoken.ForID(cfg.ID)}
	}
	// The recorder comes first, so that it counts every call that reaches
	// the backend, rejected ones included, and sees the added latency.
	// With HealthWithoutClientCert, the certificate check comes after it
	// and before the lb-token check.
	b.srv = grpc.NewServer(append(extra,
		grpc.ChainUnaryInterceptor(append(unaryChain, v.UnaryInterceptor(), b.latencyInterceptor)...),
		grpc.ChainStreamInterceptor(append(streamChain, v.StreamInterceptor())...),
	)...)
	healthpb.RegisterHealthServer(b.srv, b.health)
	reporter.Register(b.srv)
	userpb.RegisterUserServer(b.srv, &UserService{ID: cfg.ID, Addr: cfg.Advertise})
	return b, nil
}

// ReloadTLS reads the TLS files again and puts a good new certificate
// (and client CA bundle) in force for new connections; on error the
// material in force stays and the error names the file. It does nothing
// without TLS. cmd/backend calls it on SIGHUP; Serve also polls the files.
// It blocks while it reads them and is safe for concurrent use.
func (b *Backend) ReloadTLS() error {
	if b.tls == nil {
		return nil
	}
	return b.tls.Reload()
}

// TLS returns the store of the backend's TLS files, or nil without TLS.
func (b *Backend) TLS() *tlsfiles.Store { return b.tls }

// ID returns the instance's Consul service ID.
func (b *Backend) ID() string { return b.cfg.ID }

// Addr returns the advertised host:port: the one registered in Consul and
// reported in responses.
func (b *Backend) Addr() string { return b.cfg.Advertise }

// ListenAddr returns the address of the bound listener.
func (b *Backend) ListenAddr() net.Addr { return b.lis.Addr() }

// Ready returns a channel that Serve closes once the backend is serving and,
// with a Consul client, registered. It stays open if Serve fails first.
func (b *Backend) Ready() <-chan struct{} { return b.ready }

// SetServing sets the status the health service reports, overall and for
// the User service; Consul's check follows within CheckInterval. It does not
// block. Once Serve has begun to drain, the status stays NOT_SERVING.
func (b *Backend) SetServing(serving bool) {
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	b.serving = serving
	b.applyServingLocked()
}

// applyServingLocked reports b.serving through the health service. The
// health server does not block.
func (b *Backend) applyServingLocked() {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if b.serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	b.health.SetServingStatus("", st)
	b.health.SetServingStatus(userpb.User_ServiceDesc.ServiceName, st)
}

// Serve registers the backend in Consul (if configured), serves until ctx is
// done, then drains: health NOT_SERVING, deregister, wait DrainDelay, stop
// gracefully within ShutdownTimeout. It blocks until the server has stopped
// and may be called once. It returns nil when it stopped because ctx ended,
// and an error when registration or the server failed.
func (b *Backend) Serve(ctx context.Context) error {
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("backend: Serve called more than once")
	}
	if ctx.Err() != nil {
		b.lis.Close()
		return nil
	}
	b.healthMu.Lock()
	b.applyServingLocked()
	b.healthMu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- b.srv.Serve(b.lis) }()
	burnCtx, stopBurn := context.WithCancel(context.Background())
	burnDone := make(chan struct{})
	go func() {
		defer close(burnDone)
		b.burnCPU(burnCtx)
	}()
	defer func() {
		stopBurn()
		<-burnDone
	}()
	if b.tls != nil {
		pollCtx, stopPoll := context.WithCancel(context.Background())
		pollDone := make(chan struct{})
		go func() {
			defer close(pollDone)
			b.tls.Run(pollCtx)
		}()
		defer func() {
			stopPoll()
			<-pollDone
		}()
	}

	if err := b.register(ctx); err != nil {
		b.srv.Stop()
		<-errc
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	close(b.ready)
	b.log.Info("serving", "addr", b.cfg.Advertise, "listen", b.lis.Addr().String(), "consul", b.cfg.Consul != nil,
		"tls", b.tls != nil, "mtls", b.tls != nil && b.cfg.TLS.CAFile != "")

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		b.log.Error("server failed", "err", serveErr)
	}

	b.log.Info("draining", "drain_delay", b.cfg.DrainDelay)
	b.health.Shutdown()
	if err := b.Deregister(); err != nil {
		b.log.Warn("deregistration failed; Consul will reap the instance once its check is critical",
			"err", err, "after", b.cfg.DeregisterCriticalAfter)
	}
	if serveErr != nil {
		b.srv.Stop()
		return fmt.Errorf("backend: serving: %w", serveErr)
	}
	if b.cfg.DrainDelay > 0 {
		t := time.NewTimer(b.cfg.DrainDelay)
		<-t.C
	}
	// Load report streams last as long as their balancer wants; end them
	// so that the graceful stop need not wait for them.
	b.orca.Close()

	stopped := make(chan struct{})
	go func() {
		b.srv.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(b.cfg.ShutdownTimeout)
	select {
	case <-stopped:
	case <-t.C:
		b.log.Warn("graceful stop timed out; cutting remaining calls", "timeout", b.cfg.ShutdownTimeout)
		b.srv.Stop()
		<-stopped
	}
	t.Stop()
	<-errc // nil after GracefulStop or Stop
	b.log.Info("stopped")
	return nil
}

// register registers the instance and its gRPC health check with Consul,
// unless there is no client or Deregister was called.
func (b *Backend) register(ctx context.Context) error {
	if b.cfg.Consul == nil {
		return nil
	}
	b.consulMu.Lock()
	defer b.consulMu.Unlock()
	if b.left {
		return nil
	}
	in := consulreg.Instance{
		ID:                      b.cfg.ID,
		Service:                 b.cfg.Service,
		Addr:                    b.cfg.Advertise,
		Tags:                    b.cfg.Tags,
		Meta:                    b.cfg.Meta,
		Weight:                  b.cfg.Weight,
		CheckInterval:           b.cfg.CheckInterval,
		DeregisterCriticalAfter: b.cfg.DeregisterCriticalAfter,
	}
	if b.tls != nil {
		in.CheckTLS = true
		in.CheckTLSSkipVerify = !b.cfg.CheckTLSVerify
		in.CheckTLSServerName = b.cfg.CheckTLSServerName
	}
	if err := consulreg.Register(ctx, b.cfg.Consul, in); err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	b.registered = true
	b.log.Info("registered in Consul", "service", b.cfg.Service, "weight", b.cfg.Weight)
	return nil
}

// Deregister removes the instance from Consul and keeps Serve from
// registering it again; the server keeps serving. It blocks for at most
// 10 s and is safe to call more than once: later calls do nothing.
func (b *Backend) Deregister() error {
	b.consulMu.Lock()
	defer b.consulMu.Unlock()
	b.left = true
	if !b.registered {
		return nil
	}
	b.registered = false
	if err := consulreg.Deregister(context.Background(), b.cfg.Consul, b.cfg.ID); err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	b.log.Info("deregistered from Consul")
	return nil
}
