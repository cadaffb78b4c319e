package backend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/lbtoken"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const testTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testConfig is a quick configuration: no Consul, no drain delay, logs
// discarded unless the test is verbose.
func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.DrainDelay = 0
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// running is a backend whose Serve runs in the background.
type running struct {
	*Backend
	cancel context.CancelFunc
	done   chan error // receives Serve's result
}

// stop cancels Serve and returns its result, failing the test if it takes
// longer than testTimeout.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // later calls get it too
		return err
	case <-time.After(testTimeout):
		t.Fatalf("Serve did not return within %v of cancel", testTimeout)
		return nil
	}
}

// serve starts a backend and waits until it is ready. Cleanup stops it.
func serve(t *testing.T, cfg Config) *running {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Backend: b, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- b.Serve(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	select {
	case <-b.Ready():
	case err := <-r.done:
		r.done <- err
		t.Fatalf("Serve returned before ready: %v", err)
	case <-time.After(testTimeout):
		t.Fatalf("backend not ready within %v", testTimeout)
	}
	return r
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, lbtoken.MetadataKey, tok)
}

func TestNewDefaults(t *testing.T) {
	b, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Serve(canceled()) // releases the listener

	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Errorf("Addr() = %q, want 127.0.0.1 and a chosen port", b.Addr())
	}
	if b.Addr() != b.ListenAddr().String() {
		t.Errorf("Addr() = %q, want the listener's address %q", b.Addr(), b.ListenAddr())
	}
	if want := "user-srv-127.0.0.1-" + port; b.ID() != want {
		t.Errorf("ID() = %q, want %q", b.ID(), want)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   string // part of the error
	}{
		{"negative weight", func(c *Config) { c.Weight = -1 }, "weight"},
		{"negative drain delay", func(c *Config) { c.DrainDelay = -time.Second }, "drain delay"},
		{"negative shutdown timeout", func(c *Config) { c.ShutdownTimeout = -time.Second }, "shutdown timeout"},
		{"ID with a slash", func(c *Config) { c.ID = "a/b" }, "ID"},
		{"advertise without port", func(c *Config) { c.Advertise = "127.0.0.1" }, "advertise"},
		{"advertise port 0", func(c *Config) { c.Advertise = "127.0.0.1:0" }, "advertise"},
		{"unspecified listen, no advertise", func(c *Config) { c.Listen = "0.0.0.0:0" }, "set Advertise"},
		{"bad listen address", func(c *Config) { c.Listen = "127.0.0.1:notaport" }, "backend"},
		{"negative ORCA min interval", func(c *Config) { c.ORCAMinInterval = -time.Second }, "ORCA min interval"},
		{"negative load window", func(c *Config) { c.LoadWindow = -time.Second }, "load window"},
		{"negative latency", func(c *Config) { c.Latency = -time.Second }, "latency"},
		{"negative call CPU", func(c *Config) { c.CallCPU = -time.Millisecond }, "call CPU"},
		{"CPU burn over 1", func(c *Config) { c.CPUBurn = 1.5 }, "CPU burn"},
		{"negative CPU burn", func(c *Config) { c.CPUBurn = -0.1 }, "CPU burn"},
		{"NaN CPU burn", func(c *Config) { c.CPUBurn = math.NaN() }, "CPU burn"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.modify(&cfg)
			b, err := New(cfg)
			if err == nil {
				b.Serve(canceled())
				t.Fatalf("New succeeded, want an error about %s", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestNewClampsToConsulMinimums(t *testing.T) {
	cfg := testConfig(t)
	cfg.CheckInterval = 10 * time.Millisecond
	cfg.DeregisterCriticalAfter = time.Second
	cfg.Weight = 0
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Serve(canceled())
	if b.cfg.CheckInterval != time.Second || b.cfg.DeregisterCriticalAfter != time.Minute || b.cfg.Weight != 1 {
		t.Errorf("check interval, deregister after, weight = %v, %v, %d; want 1s, 1m0s, 1",
			b.cfg.CheckInterval, b.cfg.DeregisterCriticalAfter, b.cfg.Weight)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestServeWithDoneContextReleasesListener(t *testing.T) {
	b, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Serve(canceled()); err != nil {
		t.Fatalf("Serve(done ctx) = %v, want nil", err)
	}
	l, err := net.Listen("tcp", b.ListenAddr().String())
	if err != nil {
		t.Fatalf("listener not released: %v", err)
	}
	l.Close()
	if err := b.Serve(context.Background()); err == nil {
		t.Error("second Serve succeeded, want an error")
	}
}

func TestServeAnswersAndEchoesToken(t *testing.T) {
	r := serve(t, testConfig(t))
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c := userpb.NewUserClient(dial(t, r.Addr()))

	resp, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 2, PSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetBackendId() != r.ID() || resp.GetBackendAddr() != r.Addr() || resp.GetLbToken() != "" || len(resp.GetUsers()) != 3 {
		t.Errorf("response %v, want 3 users from %s at %s without a token", resp, r.ID(), r.Addr())
	}

	tok := lbtoken.ForID(r.ID())
	resp, err = c.GetUserList(withToken(ctx, tok), &userpb.PageInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetLbToken() != tok {
		t.Errorf("lb_token = %q, want %q", resp.GetLbToken(), tok)
	}

	_, err = c.GetUserList(ctx, &userpb.PageInfo{PSize: MaxPageSize + 1})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetUserList(p_size too big) = %v, want InvalidArgument", err)
	}
}

func TestVerifier(t *testing.T) {
	for _, required := range []bool{false, true} {
		cfg := testConfig(t)
		cfg.ID = "user-srv-verified"
		cfg.RequireLBToken = required
		r := serve(t, cfg)
		ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
		defer cancel()
		cc := dial(t, r.Addr())
		c := userpb.NewUserClient(cc)

		good := lbtoken.ForID("user-srv-verified")
		bad := lbtoken.ForID("user-srv-other")
		noTokenCode := codes.OK
		if required {
			noTokenCode = codes.PermissionDenied
		}
		for _, tc := range []struct {
			name string
			ctx  context.Context
			want codes.Code
		}{
			{"no token", ctx, noTokenCode},
			{"right token", withToken(ctx, good), codes.OK},
			{"wrong token", withToken(ctx, bad), codes.PermissionDenied},
		} {
			_, err := c.GetUserList(tc.ctx, &userpb.PageInfo{})
			if got := status.Code(err); got != tc.want {
				t.Errorf("required=%v, %s: code %v (%v), want %v", required, tc.name, got, err, tc.want)
			}
		}
		// Health checks never need a token.
		h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("required=%v: health check = %v, %v; want SERVING", required, h, err)
		}
	}
}

// TestKeyedVerifier: a backend with an lb-token key accepts only the keyed
// token of its ID; the unkeyed token, a token made with another key and
// another instance's keyed token are all rejected, whether or not a token
// is required.
func TestKeyedVerifier(t *testing.T) {
	key := lbtoken.Key("backend-test-key-0123456789")
	for _, required := range []bool{false, true} {
		cfg := testConfig(t)
		cfg.ID = "user-srv-keyed"
		cfg.RequireLBToken = required
		cfg.LBTokenKey = key
		r := serve(t, cfg)
		ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
		defer cancel()
		c := userpb.NewUserClient(dial(t, r.Addr()))
		noTokenCode := codes.OK
		if required {
			noTokenCode = codes.PermissionDenied
		}
		for _, tc := range []struct {
			name, token string
			want        codes.Code
		}{
			{"no token", "", noTokenCode},
			{"keyed token", key.ForID("user-srv-keyed"), codes.OK},
			{"unkeyed token of the ID", lbtoken.ForID("user-srv-keyed"), codes.PermissionDenied},
			{"forged with another key", lbtoken.Key("attacker-guess-0123456789").ForID("user-srv-keyed"), codes.PermissionDenied},
			{"keyed token of another ID", key.ForID("user-srv-other"), codes.PermissionDenied},
		} {
			callCtx := ctx
			if tc.token != "" {
				callCtx = withToken(ctx, tc.token)
			}
			resp, err := c.GetUserList(callCtx, &userpb.PageInfo{})
			if got := status.Code(err); got != tc.want {
				t.Errorf("required=%v, %s: code %v (%v), want %v", required, tc.name, got, err, tc.want)
			}
			if err == nil && resp.GetLbToken() != tc.token {
				t.Errorf("required=%v, %s: echoed token %q, want %q", required, tc.name, resp.GetLbToken(), tc.token)
			}
		}
	}
}

func TestSetServingAndDrain(t *testing.T) {
	cfg := testConfig(t)
	cfg.DrainDelay = 500 * time.Millisecond
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	cc := dial(t, r.Addr())
	hc := healthpb.NewHealthClient(cc)
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("health check %q: %v", service, err)
		}
		return resp.GetStatus()
	}
	for _, serving := range []bool{false, true, false, true} {
		r.SetServing(serving)
		want := healthpb.HealthCheckResponse_NOT_SERVING
		if serving {
			want = healthpb.HealthCheckResponse_SERVING
		}
		for _, svc := range []string{"", userpb.User_ServiceDesc.ServiceName} {
			if got := check(svc); got != want {
				t.Errorf("after SetServing(%v): %q is %v, want %v", serving, svc, got, want)
			}
		}
	}

	// Once draining starts, health is NOT_SERVING but calls still work
	// until the drain delay has passed.
	r.cancel()
	deadline := time.Now().Add(cfg.DrainDelay / 2)
	for check("") != healthpb.HealthCheckResponse_NOT_SERVING {
		if time.Now().After(deadline) {
			t.Fatal("health did not turn NOT_SERVING at the start of the drain")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := userpb.NewUserClient(cc).GetUserList(ctx, &userpb.PageInfo{}); err != nil {
		t.Errorf("call during the drain delay: %v", err)
	}
	r.SetServing(true)
	if got := check(""); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("SetServing(true) while draining: health %v, want NOT_SERVING", got)
	}
	if err := r.stop(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if _, err := userpb.NewUserClient(cc).GetUserList(ctx, &userpb.PageInfo{}, grpc.WaitForReady(false)); status.Code(err) != codes.Unavailable {
		t.Errorf("call after Serve returned: %v, want Unavailable", err)
	}
}

func TestShutdownTimeoutCutsLongCalls(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 200 * time.Millisecond
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	// A Watch stream lasts until the client or the server ends it, so
	// GracefulStop alone would wait for it.
	stream, err := healthpb.NewHealthClient(dial(t, r.Addr())).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := r.stop(t); err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Serve took %v to stop, want about the shutdown timeout %v", d, cfg.ShutdownTimeout)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				t.Errorf("stream ended cleanly, want it cut")
			}
			break
		}
	}
}

// TestKeyedVerifierDuringRollout: with AcceptUnkeyedLBToken, a keyed
// backend accepts its unkeyed token too, and still no other.
func TestKeyedVerifierDuringRollout(t *testing.T) {
	key := lbtoken.Key("backend-test-key-0123456789")
	cfg := testConfig(t)
	cfg.ID = "user-srv-rollout"
	cfg.RequireLBToken = true
	cfg.LBTokenKey = key
	cfg.AcceptUnkeyedLBToken = true
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	c := userpb.NewUserClient(dial(t, r.Addr()))
	for _, tc := range []struct {
		name, token string
		want        codes.Code
	}{
		{"keyed token", key.ForID("user-srv-rollout"), codes.OK},
		{"unkeyed token", lbtoken.ForID("user-srv-rollout"), codes.OK},
		{"unkeyed token of another ID", lbtoken.ForID("user-srv-other"), codes.PermissionDenied},
		{"forged with another key", lbtoken.Key("attacker-guess-0123456789").ForID("user-srv-rollout"), codes.PermissionDenied},
	} {
		if _, err := c.GetUserList(withToken(ctx, tc.token), &userpb.PageInfo{}); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
