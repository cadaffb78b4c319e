package h2bidi

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// ownConn opens a BalanceLoad stream on cc and gets a response, so that
// cc's connection is served here.
func ownConn(t *testing.T, ctx context.Context, cc *grpc.ClientConn) lbpb.LoadBalancer_BalanceLoadClient {
	t.Helper()
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(initial("own")); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	return stream
}

// checkOthers calls, on cc (whose connection is served here), health
// Check, health Watch through two changes and reflection's ListServices.
func checkOthers(t *testing.T, ctx context.Context, e *env, cc *grpc.ClientConn) {
	t.Helper()
	hc := healthpb.NewHealthClient(cc)
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", resp, err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v, want NotFound", err)
	}

	e.health.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING} {
		if i > 0 {
			e.health.SetServingStatus("svc", want)
		}
		resp, err := watch.Recv()
		if err != nil || resp.GetStatus() != want {
			t.Fatalf("Watch update %d: %v %v, want %v", i, resp, err, want)
		}
	}

	rc, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		r, err := rc.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range r.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		if !slices.Contains(names, "grpc.health.v1.Health") {
			t.Fatalf("ListServices: %v", names)
		}
	}
	rc.CloseSend()
	if _, err := rc.Recv(); err != io.EOF {
		t.Fatalf("reflection Recv after CloseSend: %v, want io.EOF", err)
	}
	if s := e.srv.Stats(); s.Conns != 1 || s.HandedOff != 0 {
		t.Fatalf("Stats = %+v, want the one connection served here, none handed off", s)
	}
}

// TestOtherOnOwnedConn: on one ClientConn, a BalanceLoad stream first,
// then health and reflection calls, served by the grpc.Server as Other.
func TestOtherOnOwnedConn(t *testing.T) {
	e := start(t, Config[req]{Other: &lateHandler{}})
	ctx := testCtx(t)
	cc := dial(t, e.addr)
	stream := ownConn(t, ctx, cc)
	checkOthers(t, ctx, e, cc)
	// The BalanceLoad stream is still served.
	stream.Send(initial("again"))
	if r, err := stream.Recv(); err != nil || r.GetServerList().GetServers()[0].GetLoadBalanceToken() != "again" {
		t.Fatalf("Recv: %v %v", r, err)
	}
}

func TestOtherTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "test ca")
	leaf := ca.Issue(t, tlstest.Options{CommonName: "server", Names: []string{"127.0.0.1", "localhost"}})
	client := ca.Issue(t, tlstest.Options{CommonName: "client"})
	pool, scert, ccert := ca.Pool(), leaf.Pair(t), client.Pair(t)
	scfg := &tls.Config{Certificates: []tls.Certificate{scert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	ccfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{ccert}}
	peers := make(chan *peer.Peer, 100)
	record := func(ctx context.Context) {
		p, _ := peer.FromContext(ctx)
		select {
		case peers <- p:
		default:
		}
	}
	e := start(t, Config[req]{Creds: credentials.NewTLS(scfg), Other: &lateHandler{}},
		grpc.UnaryInterceptor(func(ctx context.Context, r any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx)
			return h(ctx, r)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context())
			return h(srv, ss)
		}))
	ctx := testCtx(t)
	cc := dial(t, e.addr, grpc.WithTransportCredentials(credentials.NewTLS(ccfg)))
	ownConn(t, ctx, cc)
	checkOthers(t, ctx, e, cc)
	close(peers)
	n := 0
	for p := range peers {
		n++
		ti, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			t.Fatalf("AuthInfo %T, want credentials.TLSInfo", p.AuthInfo)
		}
		if len(ti.State.VerifiedChains) == 0 || ti.State.VerifiedChains[0][0].Subject.CommonName != "client" {
			t.Fatalf("the peer's verified chains: %v", ti.State.VerifiedChains)
		}
		if p.Addr == nil || p.Addr.String() == "" {
			t.Fatal("no peer address")
		}
	}
	if n < 4 {
		t.Fatalf("%d calls seen by the interceptors", n)
	}
}

// otherWatch opens a BalanceLoad stream (owning the connection) and a
// health Watch on one ClientConn, and waits for the Watch's first update.
func otherWatch(t *testing.T, ctx context.Context, e *env) (lbpb.LoadBalancer_BalanceLoadClient, healthpb.Health_WatchClient) {
	t.Helper()
	cc := dial(t, e.addr)
	stream := ownConn(t, ctx, cc)
	watch, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	if s := e.srv.Stats(); s.Streams != 2 || s.HandedOff != 0 {
		t.Fatalf("Stats = %+v, want 2 streams here", s)
	}
	return stream, watch
}

