package lbserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/logattr"
)

// KeepaliveEnforcement is the keepalive policy grpclb clients need: grpc-go
// pings its balancer every 20 s even with no call in flight, and a server
// with grpc's default policy (5 min) answers such pings with a
// too_many_pings GOAWAY about once a minute.
var KeepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}

// KeepaliveParams makes the balancer probe idle clients, so streams of
// clients that vanished without a FIN are reaped.
var KeepaliveParams = keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}

// Per-connection buffers and windows. A balancer holds one connection per
// client channel (every grpc-go channel dials its balancer on its own), so
// what one connection costs is multiplied by the number of clients, while
// the messages are small: a client sends an initial request (a name of at
// most -max-name-length bytes) and a ClientStats every
// -client-stats-interval; the balancer sends a server list now and then
// (about 20 bytes per entry, a few KiB at -max-list-entries). grpc's
// defaults (32 KiB read and 32 KiB write buffer per connection, windows
// that grow with bandwidth estimation) are sized for bulk transfers.
const (
	// ReadBufferSize is each connection's read buffer, held for the
	// connection's life: 1 KiB holds what a client sends at once (the
	// stream's HEADERS and initial request, a few hundred bytes; a
	// ClientStats of a few dozen), so one read syscall serves it; a
	// larger frame (up to -max-request-size) is read past it. 4 KiB cost
	// 3 KiB more per client for nothing (BenchmarkClientMemory).
	ReadBufferSize = 1 << 10
	// WriteBufferSize is the buffer a connection gathers frames in
	// before writing them to the socket: one HTTP/2 frame of the default
	// maximum size (16 KiB), so that a long list is written in one
	// syscall. With SharedWriteBuffer it is taken from a pool for each
	// write and given back after it, so an idle connection holds none.
	WriteBufferSize = 16 << 10
	// SharedWriteBuffer pools the write buffers of all connections (see
	// WriteBufferSize).
	SharedWriteBuffer = true
	// InitialWindowSize is the HTTP/2 flow-control window of each stream
	// and of each connection: grpc's minimum, 64 KiB, which holds a
	// request of -max-request-size. Setting it turns off grpc's bandwidth
	// estimation, whose pings and windows growing to MiBs help bulk
	// transfers, never a balancer's small messages, and would let a
	// client that sends fast make the balancer hold that much unread.
	InitialWindowSize = 64 << 10
)

// ServerOptions returns the grpc.ServerOptions a balancer's grpc.Server
// needs, followed by extra: keepalive (KeepaliveEnforcement,
// KeepaliveParams) and the per-connection buffers and windows
// (ReadBufferSize, WriteBufferSize, SharedWriteBuffer, InitialWindowSize).
func ServerOptions(extra ...grpc.ServerOption) []grpc.ServerOption {
	return append([]grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(KeepaliveEnforcement),
		grpc.KeepaliveParams(KeepaliveParams),
		grpc.ReadBufferSize(ReadBufferSize),
		grpc.WriteBufferSize(WriteBufferSize),
		grpc.SharedWriteBuffer(SharedWriteBuffer),
		grpc.InitialWindowSize(InitialWindowSize),
		grpc.InitialConnWindowSize(InitialWindowSize),
	}, extra...)
}

// Register registers s as the grpc.lb.v1.LoadBalancer service of gs.
func (s *Server) Register(gs grpc.ServiceRegistrar) { lbpb.RegisterLoadBalancerServer(gs, s) }

// ServeOptions tune Serve.
type ServeOptions struct {
	// ShutdownTimeout bounds the whole shutdown, from the moment ctx ends
	// to Serve's return: health NOT_SERVING, Drain, GOAWAY and the end of
	// every stream, stopping the watchers. Drain may use all of it but a
	// reserve of a quarter (at most 5 s) kept for ending the streams;
	// streams still open shortly before the bound have their connections
	// closed. Each phase cut short is logged. Default (0) 15 s; negative
	// is an error.
	ShutdownTimeout time.Duration
	// Drain, if set, runs first when ctx ends, after the health service
	// turned NOT_SERVING and before any stream ends: deregister from
	// Consul there and wait for that to reach clients. Its ctx ends when
	// its share of ShutdownTimeout is spent; it must return soon after,
	// and Serve goes on without it if it does not.
	Drain func(ctx context.Context)
	// GRPC are extra options for the grpc.Server, after ServerOptions'.
	// Transport credentials go in Creds, not here: the connections the
	// balancer's own transport hands to the grpc.Server have done their
	// TLS handshake already. Interceptors here do not run for the
	// BalanceLoad streams the own transport serves (Config.Transport):
	// put a rule they must apply in Authorize too.
	GRPC []grpc.ServerOption
	// Creds, if set, are the listener's transport credentials (TLS), for
	// both transports (see Config.Transport). Nil serves plaintext.
	Creds credentials.TransportCredentials
	// Authorize, if set, runs before every BalanceLoad stream of the
	// balancer's own transport starts, with the stream's context (its
	// peer and TLS state) and method, and refuses the stream with the
	// status error it returns: the same rule as the interceptors in GRPC
	// apply to the grpc.Server's calls (such as a verified client
	// certificate, see tlsfiles.Verifier).
	Authorize func(ctx context.Context, method string) error
}

