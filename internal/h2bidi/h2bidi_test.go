package h2bidi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

func TestMain(m *testing.M) {
	if kind := os.Getenv(memServerEnv); kind != "" {
		memServerMain(kind)
		return
	}
	goleak.VerifyTestMain(m)
}

const method = "/grpc.lb.v1.LoadBalancer/BalanceLoad"

type req = *lbpb.LoadBalanceRequest

func unmarshalReq(b []byte) (req, error) {
	r := &lbpb.LoadBalanceRequest{}
	return r, proto.Unmarshal(b, r)
}

// respFor is the response the echo handler gives to r: a server list
// with one server whose token is r's name.
func respFor(name string) []byte {
	b, err := proto.Marshal(&lbpb.LoadBalanceResponse{LoadBalanceResponseType: &lbpb.LoadBalanceResponse_ServerList{
		ServerList: &lbpb.ServerList{Servers: []*lbpb.Server{{LoadBalanceToken: name}}},
	}})
	if err != nil {
		panic(err)
	}
	return Frame(b)
}

func initial(name string) *lbpb.LoadBalanceRequest {
	return &lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
		InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: name},
	}}
}

// echo answers each request with respFor its name until the client
// half-closes (nil) or the stream fails (its error).
func echo(st *Stream[req]) error {
	for {
		r, err := recv(st)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := st.Send(respFor(r.GetInitialRequest().GetName())); err != nil {
			return err
		}
	}
}

// recv waits for st's next message, or the error that ends its receiving
// side.
func recv(st *Stream[req]) (req, error) {
	for {
		m, ok, err := st.Next()
		if ok {
			return m, nil
		}
		if err != nil {
			return nil, err
		}
		<-st.Ready()
	}
}

// recvEnd takes st's messages until its receiving side ends, and returns
// the error that ends it.
func recvEnd(st *Stream[req]) error {
	for {
		if _, err := recv(st); err != nil {
			return err
		}
	}
}

// env is a Server on loopback with a grpc.Server (health) on Others.
type env struct {
	srv    *Server[req]
	gs     *grpc.Server
	health *health.Server
	addr   string
	done   chan error // Serve's result
}

func start(t testing.TB, cfg Config[req], gopts ...grpc.ServerOption) *env {
	t.Helper()
	if cfg.Method == "" {
		cfg.Method = method
	}
	if cfg.Unmarshal == nil {
		cfg.Unmarshal = unmarshalReq
	}
	if cfg.Handler == nil {
		cfg.Handler = echo
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{srv: srv, addr: lis.Addr().String(), done: make(chan error, 1)}
	e.gs = grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(srv.OthersCreds())}, gopts...)...)
	e.health = health.NewServer()
	healthpb.RegisterHealthServer(e.gs, e.health)
	reflection.Register(e.gs)
	if lh, ok := cfg.Other.(*lateHandler); ok {
		lh.h.Store(e.gs)
	}
	gsDone := make(chan struct{})
	go func() { defer close(gsDone); e.gs.Serve(srv.Others()) }()
	go func() { e.done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		e.gs.Stop()
		<-gsDone
		if err := <-e.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// lateHandler, as the Config.Other given to start, serves with start's
// grpc.Server (made after New).
type lateHandler struct{ h atomic.Pointer[grpc.Server] }

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { l.h.Load().ServeHTTP(w, r) }

func dial(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEcho(t *testing.T) {
	e := start(t, Config[req]{})
	cc := dial(t, e.addr)
	ctx := testCtx(t)
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		echoOnce(t, stream, i)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv after half-close: %v, want io.EOF (status OK)", err)
	}
	if s := e.srv.Stats(); s.Conns != 1 || s.HandedOff != 0 {
		t.Errorf("Stats = %+v, want 1 conn, none handed off", s)
	}
	waitFor(t, "streams to end", func() bool { return e.srv.Stats().Streams == 0 })
}

// echoOnce sends request i (name svc-i) on stream and wants the echo
// handler's answer.
func echoOnce(t *testing.T, stream grpc.BidiStreamingClient[lbpb.LoadBalanceRequest, lbpb.LoadBalanceResponse], i int) {
	t.Helper()
	name := fmt.Sprintf("svc-%d", i)
	if err := stream.Send(initial(name)); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetServerList().GetServers()[0].GetLoadBalanceToken(); got != name {
		t.Fatalf("response %d: token %q, want %q", i, got, name)
	}
}

// TestPipelined sends many requests before reading any response.
func TestPipelined(t *testing.T) {
	e := start(t, Config[req]{})
	cc := dial(t, e.addr)
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	const n = 500
	for i := range n {
		if err := stream.Send(initial(fmt.Sprintf("svc-%d-%s", i, strings.Repeat("x", 200)))); err != nil {
			t.Fatal(err)
		}
	}
	stream.CloseSend()
	for i := range n {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if got, want := resp.GetServerList().GetServers()[0].GetLoadBalanceToken(), fmt.Sprintf("svc-%d-", i); !strings.HasPrefix(got, want) {
			t.Fatalf("response %d: %q", i, got)
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv: %v, want io.EOF", err)
	}
}

func TestStatusAndMessage(t *testing.T) {
	const msg = "naïve 100% 日本 \x01 done"
	for _, sent := range []bool{false, true} {
		t.Run(fmt.Sprintf("sent=%v", sent), func(t *testing.T) {
			e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
				recv(st)
				if sent {
					if err := st.Send(respFor("x")); err != nil {
						return err
					}
				}
				return status.Error(codes.FailedPrecondition, msg)
			}})
			stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(initial("a"))
			if sent {
				if _, err := stream.Recv(); err != nil {
					t.Fatal(err)
				}
			}
			_, err = stream.Recv()
			if s := status.Convert(err); s.Code() != codes.FailedPrecondition || s.Message() != msg {
				t.Fatalf("Recv: %v, want FailedPrecondition %q", err, msg)
			}
		})
	}
}

