package lbserver

import (
	"context"
	"fmt"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// dirSource is a fakeSource with a discovery.Directory whose ready flag
// the test sets.
type dirSource struct {
	*fakeSource
	mu      sync.Mutex
	ready   bool          // guarded by mu
	changed chan struct{} // guarded by mu; closed and replaced by setReady
	lookups int           // guarded by mu
}

var _ discovery.Directory = (*dirSource)(nil)

func newDirSource() *dirSource {
	return &dirSource{fakeSource: newFakeSource(), changed: make(chan struct{})}
}

func (d *dirSource) Lookup(string) (exists, ready bool, changed <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lookups++
	return false, d.ready, d.changed
}

func (d *dirSource) setReady(r bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ready = r
	close(d.changed)
	d.changed = make(chan struct{})
}

type served struct {
	srv    *Server
	cc     *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{} // closed when Serve returned
	err    error         // what Serve returned; read after done
	logs   *syncbuf.Buffer
}

// serveTest runs Serve with cfg and o on a loopback listener; the cleanup
// stops it if the test did not.
func serveTest(t *testing.T, cfg Config, o ServeOptions) *served {
	t.Helper()
	logs := &syncbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sv := &served{srv: s, cancel: cancel, done: make(chan struct{}), logs: logs}
	go func() {
		defer close(sv.done)
		sv.err = Serve(ctx, lis, s, o)
	}()
	sv.cc, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sv.cc.Close()
		cancel()
		select {
		case <-sv.done:
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return")
		}
		if sv.err != nil {
			t.Errorf("Serve: %v", sv.err)
		}
	})
	return sv
}

func (sv *served) health(t *testing.T) [2]healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out [2]healthpb.HealthCheckResponse_ServingStatus
	for i, name := range []string{"", HealthService} {
		r, err := healthpb.NewHealthClient(sv.cc).Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil {
			t.Fatalf("health %q: %v", name, err)
		}
		out[i] = r.GetStatus()
	}
	return out
}

var (
	serving    = [2]healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_SERVING}
	notServing = [2]healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING}
)

// TestHealthFollowsReadiness: a replica whose source never read its
// directory reports NOT_SERVING (so its Consul check fails and it leaves
// the SRV answers), turns SERVING once it did, and stays SERVING when the
// source later cannot read (an outage: it holds good data).
func TestHealthFollowsReadiness(t *testing.T) {
	src := newDirSource()
	sv := serveTest(t, testConfig(src), ServeOptions{ShutdownTimeout: 2 * time.Second})
	if got := sv.health(t); got != notServing {
		t.Fatalf("before the directory was read: health %v, want %v", got, notServing)
	}
	if sv.srv.Ready() {
		t.Fatal("Ready before the directory was read")
	}
	time.Sleep(100 * time.Millisecond)
	if got := sv.health(t); got != notServing {
		t.Fatalf("still not read: health %v, want %v", got, notServing)
	}

	src.setReady(true)
	if !sv.srv.Ready() {
		t.Fatal("not Ready once the directory was read")
	}
	deadline := time.Now().Add(readyPoll / 2) // the changed channel wakes Serve; no poll needed
	for sv.health(t) != serving {
		if time.Now().After(deadline) {
			t.Fatalf("health %v %v after the directory was read, want %v", sv.health(t), readyPoll/2, serving)
		}
		time.Sleep(5 * time.Millisecond)
	}

	src.setReady(false) // not a Directory's contract, but Serve must not flip back
	time.Sleep(100 * time.Millisecond)
	if got := sv.health(t); got != serving {
		t.Fatalf("after the source lost Consul: health %v, want %v", got, serving)
	}
}

// TestHealthWithoutDirectory: sources without a directory (static lists)
// are ready at once.
func TestHealthWithoutDirectory(t *testing.T) {
	sv := serveTest(t, testConfig(newFakeSource()), ServeOptions{})
	if !sv.srv.Ready() {
		t.Fatal("a source without a directory is not Ready")
	}
	if got := sv.health(t); got != serving {
		t.Fatalf("health %v, want %v", got, serving)
	}
}