// HealthService is the name under which the balancer reports its health
// in grpc.health.v1, besides the overall "".
const HealthService = "grpc.lb.v1.LoadBalancer"

// Readiness tuning: how often Serve asks the source whether it is ready
// when the source's changed channel stays quiet, after how long a replica
// that is still not ready logs an ERROR, and how often it repeats it.
var (
	readyPoll         = time.Second
	notReadyLogAfter  = 10 * time.Second
	notReadyLogPeriod = time.Minute
)

// Ready reports whether the server has data to serve: true once its
// source has read its directory of services at least once (when
// cfg.Source implements discovery.Directory, its Lookup's ready flag;
// sources without a directory, such as static lists, are ready at once).
// A Directory stays ready once it was, so a replica that holds good data
// keeps serving it while Consul is unreachable. Safe for concurrent use;
// does not block.
func (s *Server) Ready() bool {
	dir, ok := s.cfg.Source.(discovery.Directory)
	if !ok {
		return true
	}
	_, ready, _ := dir.Lookup("")
	return ready
}

// directoryRunner is a discovery.Directory that reads its directory only
// while Run runs (until ctx ends).
type directoryRunner interface {
	discovery.Directory
	Run(ctx context.Context) error
}

// awaitReady blocks until Ready, waiting on the directory's changed
// channel (and polling every readyPoll, in case it stays quiet), and
// reports whether it became ready before ctx ended. While not ready for
// longer than notReadyLogAfter it logs an ERROR every notReadyLogPeriod.
func (s *Server) awaitReady(ctx context.Context) bool {
	dir, ok := s.cfg.Source.(discovery.Directory)
	if !ok {
		return true
	}
	start := time.Now()
	var logged time.Time
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		_, ready, changed := dir.Lookup("")
		if ready {
			if !logged.IsZero() {
				s.log.Info("ready: read the service directory; health SERVING", logattr.Duration("after", time.Since(start).Round(time.Millisecond)))
			}
			return true
		}
		if since := time.Since(start); since >= notReadyLogAfter && time.Since(logged) >= notReadyLogPeriod {
			logged = time.Now()
			s.log.Error("not ready: discovery has not read the service directory yet; health NOT_SERVING, clients get fallback; check that Consul is reachable and that the ACL token may read the catalog",
				logattr.Duration("for", since.Round(time.Second)))
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		case <-tick.C:
		}
	}
}