func TestTapRefuses(t *testing.T) {
	handled := make(chan struct{}, 1)
	e := start(t, Config[req]{
		Tap: func(ctx context.Context) (context.Context, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			if len(md.Get("let-me-in")) == 0 {
				return nil, status.Error(codes.PermissionDenied, "no entry")
			}
			return ctx, nil
		},
		Handler: func(st *Stream[req]) error { handled <- struct{}{}; return echo(st) },
	})
	cc := dial(t, e.addr)
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if s := status.Convert(err); s.Code() != codes.PermissionDenied || s.Message() != "no entry" {
		t.Fatalf("Recv: %v, want PermissionDenied no entry", err)
	}
	// The same connection serves an allowed stream.
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "let-me-in", "yes")
	stream, err = lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("ok"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if len(handled) != 1 {
		t.Fatalf("%d handlers ran, want 1", len(handled))
	}
}

func TestOtherMethodOnOwnedConn(t *testing.T) {
	e := start(t, Config[req]{})
	cc := dial(t, e.addr)
	ctx := testCtx(t)
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if s := status.Convert(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "serves only "+method) {
		t.Fatalf("Check on an owned connection: %v, want Unimplemented", err)
	}
}

func TestHandOff(t *testing.T) {
	e := start(t, Config[req]{})
	ctx := testCtx(t)
	// Health first on a connection of its own: handed off.
	hcc := dial(t, e.addr)
	resp, err := healthpb.NewHealthClient(hcc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", resp, err)
	}
	// The handed-off connection stays grpc.Server's: a second call and a
	// BalanceLoad on it are served by grpc.Server (BalanceLoad is not
	// registered there).
	if _, err := healthpb.NewHealthClient(hcc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	// BalanceLoad on its own connection works at the same time.
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("b"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// A compressed BalanceLoad is handed off too (and grpc.Server does not
	// serve it).
	cstream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(ctx, grpc.UseCompressor(gzip.Name))
	if err != nil {
		t.Fatal(err)
	}
	cstream.Send(initial("c"))
	if _, err := cstream.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("compressed BalanceLoad: %v, want Unimplemented from grpc.Server", err)
	}
	if s := e.srv.Stats(); s.HandedOff != 2 || s.Conns != 1 {
		t.Fatalf("Stats = %+v, want 2 handed off, 1 conn", s)
	}
}

// TestHandOffOutlivesWriteTimeout: a handed-off connection is served by
// grpc.Server past WriteTimeout after the peek's writes (the peek's
// write deadline is not left on it).
func TestHandOffOutlivesWriteTimeout(t *testing.T) {
	e := start(t, Config[req]{WriteTimeout: 100 * time.Millisecond})
	ctx := testCtx(t)
	hcc := dial(t, e.addr)
	for i := range 3 {
		if i > 0 {
			time.Sleep(150 * time.Millisecond)
		}
		if _, err := healthpb.NewHealthClient(hcc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("check %d, %v after the first: %v", i, time.Duration(i)*150*time.Millisecond, err)
		}
	}
	if s := e.srv.Stats(); s.HandedOff != 1 {
		t.Fatalf("Stats = %+v, want the one connection handed off", s)
	}
}

// TestHandOffIdlePings: a client whose first request comes after pings
// gets them answered during the peek, and is handed off intact.
func TestHandOffAfterPings(t *testing.T) {
	e := start(t, Config[req]{})
	rc := dialRaw(t, e.addr)
	for i := range 3 {
		rc.fr.WritePing(false, [8]byte{byte(i)})
		if f := rc.next(t, func(f any) bool { _, ok := f.(*pingAck); return ok }); f == nil {
			t.Fatal("no ping ack")
		}
	}
	rc.conn.Close()
	// A real client after it still works.
	if _, err := healthpb.NewHealthClient(dial(t, e.addr)).Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
}

func TestMetadataAndPeer(t *testing.T) {
	type seen struct {
		md       metadata.MD
		p        *peer.Peer
		deadline bool
	}
	got := make(chan seen, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		md, _ := metadata.FromIncomingContext(st.Context())
		p, _ := peer.FromContext(st.Context())
		_, dl := st.Context().Deadline()
		got <- seen{md, p, dl}
		return nil
	}})
	ctx, cancel := context.WithTimeout(testCtx(t), time.Hour)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-plain", "v1", "x-data-bin", string([]byte{0, 1, 0xff}), "X-Upper", "u")
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent("tester"))).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Recv()
	s := <-got
	for k, want := range map[string]string{"x-plain": "v1", "x-data-bin": "\x00\x01\xff", "x-upper": "u", ":authority": e.addr, "content-type": "application/grpc"} {
		if v := s.md.Get(k); len(v) != 1 || v[0] != want {
			t.Errorf("metadata %s = %q, want %q", k, v, want)
		}
	}
	if ua := s.md.Get("user-agent"); len(ua) != 1 || !strings.HasPrefix(ua[0], "tester") {
		t.Errorf("user-agent = %q", ua)
	}
	if !s.deadline {
		t.Error("no deadline from grpc-timeout")
	}
	if s.p == nil || s.p.Addr == nil || s.p.LocalAddr.String() != e.addr {
		t.Fatalf("peer = %+v", s.p)
	}
	if s.p.AuthInfo == nil || s.p.AuthInfo.AuthType() != "insecure" {
		t.Errorf("AuthInfo = %v, want insecure", s.p.AuthInfo)
	}
}

func TestTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "test ca")
	leaf := ca.Issue(t, tlstest.Options{CommonName: "server", Names: []string{"127.0.0.1", "localhost"}})
	client := ca.Issue(t, tlstest.Options{CommonName: "client"})
	pool, scert, ccert := ca.Pool(), leaf.Pair(t), client.Pair(t)
	for _, mtls := range []bool{false, true} {
		t.Run(fmt.Sprintf("mtls=%v", mtls), func(t *testing.T) {
			scfg := &tls.Config{Certificates: []tls.Certificate{scert}}
			ccfg := &tls.Config{RootCAs: pool}
			if mtls {
				scfg.ClientAuth, scfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
				ccfg.Certificates = []tls.Certificate{ccert}
			}
			got := make(chan *peer.Peer, 1)
			e := start(t, Config[req]{Creds: credentials.NewTLS(scfg), Handler: func(st *Stream[req]) error {
				p, _ := peer.FromContext(st.Context())
				got <- p
				return echo(st)
			}})
			ccreds := grpc.WithTransportCredentials(credentials.NewTLS(ccfg))
			ctx := testCtx(t)
			stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr, ccreds)).BalanceLoad(ctx)
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(initial("tls"))
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			p := <-got
			ti, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok {
				t.Fatalf("AuthInfo %T, want credentials.TLSInfo", p.AuthInfo)
			}
			if n := len(ti.State.PeerCertificates); (n > 0) != mtls {
				t.Errorf("%d peer certificates with mtls=%v", n, mtls)
			} else if mtls && ti.State.PeerCertificates[0].Subject.CommonName != "client" {
				t.Errorf("peer certificate %v", ti.State.PeerCertificates[0].Subject)
			}
			// Health over the same listener, handed off with the TLS info.
			if _, err := healthpb.NewHealthClient(dial(t, e.addr, ccreds)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
			// A plaintext client gets nothing.
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if _, err := healthpb.NewHealthClient(dial(t, e.addr)).Check(pctx, &healthpb.HealthCheckRequest{}); err == nil {
				t.Fatal("a plaintext client was served")
			}
		})
	}
}