func TestOtherClientCancel(t *testing.T) {
	e := start(t, Config[req]{Other: &lateHandler{}})
	ctx, cancel := context.WithCancel(testCtx(t))
	otherWatch(t, ctx, e)
	cancel()
	waitFor(t, "the streams to end", func() bool { return e.srv.Stats().Streams == 0 })
}

func TestOtherGracefulStop(t *testing.T) {
	e := start(t, Config[req]{Other: &lateHandler{}})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	stream, watch := otherWatch(t, ctx, e)
	stopped := make(chan struct{})
	go func() { e.srv.GracefulStop(); close(stopped) }()
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("BalanceLoad Recv: %v, want io.EOF", err)
	}
	select {
	case <-stopped:
		t.Fatal("GracefulStop returned with the Watch open")
	case <-time.After(200 * time.Millisecond):
	}
	// The Watch still gets updates meanwhile.
	e.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch: %v %v", r, err)
	}
	cancel()
	<-stopped
	if err := <-e.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	e.done <- nil
}

func TestOtherStop(t *testing.T) {
	e := start(t, Config[req]{Other: &lateHandler{}})
	ctx := testCtx(t)
	_, watch := otherWatch(t, ctx, e)
	e.srv.Stop()
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Watch after Stop: %v, want Unavailable", err)
	}
	if s := e.srv.Stats(); s.Streams != 0 || s.Conns != 0 {
		t.Fatalf("Stats after Stop = %+v", s)
	}
}

// TestOtherHTTP: a plain http.Handler as Other, on a connection whose
// first request was BalanceLoad (net/http's HTTP/2 client): the request
// as net/http gives it, a body and a response larger than the windows,
// headers, declared and prefixed trailers.
func TestOtherHTTP(t *testing.T) {
	const size = 1 << 20
	type seen struct {
		r    *http.Request
		n    int64
		body error
	}
	got := make(chan seen, 1)
	e := start(t, Config[req]{Other: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		got <- seen{r, n, err}
		w.Header().Set("Trailer", "X-Declared")
		w.Header().Set("X-Head", "h")
		w.WriteHeader(http.StatusCreated)
		w.Write(bytes.Repeat([]byte("r"), size))
		w.(http.Flusher).Flush()
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Prefixed", "p")
	})})
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	ctx := testCtx(t)

	// BalanceLoad first, its body left open.
	pr, pw := io.Pipe()
	defer pw.Close()
	breq, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.addr+method, pr)
	breq.Header.Set("Content-Type", "application/grpc")
	breq.Header.Set("Te", "trailers")
	b, _ := proto.Marshal(initial("http"))
	go pw.Write(Frame(b))
	bresp, err := tr.RoundTrip(breq)
	if err != nil {
		t.Fatal(err)
	}
	defer bresp.Body.Close()

	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+e.addr+"/some/path?q=1", io.NopCloser(bytes.NewReader(bytes.Repeat([]byte("q"), size))))
	req.Header.Set("X-Req", "v")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	s := <-got
	if s.n != size || s.body != nil {
		t.Fatalf("the handler read %d bytes, then %v", s.n, s.body)
	}
	r := s.r
	if r.ProtoMajor != 2 || r.Method != http.MethodPut || r.URL.Path != "/some/path" || r.URL.RawQuery != "q=1" ||
		r.Host != e.addr || r.Header.Get("X-Req") != "v" || r.ContentLength != -1 || r.RemoteAddr == "" || r.TLS != nil {
		t.Fatalf("request: %+v", r)
	}
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Head") != "h" {
		t.Fatalf("response: %d %v", resp.StatusCode, resp.Header)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if n != size || err != nil {
		t.Fatalf("response body: %d bytes, %v", n, err)
	}
	if resp.Trailer.Get("X-Declared") != "d" || resp.Trailer.Get("X-Prefixed") != "p" {
		t.Fatalf("trailers: %v", resp.Trailer)
	}
	if s := e.srv.Stats(); s.Conns != 1 || s.HandedOff != 0 {
		t.Fatalf("Stats = %+v, want one connection served here", s)
	}
}