// Serve serves s on lis, with a grpc.health.v1 service and server
// reflection, until ctx is done.
// Health ("" and HealthService) is NOT_SERVING until s is Ready, so that a
// replica that never read its source fails its health check and is not
// advertised, then SERVING until shutdown. A source that implements
// discovery.Directory and has a Run method (discovery/consul) runs while
// Serve does, so that it reads its directory with no stream open.
//
// When ctx ends it shuts down in order: health NOT_SERVING, o.Drain, stop
// accepting connections (GOAWAY), end every stream cleanly so clients
// reconnect elsewhere, stop the watchers and the directory. The whole
// shutdown takes at most o.ShutdownTimeout; what would exceed it is cut
// (connections closed) and logged. It returns nil after a shutdown caused
// by ctx, or the error that stopped serving. Blocks.
func Serve(ctx context.Context, lis net.Listener, s *Server, o ServeOptions) error {
	switch {
	case o.ShutdownTimeout < 0:
		return fmt.Errorf("lbserver: serve: shutdown timeout %v is negative", o.ShutdownTimeout)
	case o.ShutdownTimeout == 0:
		o.ShutdownTimeout = 15 * time.Second
	}
	opts := s.GRPCOptions(o.GRPC...) // ServerOptions and the limits' options
	if age := s.cfg.MaxStreamAge; age > 0 {
		kp := KeepaliveParams
		kp.MaxConnectionAge, kp.MaxConnectionAgeGrace = connectionAge(age)
		opts = append(opts, grpc.KeepaliveParams(kp))
	}
	// The balancer's own transport takes the connections whose first
	// stream is BalanceLoad and hands the others to the grpc.Server.
	var own *ownStreams
	var gs *grpc.Server
	grpcLis := s.Listener(lis) // with the connection limits
	if s.cfg.Transport != TransportGRPC {
		// Set before either server serves.
		other := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gs.ServeHTTP(w, r) })
		var err error
		if own, err = s.newOwnStreams(o.Creds, o.Authorize, other); err != nil {
			return fmt.Errorf("lbserver: serve: %w", err)
		}
		opts = append(opts, grpc.Creds(own.OthersCreds()))
		s.own.Store(own)
	} else if o.Creds != nil {
		opts = append(opts, grpc.Creds(o.Creds))
	}
	gs = grpc.NewServer(opts...)
	s.Register(gs)
	if s.cfg.XDS {
		if err := s.registerXDS(gs); err != nil {
			return fmt.Errorf("lbserver: serve: %w", err)
		}
	}
	hs := health.NewServer()
	setHealth := func(st healthpb.HealthCheckResponse_ServingStatus) {
		hs.SetServingStatus("", st)
		hs.SetServingStatus(HealthService, st)
	}
	healthpb.RegisterHealthServer(gs, hs)
	// Server reflection, so that grpcurl and grpcdebug can list and call
	// the balancer's services without their protos.
	reflection.Register(gs)

	// A source with a directory reads it only while something runs it
	// (discovery/consul's Source.Run); Ready waits for that read, so the
	// directory runs for as long as Serve does, even with no stream.
	dirCtx, stopDir := context.WithCancel(context.Background())
	defer stopDir()
	dirDone := make(chan struct{})
	if r, ok := s.cfg.Source.(directoryRunner); ok {
		go func() {
			defer close(dirDone)
			r.Run(dirCtx)
		}()
	} else {
		close(dirDone)
	}

	readyCtx, stopReady := context.WithCancel(ctx)
	defer stopReady()
	readyDone := make(chan struct{})
	if s.Ready() {
		setHealth(healthpb.HealthCheckResponse_SERVING)
		close(readyDone)
	} else {
		setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
		go func() {
			defer close(readyDone)
			if s.awaitReady(readyCtx) {
				setHealth(healthpb.HealthCheckResponse_SERVING)
			}
		}()
	}
	// Both servers serve until both are stopped; the first error of
	// either stops the balancer.
	srvs := servers{gs: gs, own: own}
	serveErr := make(chan error, 2)
	var serving sync.WaitGroup
	if own != nil {
		ownLis := grpcLis
		grpcLis = own.Others()
		serving.Go(func() { serveErr <- own.Serve(ownLis) })
	}
	serving.Go(func() { serveErr <- gs.Serve(grpcLis) })

	select {
	case err := <-serveErr:
		stopReady()
		<-readyDone
		s.Close()
		stopDir()
		<-dirDone
		srvs.stop()
		serving.Wait()
		if err == nil {
			err = errors.New("stopped serving")
		}
		return fmt.Errorf("lbserver: serve: %w", err)
	case <-ctx.Done():
	}
	start := time.Now()
	deadline := start.Add(o.ShutdownTimeout)
	stopReady()
	<-readyDone
	hs.Shutdown() // NOT_SERVING, and ignores later changes

	if o.Drain != nil {
		reserve := min(o.ShutdownTimeout/4, 5*time.Second)
		drainCtx, cancel := context.WithDeadline(context.Background(), deadline.Add(-reserve))
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			o.Drain(drainCtx)
		}()
		select {
		case <-drained:
		case <-drainCtx.Done():
			// Give a drain that honours its ctx a moment to return.
			select {
			case <-drained:
			case <-time.After(reserve / 10):
			}
			s.log.Warn("shutdown: drain cut at its share of the shutdown timeout; ending streams now",
				logattr.Duration("drain_budget", o.ShutdownTimeout-reserve), logattr.Duration("timeout", o.ShutdownTimeout))
		}
		cancel()
	}

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		s.Close() // ends the streams, so GracefulStop can finish; stops the watchers
		stopDir()
		<-dirDone
	}()
	graceful := make(chan struct{})
	go func() {
		defer close(graceful)
		srvs.gracefulStop()
	}()
	// Past the graceful deadline the remaining connections are closed,
	// leaving a moment before the bound for the streams and watchers to
	// end.
	graceDeadline := deadline.Add(-min(o.ShutdownTimeout/10, time.Second))
	timer := time.NewTimer(time.Until(graceDeadline))
	defer timer.Stop()
	stopped := false
	for _, step := range []struct {
		name string
		done chan struct{}
	}{{"streams and watchers", closed}, {"connections", graceful}} {
		select {
		case <-step.done:
			continue
		case <-timer.C:
		}
		if !stopped {
			stopped = true
			s.log.Warn("shutdown: streams still open near the shutdown timeout; closing their connections", logattr.Duration("timeout", o.ShutdownTimeout))
			srvs.stop() // cancels the remaining streams
			timer.Reset(time.Until(deadline))
		}
		select {
		case <-step.done:
		case <-timer.C:
			s.log.Error("shutdown: still stopping at the shutdown timeout; returning without waiting", "what", step.name, logattr.Duration("timeout", o.ShutdownTimeout))
			return nil
		}
	}
	serving.Wait()
	return nil
}

// servers are the grpc.Server and the balancer's own transport (nil under
// TransportGRPC), stopped together.
type servers struct {
	gs  *grpc.Server
	own *ownStreams
}

// gracefulStop stops both gracefully, at once, and waits for both.
func (v servers) gracefulStop() { v.both(true) }

// stop closes every connection of both and waits until their handlers
// returned.
func (v servers) stop() { v.both(false) }

// both stops both servers at once, gracefully or not, and waits.
func (v servers) both(graceful bool) {
	gsStop, ownStop := v.gs.Stop, func() {}
	if v.own != nil {
		ownStop = v.own.Stop
	}
	if graceful {
		gsStop = v.gs.GracefulStop
		if v.own != nil {
			ownStop = v.own.GracefulStop
		}
	}
	var wg sync.WaitGroup
	wg.Go(ownStop)
	gsStop()
	wg.Wait()
}