func TestOthersCredsAuthInfo(t *testing.T) {
	ca := tlstest.NewCA(t, "test ca")
	leaf := ca.Issue(t, tlstest.Options{CommonName: "server", Names: []string{"127.0.0.1"}})
	scert, pool := leaf.Pair(t), ca.Pool()
	got := make(chan credentials.AuthInfo, 1)
	e := start(t, Config[req]{Creds: credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{scert}})},
		grpc.UnaryInterceptor(func(ctx context.Context, r any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			p, _ := peer.FromContext(ctx)
			got <- p.AuthInfo
			return h(ctx, r)
		}))
	if e.srv.OthersCreds().Info().SecurityProtocol != "tls" {
		t.Errorf("OthersCreds().Info() = %+v", e.srv.OthersCreds().Info())
	}
	cc := dial(t, e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if _, err := healthpb.NewHealthClient(cc).Check(testCtx(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := (<-got).(credentials.TLSInfo); !ok {
		t.Fatal("the grpc.Server's handler has no TLSInfo")
	}
}

func TestFlowControl(t *testing.T) {
	const size = 200 << 10
	big := respFor(strings.Repeat("x", size))
	sent := make(chan error, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		recv(st)
		err := st.Send(big)
		sent <- err
		return err
	}})
	ctx := testCtx(t)
	stream := smallWindowStream(t, ctx, e.addr)
	select {
	case err := <-sent:
		t.Fatalf("Send of %d bytes returned (%v) before the client read", size, err)
	case <-time.After(300 * time.Millisecond):
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetServerList().GetServers()[0].GetLoadBalanceToken()) != size {
		t.Fatalf("Recv: %v", err)
	}
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Send did not complete after the client read")
	}
}

// smallWindowStream opens a stream to addr from a client whose windows
// are at their smallest, 64 KiB, and sends its initial request.
func smallWindowStream(t *testing.T, ctx context.Context, addr string) grpc.BidiStreamingClient[lbpb.LoadBalanceRequest, lbpb.LoadBalanceResponse] {
	t.Helper()
	cc := dial(t, addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(65535))
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	return stream
}

// TestTrySend: TrySend writes a message the windows take whole, and
// leaves one they do not take to Send, writing none of it.
func TestTrySend(t *testing.T) {
	small := respFor(strings.Repeat("s", 1000))
	big := respFor(strings.Repeat("x", 100<<10)) // more than the 64 KiB windows
	type result struct {
		sentSmall, sentBig bool
		err                error
	}
	done := make(chan result, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		recv(st)
		var r result
		if r.sentSmall, r.err = st.TrySend(small); r.err == nil {
			r.sentBig, r.err = st.TrySend(big)
		}
		done <- r
		if r.err != nil {
			return r.err
		}
		return st.Send(big)
	}})
	stream := smallWindowStream(t, testCtx(t), e.addr)
	if r := <-done; r.err != nil || !r.sentSmall || r.sentBig {
		t.Fatalf("TrySend: small sent %v, big sent %v, err %v; want the small one only", r.sentSmall, r.sentBig, r.err)
	}
	// The client gets the small message, then the big one whole, which
	// Send wrote: TrySend wrote no part of it.
	for _, want := range []int{1000, 100 << 10} {
		resp, err := stream.Recv()
		if err != nil || len(resp.GetServerList().GetServers()[0].GetLoadBalanceToken()) != want {
			t.Fatalf("Recv: %v, want a message of %d bytes", err, want)
		}
	}
}

