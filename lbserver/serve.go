package lbserver

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// KeepaliveEnforcement is the keepalive policy grpclb clients need: grpc-go
// pings its balancer every 20 s even with no call in flight, and a server
// with grpc's default policy (5 min) answers such pings with a
// too_many_pings GOAWAY about once a minute.
var KeepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}

// KeepaliveParams makes the balancer probe idle clients, so streams of
// clients that vanished without a FIN are reaped.
var KeepaliveParams = keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}

// ServerOptions returns the grpc.ServerOptions a balancer's grpc.Server
// needs, followed by extra.
func ServerOptions(extra ...grpc.ServerOption) []grpc.ServerOption {
	return append([]grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(KeepaliveEnforcement),
		grpc.KeepaliveParams(KeepaliveParams),
	}, extra...)
}

// Register registers s as the grpc.lb.v1.LoadBalancer service of gs.
func (s *Server) Register(gs grpc.ServiceRegistrar) { lbpb.RegisterLoadBalancerServer(gs, s) }

// ServeOptions tune Serve.
type ServeOptions struct {
	// ShutdownTimeout bounds the shutdown after Drain: streams still open
	// then have their connections closed. Default 15 s.
	ShutdownTimeout time.Duration
	// Drain, if set, runs first when ctx ends, after the health service
	// turned NOT_SERVING and before any stream ends: deregister from
	// Consul there and wait for that to reach clients. It should return in
	// bounded time.
	Drain func()
	// GRPC are extra options for the grpc.Server, after ServerOptions'.
	GRPC []grpc.ServerOption
}

// HealthService is the name under which the balancer reports its health
// in grpc.health.v1, besides the overall "".
const HealthService = "grpc.lb.v1.LoadBalancer"

// Serve serves s on lis, with a grpc.health.v1 service that reports
// SERVING, until ctx is done; then it shuts down in order: health
// NOT_SERVING, o.Drain, stop accepting connections (GOAWAY), end every
// stream cleanly so clients reconnect elsewhere, stop the watchers, and,
// past o.ShutdownTimeout, close the remaining connections. It returns nil
// after a shutdown caused by ctx, or the error that stopped serving. Blocks.
func Serve(ctx context.Context, lis net.Listener, s *Server, o ServeOptions) error {
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 15 * time.Second
	}
	opts := ServerOptions(o.GRPC...)
	if age := s.cfg.MaxStreamAge; age > 0 {
		// GOAWAY at about the streams' age (grpc adds ± 10 %), so that
		// clients reconnect, and may pick another replica, when their
		// stream ends; streams still open after the grace are cut.
		kp := KeepaliveParams
		kp.MaxConnectionAge = age
		kp.MaxConnectionAgeGrace = age/5 + 10*time.Second
		opts = append(opts, grpc.KeepaliveParams(kp))
	}
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	hs := health.NewServer()
	hs.SetServingStatus(HealthService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()

	select {
	case err := <-serveErr:
		s.Close()
		return fmt.Errorf("lbserver: serve: %w", err)
	case <-ctx.Done():
	}
	hs.Shutdown()
	if o.Drain != nil {
		o.Drain()
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		s.Close() // ends the streams, so GracefulStop can finish
	}()
	graceful := make(chan struct{})
	go func() {
		defer close(graceful)
		gs.GracefulStop()
	}()
	timer := time.NewTimer(o.ShutdownTimeout)
	defer timer.Stop()
	for _, done := range []chan struct{}{closed, graceful} {
		select {
		case <-done:
		case <-timer.C:
			s.log.Warn("shutdown timed out; closing connections", "timeout", o.ShutdownTimeout)
			gs.Stop() // cancels the remaining streams
			<-done
		}
	}
	<-serveErr
	return nil
}
