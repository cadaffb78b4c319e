package admin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"
)

// Timeouts of Serve's http.Server.
const (
	// ShutdownTimeout bounds Serve's shutdown: requests still running
	// after it (a CPU profile, a long channelz call) have their
	// connections closed.
	ShutdownTimeout = 2 * time.Second
	// readHeaderTimeout bounds how long a client may take to send its
	// request headers, idleTimeout how long an idle connection is kept.
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

// Serve serves h on lis with HTTP/1.1 and HTTP/2 without TLS (h2c, which
// gRPC clients with insecure credentials speak, so that channelz answers
// on the same port), until ctx ends or serving fails. When ctx ends it
// stops accepting, closes a *Handler's gRPC server (ending its calls in
// flight), lets requests in flight finish for up to ShutdownTimeout, then
// closes the connections left. It returns nil after a shutdown caused by
// ctx, or the error that stopped serving. Blocks; lis is closed when it
// returns.
func Serve(ctx context.Context, lis net.Listener, h http.Handler) error {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		Protocols:         &protos,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	select {
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		return err
	case <-ctx.Done():
	}
	if a, ok := h.(*Handler); ok {
		a.Close()
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done
	return nil
}