func TestFlowControlClientNeverReads(t *testing.T) {
	sent := make(chan error, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		recv(st)
		err := st.Send(respFor(strings.Repeat("x", 200<<10)))
		sent <- err
		return err
	}})
	ctx, cancel := context.WithCancel(testCtx(t))
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-sent:
		if status.Code(err) != codes.Canceled {
			t.Fatalf("Send: %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send still blocked after the client cancelled")
	}
}

func TestClientCancel(t *testing.T) {
	got := make(chan error, 1)
	ctxDone := make(chan struct{})
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		recv(st)
		st.Send(respFor("a"))
		got <- recvEnd(st)
		<-st.Context().Done()
		close(ctxDone)
		return nil
	}})
	ctx, cancel := context.WithCancel(testCtx(t))
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	stream.Recv()
	cancel()
	if err := <-got; status.Code(err) != codes.Canceled {
		t.Fatalf("Next: %v, want Canceled", err)
	}
	<-ctxDone
	waitFor(t, "the stream to end", func() bool { return e.srv.Stats().Streams == 0 })
}

func TestHalfClose(t *testing.T) {
	got := make(chan error, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		got <- recvEnd(st)
		return st.Send(respFor("after"))
	}})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if err := <-got; err != io.EOF {
		t.Fatalf("Next: %v, want io.EOF", err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv: %v, want io.EOF", err)
	}
}

func TestTooLarge(t *testing.T) {
	got := make(chan error, 1)
	e := start(t, Config[req]{MaxRecvMsgSize: 1000, Handler: func(st *Stream[req]) error {
		got <- recvEnd(st)
		<-st.Context().Done()
		return nil
	}})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("first"))
	stream.Send(initial(strings.Repeat("n", 2000)))
	_, err = stream.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Recv: %v, want ResourceExhausted", err)
	}
	if err := <-got; status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Next: %v", err)
	}
}

// held is the number of bytes st holds received and not taken.
func held(st *Stream[req]) int {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	return len(st.rbuf)
}

// TestBurstHeldByFlowControl: a burst of 500 messages to a handler that
// takes none for a while, then takes them slowly: the client's Sends wait
// for window meanwhile (the stream holds at most its window), and every
// message arrives, in order, before io.EOF.
func TestBurstHeldByFlowControl(t *testing.T) {
	const n = 500
	const window = 65535
	type result struct {
		got, maxHeld int
		err          error
	}
	streams := make(chan *Stream[req], 1)
	release := make(chan struct{})
	res := make(chan result, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		streams <- st
		<-release
		var r result
		for {
			r.maxHeld = max(r.maxHeld, held(st))
			m, err := recv(st)
			if err != nil {
				r.err = err
				break
			}
			if name := m.GetInitialRequest().GetName(); !strings.HasPrefix(name, fmt.Sprintf("m%d-", r.got)) {
				r.err = fmt.Errorf("message %d is %.10q", r.got, name)
				break
			}
			r.got++
			if r.got%50 == 0 {
				time.Sleep(10 * time.Millisecond) // a slow handler
			}
		}
		res <- r
		if r.err == io.EOF {
			return nil
		}
		return r.err
	}})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	sendDone := make(chan error, 1)
	go func() {
		for i := range n {
			if err := stream.Send(initial(fmt.Sprintf("m%d-%s", i, strings.Repeat("x", 1000)))); err != nil {
				sendDone <- err
				return
			}
			sent.Add(1)
		}
		sendDone <- stream.CloseSend()
	}()
	st := <-streams
	waitFor(t, "the window to fill", func() bool { return held(st) > window-2000 })
	select {
	case err := <-sendDone:
		t.Fatalf("all Sends returned (%v) while the handler took nothing", err)
	case <-time.After(300 * time.Millisecond):
	}
	if h := held(st); h > window {
		t.Fatalf("the stream holds %d bytes, over its window", h)
	}
	if k := sent.Load(); k >= n {
		t.Fatalf("%d messages sent", k)
	}
	close(release)
	r := <-res
	if r.err != io.EOF || r.got != n {
		t.Fatalf("handler: %d messages then %v, want %d then io.EOF", r.got, r.err, n)
	}
	if r.maxHeld > window {
		t.Fatalf("the stream held %d bytes, over its window", r.maxHeld)
	}
	if err := <-sendDone; err != nil {
		t.Fatalf("Send: %v", err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv: %v, want io.EOF", err)
	}
}