// TestNotReadyLogsErrorRateLimited: a replica not ready for long says so at
// ERROR, once per period, and says when it becomes ready.
func TestNotReadyLogsErrorRateLimited(t *testing.T) {
	defer func(p, a, l time.Duration) { readyPoll, notReadyLogAfter, notReadyLogPeriod = p, a, l }(readyPoll, notReadyLogAfter, notReadyLogPeriod)
	readyPoll, notReadyLogAfter, notReadyLogPeriod = 5*time.Millisecond, 50*time.Millisecond, time.Minute
	src := newDirSource()
	sv := serveTest(t, testConfig(src), ServeOptions{})
	time.Sleep(300 * time.Millisecond)
	logs := sv.logs.String()
	if n := strings.Count(logs, "level=ERROR msg=\"not ready"); n != 1 {
		t.Fatalf("%d not-ready ERROR lines in 300 ms (period 1 min), want 1:\n%s", n, logs)
	}
	src.mu.Lock()
	lookups := src.lookups
	src.mu.Unlock()
	if lookups > 300/5+5 {
		t.Errorf("%d lookups in 300 ms with a 5 ms poll", lookups)
	}
	src.setReady(true)
	waitLog(t, sv.logs, "ready: read the service directory")
}

func waitLog(t *testing.T, logs *syncbuf.Buffer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s", want, logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestShutdownBounded: the whole shutdown, Drain included, ends within
// ShutdownTimeout, whether Drain honours its ctx or not, and the cut is
// logged; an open stream ends and health turns NOT_SERVING first.
func TestShutdownBounded(t *testing.T) {
	for _, tc := range []struct {
		name        string
		honoursCtx  bool
		wantLogLine string
	}{
		{"drain honours its ctx", true, "shutdown: drain cut"},
		{"drain ignores its ctx", false, "shutdown: drain cut"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const timeout = time.Second
			release := make(chan struct{})
			defer close(release)
			var healthDuringDrain [2]healthpb.HealthCheckResponse_ServingStatus
			var sv *served
			drainStarted := make(chan struct{})
			o := ServeOptions{ShutdownTimeout: timeout, Drain: func(ctx context.Context) {
				healthDuringDrain = sv.health(t)
				close(drainStarted)
				if tc.honoursCtx {
					select {
					case <-ctx.Done():
					case <-time.After(time.Minute):
					}
					return
				}
				<-release
			}}
			sv = serveTest(t, testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))), o)
			s := open(t, lbClient(sv), "svc")
			recv(t, s)
			recv(t, s)

			start := time.Now()
			sv.cancel()
			select {
			case <-sv.done:
				if sv.err != nil {
					t.Fatalf("Serve: %v", sv.err)
				}
			case <-time.After(timeout + 2*time.Second):
				t.Fatalf("Serve still running %v after ctx ended, with ShutdownTimeout %v", timeout+2*time.Second, timeout)
			}
			took := time.Since(start)
			<-drainStarted
			if took > timeout+200*time.Millisecond {
				t.Errorf("shutdown took %v, want at most %v (+200ms)", took, timeout)
			}
			if healthDuringDrain != notServing {
				t.Errorf("health during Drain %v, want %v", healthDuringDrain, notServing)
			}
			if _, err := s.Recv(); err == nil {
				t.Error("stream still open after Serve returned")
			}
			if !strings.Contains(sv.logs.String(), tc.wantLogLine) {
				t.Errorf("no %q in the logs:\n%s", tc.wantLogLine, sv.logs.String())
			}
			t.Logf("shutdown took %v", took)
		})
	}
}

