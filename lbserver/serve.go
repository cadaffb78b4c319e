package lbserver

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
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

// Serve serves s on lis until ctx is done, then shuts down in order: stop
// accepting connections (GOAWAY), end every stream cleanly so clients
// reconnect elsewhere, stop the watchers, and, if that takes longer than
// shutdownTimeout, close the remaining connections. It returns nil after a
// shutdown caused by ctx, or the error that stopped serving. Blocks.
func Serve(ctx context.Context, lis net.Listener, s *Server, shutdownTimeout time.Duration, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(ServerOptions(opts...)...)
	s.Register(gs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()

	select {
	case err := <-serveErr:
		s.Close()
		return fmt.Errorf("lbserver: serve: %w", err)
	case <-ctx.Done():
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
	timer := time.NewTimer(shutdownTimeout)
	defer timer.Stop()
	for _, done := range []chan struct{}{closed, graceful} {
		select {
		case <-done:
		case <-timer.C:
			s.log.Warn("shutdown timed out; closing connections", "timeout", shutdownTimeout)
			gs.Stop() // cancels the remaining streams
			<-done
		}
	}
	<-serveErr
	return nil
}