// TestMessageLargerThanWindow: a message larger than the stream window is
// received whole (its window is granted), then the window is as before.
func TestMessageLargerThanWindow(t *testing.T) {
	e := start(t, Config[req]{})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{300 << 10, 10, 70000, 65530} {
		if err := stream.Send(initial(strings.Repeat("y", size))); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil || len(resp.GetServerList().GetServers()[0].GetLoadBalanceToken()) != size {
			t.Fatalf("Recv of %d bytes: %v", size, err)
		}
	}
}

// TestFlowControlViolation: a client that sends more than the stream's
// window gets FLOW_CONTROL_ERROR, and the stream never held more than its
// window.
func TestFlowControlViolation(t *testing.T) {
	const window = 65535
	streams := make(chan *Stream[req], 1)
	heldAtEnd := make(chan int, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		streams <- st
		<-st.Context().Done()
		heldAtEnd <- held(st)
		return nil
	}})
	c := dialRaw(t, e.addr)
	c.open(1)
	st := <-streams
	msg := Frame(make([]byte, 1000))
	var frame []byte
	for len(frame)+len(msg) <= 16384 {
		frame = append(frame, msg...)
	}
	for sent := 0; sent < 2*window; sent += len(frame) {
		if err := c.fr.WriteData(1, false, frame); err != nil {
			break
		}
		if h := held(st); h > window {
			t.Fatalf("the stream holds %d bytes, over its window", h)
		}
	}
	if f, _ := c.next(t, isGoAway).(*goAway); f == nil || f.code != http2.ErrCodeFlowControl {
		t.Fatalf("GOAWAY = %+v, want FLOW_CONTROL_ERROR", f)
	}
	if h := <-heldAtEnd; h > window || h < window-len(frame) {
		t.Fatalf("the stream held %d bytes at the end, want its window (%d) or a frame less", h, window)
	}
}

func TestGracefulStop(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		recv(st)
		started <- struct{}{}
		<-release
		return st.Send(respFor("last"))
	}})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	<-started
	stopped := make(chan struct{})
	go func() { e.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("GracefulStop returned with a stream open")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	resp, err := stream.Recv()
	if err != nil || resp.GetServerList().GetServers()[0].GetLoadBalanceToken() != "last" {
		t.Fatalf("Recv: %v %v", resp, err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv: %v, want io.EOF", err)
	}
	<-stopped
	if err := <-e.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	e.done <- nil
}

func TestStop(t *testing.T) {
	running := make(chan struct{}, 10)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		running <- struct{}{}
		<-st.Context().Done()
		err := recvEnd(st)
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Next at Stop: %v, want Unavailable", err)
		}
		return nil
	}})
	var streams []lbpb.LoadBalancer_BalanceLoadClient
	for range 5 {
		s, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		s.Send(initial("a"))
		streams = append(streams, s)
	}
	for range 5 {
		<-running
	}
	e.srv.Stop()
	for _, s := range streams {
		if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("Recv after Stop: %v, want Unavailable", err)
		}
	}
	if st := e.srv.Stats(); st.Conns != 0 || st.Streams != 0 {
		t.Fatalf("Stats after Stop = %+v", st)
	}
}

func TestMaxConnectionAge(t *testing.T) {
	var mu sync.Mutex
	peers := map[string]bool{}
	e := start(t, Config[req]{MaxConnectionAge: 300 * time.Millisecond, MaxConnectionAgeGrace: 5 * time.Second,
		Handler: func(st *Stream[req]) error {
			p, _ := peer.FromContext(st.Context())
			mu.Lock()
			peers[p.Addr.String()] = true
			mu.Unlock()
			return nil
		}})
	cc := dial(t, e.addr)
	ctx := testCtx(t)
	waitFor(t, "a second connection", func() bool {
		s, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
		if err == nil {
			s.Recv()
		}
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		return len(peers) >= 2
	})
}