// TestShutdownClosesConnectionsAtTheBound: a call that does not end by
// itself (a health Watch) holds the graceful stop; its connection is
// closed just before ShutdownTimeout, and the cut is logged.
func TestShutdownClosesConnectionsAtTheBound(t *testing.T) {
	const timeout = time.Second
	sv := serveTest(t, testConfig(newFakeSource()), ServeOptions{ShutdownTimeout: timeout})
	w, err := healthpb.NewHealthClient(sv.cc).Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health watch: %v, %v", r, err)
	}
	start := time.Now()
	sv.cancel()
	select {
	case <-sv.done:
	case <-time.After(timeout + 2*time.Second):
		t.Fatalf("Serve still running %v after ctx ended", timeout+2*time.Second)
	}
	took := time.Since(start)
	if took > timeout+200*time.Millisecond || took < timeout/2 {
		t.Errorf("shutdown took %v, want about %v", took, timeout)
	}
	waitLog(t, sv.logs, "closing their connections")
	t.Logf("shutdown took %v", took)
}

func lbClient(sv *served) lbpb.LoadBalancerClient { return lbpb.NewLoadBalancerClient(sv.cc) }

// runDirSource is a dirSource whose directory is read only while Run
// runs, as discovery/consul's.
type runDirSource struct {
	*dirSource
	mu      sync.Mutex
	running int // guarded by mu
}

func (r *runDirSource) Run(ctx context.Context) error {
	r.mu.Lock()
	r.running++
	r.mu.Unlock()
	r.setReady(true)
	<-ctx.Done()
	r.mu.Lock()
	r.running--
	r.mu.Unlock()
	return ctx.Err()
}

func (r *runDirSource) runs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running
}

// TestServeRunsTheDirectory: with no stream open, Serve runs a source's
// directory, so the replica becomes ready, and stops it on shutdown.
func TestServeRunsTheDirectory(t *testing.T) {
	src := &runDirSource{dirSource: newDirSource()}
	sv := serveTest(t, testConfig(src), ServeOptions{ShutdownTimeout: time.Second})
	deadline := time.Now().Add(5 * time.Second)
	for sv.health(t) != serving {
		if time.Now().After(deadline) {
			t.Fatalf("health %v with the directory running, want %v", sv.health(t), serving)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := src.runs(); n != 1 {
		t.Fatalf("directory running %d times, want 1", n)
	}
	sv.cancel()
	<-sv.done
	if n := src.runs(); n != 0 {
		t.Fatalf("directory still running %d times after Serve returned", n)
	}
}

// TestServeReflection: the balancer port answers server reflection with
// its services, as grpcurl asks; also on a connection whose first stream
// was BalanceLoad (which the balancer's own transport serves, handing
// the other methods to the grpc.Server).
func TestServeReflection(t *testing.T) {
	for _, balanceFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("balance_load_first=%v", balanceFirst), func(t *testing.T) {
			sv := serveTest(t, testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))), ServeOptions{})
			if balanceFirst {
				s := open(t, lbClient(sv), "svc")
				recv(t, s)
				recv(t, s)
				if got := sv.health(t); got != serving {
					t.Errorf("health on the BalanceLoad stream's connection: %v, want %v", got, serving)
				}
			}
			checkReflection(t, sv)
			if testTransport == TransportGRPC {
				return
			}
			// One connection: the own transport's when BalanceLoad came
			// first, else handed to the grpc.Server.
			want := [2]int64{0, 1}
			if balanceFirst {
				want = [2]int64{1, 0}
			}
			if st := sv.srv.Stats(); [2]int64{st.OwnConns, st.HandedOff} != want {
				t.Errorf("own transport connections, handed off: %d, %d; want %d, %d", st.OwnConns, st.HandedOff, want[0], want[1])
			}
		})
	}
}

// checkReflection asks sv's reflection service for the services it
// lists, on sv's client connection.
func checkReflection(t *testing.T, sv *served) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := reflectionpb.NewServerReflectionClient(sv.cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range r.GetListServicesResponse().GetService() {
		got = append(got, s.GetName())
	}
	for _, want := range []string{"grpc.lb.v1.LoadBalancer", "grpc.health.v1.Health"} {
		if !slices.Contains(got, want) {
			t.Errorf("reflection lists %v; want %s among them", got, want)
		}
	}
}
