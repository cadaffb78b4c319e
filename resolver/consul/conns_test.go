package consul

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestConnSetClosesBusyConnections: closeAll ends a connection that is in
// use, not only idle ones, with the transport's goroutines, and a dial
// after it fails.
func TestConnSetClosesBusyConnections(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	before := goleak.IgnoreCurrent()

	var conns connSet
	tr := &http.Transport{DialContext: conns.wrap((&net.Dialer{}).DialContext)}
	resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// The response's body is still open: the connection is busy.
	conns.closeAll()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("reading the body of a closed connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the body read did not end after closeAll")
	}
	resp.Body.Close()
	if err := goleak.Find(before); err != nil {
		t.Errorf("the transport's goroutines outlived closeAll: %v", err)
	}
	if _, err := conns.wrap((&net.Dialer{}).DialContext)(context.Background(), "tcp", srv.Listener.Addr().String()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("dial after closeAll: %v, want net.ErrClosed", err)
	}
}