func TestMaxConcurrentStreams(t *testing.T) {
	hold := make(chan struct{})
	e := start(t, Config[req]{MaxConcurrentStreams: 2, Handler: func(st *Stream[req]) error {
		st.Send(respFor("a"))
		<-hold
		return nil
	}})
	defer close(hold)
	cc := dial(t, e.addr)
	ctx := testCtx(t)
	for range 2 {
		s, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	// A third waits (the client respects the setting).
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	s, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(sctx)
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("third stream: %v, want DeadlineExceeded", err)
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config[req]{InitialWindowSize: 100, MaxRecvMsgSize: -1})
	if err == nil {
		t.Fatal("New accepted an empty Config")
	}
	for _, want := range []string{"Method", "Unmarshal", "Handler", "InitialWindowSize", "MaxRecvMsgSize"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestServeAfterStop(t *testing.T) {
	srv, err := New(Config[req]{Method: method, Unmarshal: unmarshalReq, Handler: echo})
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(lis); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Others().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Others().Accept after Stop: %v", err)
	}
}

func lbpbClient(t testing.TB, addr string) (lbpb.LoadBalancer_BalanceLoadClient, error) {
	return lbpb.NewLoadBalancerClient(dial(t, addr)).BalanceLoad(testCtx(t))
}

// TestConcurrentStreams: many connections and streams, each sending one
// shared message from a goroutine other than the handler's, while the
// handler returns on its own schedule (the sender must stop then).
func TestConcurrentStreams(t *testing.T) {
	shared := respFor(strings.Repeat("s", 3000))
	var senders sync.WaitGroup
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		r, err := recv(st)
		if err != nil {
			return err
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			for st.Send(shared) == nil {
			}
		}()
		// Return after the client's next message (or its end).
		recv(st)
		return status.Error(codes.Aborted, r.GetInitialRequest().GetName())
	}})
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for c := range 10 {
		cc := dial(t, e.addr)
		for s := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("c%d-s%d", c, s)
				stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
				if err != nil {
					errs <- err
					return
				}
				stream.Send(initial(name))
				for range 20 {
					if _, err := stream.Recv(); err != nil {
						errs <- fmt.Errorf("%s: %v", name, err)
						return
					}
				}
				stream.Send(initial("bye"))
				for {
					_, err := stream.Recv()
					if err == nil {
						continue
					}
					if s := status.Convert(err); s.Code() != codes.Aborted || s.Message() != name {
						errs <- fmt.Errorf("%s: end %v", name, err)
					}
					return
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	senders.Wait()
	waitFor(t, "streams to end", func() bool { return e.srv.Stats().Streams == 0 })
}

func TestDeadline(t *testing.T) {
	got := make(chan error, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		<-st.Context().Done()
		got <- recvEnd(st)
		return st.Context().Err()
	}})
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("Recv: %v, want DeadlineExceeded", err)
	}
	if err := <-got; status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Canceled {
		t.Fatalf("Next: %v, want DeadlineExceeded (or Canceled when the client's RST came first)", err)
	}
}

func TestTapPlainError(t *testing.T) {
	e := start(t, Config[req]{Tap: func(ctx context.Context) (context.Context, error) {
		return nil, errors.New("go away")
	}})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Recv: %v, want PermissionDenied", err)
	}
	if s := e.srv.Stats(); s.Streams != 0 {
		t.Fatalf("Stats = %+v", s)
	}
}

// TestLargeWindows: a client offering large windows gets a large message
// at once; the server offering large windows takes a large request.
func TestLargeWindows(t *testing.T) {
	big := respFor(strings.Repeat("x", 1<<20))
	e := start(t, Config[req]{InitialWindowSize: 1 << 20, Handler: func(st *Stream[req]) error {
		r, err := recv(st)
		if err != nil {
			return err
		}
		if n := len(r.GetInitialRequest().GetName()); n != 1<<20 {
			return status.Errorf(codes.InvalidArgument, "name of %d bytes", n)
		}
		return st.Send(big)
	}})
	cc := dial(t, e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(4<<20), grpc.WithInitialConnWindowSize(4<<20))
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(initial(strings.Repeat("n", 1<<20))); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetServerList().GetServers()[0].GetLoadBalanceToken()) != 1<<20 {
		t.Fatalf("Recv: %v", err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv: %v, want io.EOF", err)
	}
}

// TestClientKeepalive: a grpc-go client's keepalive pings (at its floor of
// 10 s, which cannot be scaled down from outside grpc-go) within the
// server's policy keep the stream; too-frequent pings are tested with a
// raw client (TestTooManyPings).
func TestClientKeepalive(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a grpc-go client's 10 s keepalive")
	}
	t.Parallel()
	e := start(t, Config[req]{MinPingInterval: 5 * time.Second})
	cc := dial(t, e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}))
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(12 * time.Second) // one ping, answered
	stream.Send(initial("b"))
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("after the client's keepalive ping: %v", err)
	}
	if s := e.srv.Stats(); s.Conns != 1 {
		t.Fatalf("Stats = %+v, want the one connection", s)
	}
}

