package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/lbserver"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// agent is the Consul agent shared by every test; tests keep apart by
// using their own service names.
var agent *consultest.Agent

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped in -short mode")
		os.Exit(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	a, err := consultest.Run(ctx, consultest.Options{})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: starting Consul: %v\n", err)
		os.Exit(1)
	}
	agent = a
	code := m.Run()
	a.Stop()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: goroutines left behind: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// quietLogger drops logs unless LOOKASIDE_E2E_LOG is set.
func quietLogger() *slog.Logger {
	if os.Getenv("LOOKASIDE_E2E_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// serviceName gives each test its own Consul service.
func serviceName(t testing.TB) string {
	n := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	return "e2e-" + n
}

// runningBackend is a backend serving in this process.
type runningBackend struct {
	*backend.Backend
	cancel context.CancelFunc
	done   chan error

	once sync.Once
	err  error // what Serve returned; set by halt
}

// halt stops the backend and returns what Serve returned; safe to call
// more than once (the test's cleanup calls it too).
func (b *runningBackend) halt() error {
	b.once.Do(func() { b.cancel(); b.err = <-b.done })
	return b.err
}

// stop drains the backend (deregister, drain delay, graceful stop) and waits.
func (b *runningBackend) stop(t testing.TB) {
	t.Helper()
	if err := b.halt(); err != nil {
		t.Errorf("backend %s: %v", b.ID(), err)
	}
}

func startBackend(t testing.TB, service string, tweak func(*backend.Config)) *runningBackend {
	t.Helper()
	cfg := backend.DefaultConfig()
	cfg.Service = service
	cfg.Consul = agent.Client()
	cfg.CheckInterval = time.Second
	cfg.DrainDelay = 300 * time.Millisecond
	cfg.Logger = quietLogger()
	if tweak != nil {
		tweak(&cfg)
	}
	b, err := backend.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rb := &runningBackend{Backend: b, cancel: cancel, done: make(chan error, 1)}
	go func() { rb.done <- b.Serve(ctx) }()
	select {
	case <-b.Ready():
	case err := <-rb.done:
		t.Fatalf("backend %s: %v", b.ID(), err)
	case <-time.After(20 * time.Second):
		t.Fatalf("backend %s not ready", b.ID())
	}
	t.Cleanup(func() { rb.halt() })
	return rb
}

// startBackends starts n backends and waits until Consul reports all of
// them passing.
func startBackends(t testing.TB, service string, n int) []*runningBackend {
	t.Helper()
	var bs []*runningBackend
	for range n {
		bs = append(bs, startBackend(t, service, nil))
	}
	waitPassing(t, service, n)
	return bs
}

func waitPassing(t testing.TB, service string, n int) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d passing instances of %s", n, service), func() bool {
		entries, _, err := agent.Client().Health().Service(service, "", true, nil)
		return err == nil && len(entries) == n
	})
}

// lb is a balancer serving in this process, which can be stopped and
// started again on the same address.
type lb struct {
	t      testing.TB
	addr   string
	tweak  func(*lbserver.Config)
	serve  lbserver.ServeOptions // TLS and its rule; ShutdownTimeout is set by start
	mu     sync.Mutex
	srv    *lbserver.Server // guarded by mu
	cancel context.CancelFunc
	done   chan error
}

func startLB(t testing.TB, tweak func(*lbserver.Config)) *lb {
	t.Helper()
	return startLBWith(t, tweak, lbserver.ServeOptions{})
}

// startLBWith starts a balancer served with o (for example its TLS
// credentials).
func startLBWith(t testing.TB, tweak func(*lbserver.Config), o lbserver.ServeOptions) *lb {
	t.Helper()
	l := &lb{t: t, addr: "127.0.0.1:0", tweak: tweak, serve: o}
	l.start()
	t.Cleanup(l.stop)
	return l
}

func (l *lb) start() {
	t := l.t
	t.Helper()
	ccfg := consul.DefaultConfig()
	ccfg.Client = consul.API(agent.Client())
	ccfg.Logger = quietLogger()
	src, err := consul.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := lbserver.DefaultConfig()
	cfg.Source = src
	cfg.ClientStatsInterval = time.Second
	cfg.Logger = quietLogger()
	if l.tweak != nil {
		l.tweak(&cfg)
	}
	srv, err := lbserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	// The port of a stopped balancer can take a moment to be free again.
	waitFor(t, 10*time.Second, "listening on "+l.addr, func() bool {
		lis, err = net.Listen("tcp", l.addr)
		return err == nil
	})
	l.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		o := l.serve
		o.ShutdownTimeout = 5 * time.Second
		done <- lbserver.Serve(ctx, lis, srv, o)
	}()
	l.mu.Lock()
	l.srv, l.cancel, l.done = srv, cancel, done
	l.mu.Unlock()
}

// stop shuts the balancer down in order and waits; safe to call twice.
func (l *lb) stop() {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.cancel = nil
	l.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	if err := <-done; err != nil {
		l.t.Errorf("balancer: %v", err)
	}
}

func (l *lb) server() *lbserver.Server {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.srv
}

// client dials target through the balancers with the grpclb policy.
func client(t testing.TB, o lbdial.Options) userpb.UserClient {
	t.Helper()
	cc, _, err := lbdial.Dial(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return userpb.NewUserClient(cc)
}

func call(ctx context.Context, c userpb.UserClient) (*userpb.UserListResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 2})
}

// spread makes n calls one after another and counts them per backend ID.
// Any failed call fails the test.
func spread(t testing.TB, c userpb.UserClient, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		r, err := call(t.Context(), c)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		got[r.BackendId]++
	}
	return got
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSeen calls until every backend in want has served a call.
func waitSeen(t testing.TB, c userpb.UserClient, want ...*runningBackend) {
	t.Helper()
	seen := map[string]bool{}
	waitFor(t, 20*time.Second, "calls to reach every backend", func() bool {
		if r, err := call(t.Context(), c); err == nil {
			seen[r.BackendId] = true
		}
		for _, b := range want {
			if !seen[b.ID()] {
				return false
			}
		}
		return true
	})
}

// load calls c from one goroutine until stopped (or its time limit
// passes), recording which backend served each call and when, and every
// failure.
type load struct {
	mu       sync.Mutex
	lastSeen map[string]time.Time // guarded by mu
	counts   map[string]int       // guarded by mu
	errs     []error              // guarded by mu
	calls    atomic.Int64
	stop     chan struct{}
	done     chan struct{}
}

// startLoad calls c every `every` for at most 60 s.
func startLoad(ctx context.Context, c userpb.UserClient, every time.Duration) *load {
	return startLoadFor(ctx, c, every, 60*time.Second)
}

// startLoadFor calls c every `every` for at most limit.
func startLoadFor(ctx context.Context, c userpb.UserClient, every, limit time.Duration) *load {
	l := &load{lastSeen: map[string]time.Time{}, counts: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		limit := time.After(limit)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-limit:
				return
			case <-tick.C:
			}
			r, err := call(ctx, c)
			l.calls.Add(1)
			l.mu.Lock()
			if err != nil {
				l.errs = append(l.errs, err)
			} else {
				l.lastSeen[r.BackendId] = time.Now()
				l.counts[r.BackendId]++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// finish stops the calls and returns the counts per backend and every
// failure, joined. Safe to call more than once.
func (l *load) finish() (counts map[string]int, err error) {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts, errors.Join(l.errs...)
}

// failed returns the failures so far.
func (l *load) failed() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

func (l *load) last(id string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastSeen[id]
}