// TestGracefulStopIdle: owned connections without streams, and a
// handed-off one, do not hold GracefulStop (the GOAWAY ping's ack ends
// them, not the 5 s timer).
func TestGracefulStopIdle(t *testing.T) {
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error { return nil }})
	ctx := testCtx(t)
	for range 3 {
		s, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != io.EOF {
			t.Fatalf("Recv: %v, want io.EOF", err)
		}
	}
	if _, err := healthpb.NewHealthClient(dial(t, e.addr)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	e.srv.GracefulStop()
	if d := time.Since(begin); d > 4*time.Second {
		t.Errorf("GracefulStop took %v", d)
	}
	if s := e.srv.Stats(); s.Conns != 0 {
		t.Fatalf("Stats = %+v", s)
	}
}

// TestMaxConnectionAgeGrace: a stream still open at the age gets the
// grace, then the connection closes under it.
func TestMaxConnectionAgeGrace(t *testing.T) {
	got := make(chan error, 1)
	e := start(t, Config[req]{MaxConnectionAge: 100 * time.Millisecond, MaxConnectionAgeGrace: 200 * time.Millisecond,
		Handler: func(st *Stream[req]) error {
			st.Send(respFor("a"))
			<-st.Context().Done()
			got <- recvEnd(st)
			return nil
		}})
	stream, err := lbpb.NewLoadBalancerClient(dial(t, e.addr)).BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("Recv: %v, want Unavailable", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("the connection lasted %v past its age", d)
	}
	if err := <-got; status.Code(err) != codes.Unavailable {
		t.Fatalf("Next: %v, want Unavailable", err)
	}
}

// parkingEcho is echo that parks its stream whenever nothing is there to
// read, and is resumed by OnReady. active counts its runs in progress.
func parkingEcho(active *atomic.Int32) func(st *Stream[req]) error {
	return func(st *Stream[req]) error {
		var parked atomic.Bool
		var run func() error
		run = func() error {
			active.Add(1)
			defer active.Add(-1)
			for {
				m, ok, err := st.Next()
				switch {
				case ok:
					if err := st.Send(respFor(m.GetInitialRequest().GetName())); err != nil {
						return err
					}
					continue
				case err == io.EOF:
					return nil
				case err != nil:
					return err
				}
				// Register, then look: a signal after the look finds the
				// stream parked.
				parked.Store(true)
				if len(st.Ready()) == 0 || !parked.CompareAndSwap(true, false) {
					return Park
				}
				<-st.Ready()
			}
		}
		st.OnReady(func() {
			if parked.CompareAndSwap(true, false) {
				st.Resume(run)
			}
		})
		return run()
	}
}

// TestPark: a handler that parks leaves its stream open with no goroutine
// of its own; Resume, called from OnReady, serves each request; the
// client's half-close ends the stream with OK, and Stop ends a parked
// stream.
func TestPark(t *testing.T) {
	var active atomic.Int32
	e := start(t, Config[req]{Handler: parkingEcho(&active)})
	client := lbpb.NewLoadBalancerClient(dial(t, e.addr))
	stream, err := client.BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		echoOnce(t, stream, i)
		waitFor(t, "the handler to park", func() bool { return active.Load() == 0 })
		if s := e.srv.Stats(); s.Streams != 1 {
			t.Fatalf("parked: %d streams, want 1", s.Streams)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("Recv after half-close: %v, want io.EOF (status OK)", err)
	}
	waitFor(t, "the stream to end", func() bool { return e.srv.Stats().Streams == 0 })

	// A parked stream at Stop: resumed, it sees the end and returns.
	parked, err := client.BalanceLoad(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := parked.Send(initial("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := parked.Recv(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the handler to park", func() bool { return active.Load() == 0 })
	e.srv.Stop()
	if _, err := parked.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("Recv after Stop: %v, want Unavailable", err)
	}
	if st := e.srv.Stats(); st.Conns != 0 || st.Streams != 0 {
		t.Fatalf("Stats after Stop = %+v", st)
	}
}
