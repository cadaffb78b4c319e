package e2e

// Consul faults: the balancer against a Consul server that crashes and comes
// back, that denies it by ACL, and that lists an instance by a hostname which
// stops resolving. Each test runs its own Consul agent (internal/consultest),
// so that killing it does not disturb the other tests.

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// faultOutage is how long TestConsulFaultServerKilledUnderLoad keeps Consul
// down. LOOKASIDE_E2E_OUTAGE (a Go duration) shortens it while iterating.
func faultOutage(t *testing.T) time.Duration {
	if s := os.Getenv("LOOKASIDE_E2E_OUTAGE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 || d > 5*time.Minute {
			t.Fatalf("LOOKASIDE_E2E_OUTAGE=%q: want a duration in (0, 5m]", s)
		}
		return d
	}
	return 60 * time.Second
}

// faultSource builds the balancer's Consul source on client, the way
// cmd/lbserver does, with tweak applied last.
func faultSource(t *testing.T, client *api.Client, logger *slog.Logger, tweak func(*consul.Config)) *consul.Source {
	t.Helper()
	cfg := consul.DefaultConfig()
	cfg.Client = consul.API(client)
	cfg.Logger = logger
	if tweak != nil {
		tweak(&cfg)
	}
	src, err := consul.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// faultLB serves a balancer on src in this process until the test ends.
func faultLB(t *testing.T, src *consul.Source, logger *slog.Logger) (*lbserver.Server, string) {
	t.Helper()
	cfg := lbserver.DefaultConfig()
	cfg.Source = src
	cfg.ClientStatsInterval = time.Second
	cfg.Logger = logger
	srv, err := lbserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lbserver.Serve(ctx, lis, srv, lbserver.ServeOptions{ShutdownTimeout: 5 * time.Second}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("balancer: %v", err)
		}
	})
	return srv, lis.Addr().String()
}

// servingBackend starts a backend that only serves: the test registers it in
// Consul itself.
func servingBackend(t *testing.T, service string) *runningBackend {
	t.Helper()
	return startBackend(t, service, func(c *backend.Config) { c.Consul = nil })
}

// registerOnNode registers an instance through the catalog, on a node of its
// own, as a client agent elsewhere would: it has no checks on the server's
// node, so a restarted server does not reset it to critical while its
// checks first run. host "" means the backend's advertised host.
func registerOnNode(t *testing.T, c *api.Client, service string, b *runningBackend, host string, meta map[string]string) {
	t.Helper()
	h, p, err := net.SplitHostPort(b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if host == "" {
		host = h
	}
	port, _ := strconv.Atoi(p)
	_, err = c.Catalog().Register(&api.CatalogRegistration{
		Node:    "node-" + b.ID(),
		Address: "127.0.0.1",
		Service: &api.AgentService{ID: b.ID(), Service: service, Address: host, Port: port, Meta: meta},
	}, nil)
	if err != nil {
		t.Fatalf("registering %s: %v", b.ID(), err)
	}
}

// deregisterNode removes the node registerOnNode made for b, and with it b.
func deregisterNode(c *api.Client, b *runningBackend) error {
	_, err := c.Catalog().Deregister(&api.CatalogDeregistration{Node: "node-" + b.ID()}, nil)
	return err
}

// listWatcher holds one grpclb stream for a service open, as a client
// would, and records every answer.
type listWatcher struct {
	mu        sync.Mutex
	lists     []watchedList // guarded by mu
	fallbacks int           // guarded by mu
	empty     int           // guarded by mu: lists without a backend
	err       error         // guarded by mu: how the stream ended early
	cancel    context.CancelFunc
	done      chan struct{}
}

type watchedList struct {
	at    time.Time
	addrs map[string]bool // host:port of each backend entry
}

func watchLists(t *testing.T, lbAddr, service string) *listWatcher {
	t.Helper()
	cc, err := grpc.NewClient(lbAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &listWatcher{cancel: cancel, done: make(chan struct{})}
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err == nil {
		err = stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
			InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: service + ":50051"}}})
	}
	if err != nil {
		cancel()
		cc.Close()
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer cc.Close()
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					w.mu.Lock()
					w.err = err
					w.mu.Unlock()
				}
				return
			}
			w.mu.Lock()
			switch {
			case resp.GetFallbackResponse() != nil:
				w.fallbacks++
			case resp.GetServerList() != nil:
				addrs := map[string]bool{}
				for _, s := range resp.GetServerList().GetServers() {
					if ip, ok := netip.AddrFromSlice(s.GetIpAddress()); ok && !s.GetDrop() {
						addrs[netip.AddrPortFrom(ip.Unmap(), uint16(s.GetPort())).String()] = true
					}
				}
				if len(addrs) == 0 {
					w.empty++
				}
				w.lists = append(w.lists, watchedList{at: time.Now(), addrs: addrs})
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.close)
	return w
}

func (w *listWatcher) close() {
	w.cancel()
	<-w.done
}

// firstWithout returns when the first list after since without addr
// arrived.
func (w *listWatcher) firstWithout(addr string, since time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.lists {
		if l.at.After(since) && !l.addrs[addr] {
			return l.at, true
		}
	}
	return time.Time{}, false
}

// latest returns the last list received, or nil.
func (w *listWatcher) latest() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.lists) == 0 {
		return nil
	}
	return w.lists[len(w.lists)-1].addrs
}

// verdict returns what a client must never see: fallbacks, empty lists and
// an early end of the stream.
func (w *listWatcher) verdict() (fallbacks, empty, lists int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fallbacks, w.empty, len(w.lists), w.err
}

// bufLogger returns a logger writing text lines into b (and to stderr
// with LOOKASIDE_E2E_LOG), for assertions on what was logged.
func bufLogger(b *syncbuf.Buffer) *slog.Logger {
	var w io.Writer = b
	if os.Getenv("LOOKASIDE_E2E_LOG") != "" {
		w = io.MultiWriter(b, os.Stderr)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// TestConsulFaultServerKilledUnderLoad kills the only Consul server
// (SIGKILL) for 60 s while a client calls through the balancer every 5 ms
// and a second client holds a grpclb stream open, then restarts it and at
// once deregisters one backend. Asserted: no call fails, no client is sent
// an empty list or a fallback, the balancer's health stays SERVING, and the
// balancer has seen the
// deregistration within 2 s of Consul's return (the watch recovered), which
// also ends the calls to that backend.
func TestConsulFaultServerKilledUnderLoad(t *testing.T) {
	t.Parallel()
	outage := faultOutage(t)
	svc := serviceName(t)
	ca := consultest.StartWith(t, consultest.Options{Persistent: true})
	var logs syncbuf.Buffer
	logger := bufLogger(&logs)

	backends := []*runningBackend{servingBackend(t, svc), servingBackend(t, svc), servingBackend(t, svc)}
	for _, b := range backends {
		registerOnNode(t, ca.Client(), svc, b, "", nil)
	}
	srv, lbAddr := faultLB(t, faultSource(t, ca.Client(), logger, nil), logger)
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbAddr}})
	waitSeen(t, c, backends...)
	watcher := watchLists(t, lbAddr, svc)
	waitFor(t, 10*time.Second, "the watching stream's first list", func() bool { return len(watcher.latest()) == 3 })

	ld := startLoadFor(context.Background(), c, 5*time.Millisecond, outage+2*time.Minute)
	defer ld.finish()
	time.Sleep(time.Second)

	if err := ca.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	t.Logf("Consul killed; down for %v", outage)
	time.Sleep(outage / 2)
	// A replica holding good data keeps serving it, and says so.
	if st := healthStatus(t, lbAddr); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("balancer health %v in the middle of the outage, want SERVING: it holds good data", st)
	}
	time.Sleep(outage - outage/2)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := ca.Restart(ctx); err != nil {
		t.Fatalf("restarting Consul: %v", err)
	}
	back := time.Now()
	gone := backends[0]
	if err := deregisterNode(ca.Client(), gone); err != nil {
		t.Fatalf("deregistering %s: %v", gone.ID(), err)
	}
	deregAt := time.Now()
	t.Logf("Consul back after %v (restart took %v); %s deregistered %v after that",
		back.Sub(killedAt), back.Sub(killedAt)-outage, gone.ID(), deregAt.Sub(back))

	// The balancer has recovered when its clients get a list without the
	// deregistered backend; calls to it end once the client applies it.
	const recoveryBound = 2 * time.Second
	var listAt time.Time
	waitFor(t, 45*time.Second, "a list without the deregistered backend", func() bool {
		at, ok := watcher.firstWithout(gone.Addr(), deregAt)
		listAt = at
		return ok
	})
	waitFor(t, 10*time.Second, "calls to stop reaching the deregistered backend", func() bool {
		return time.Since(ld.last(gone.ID())) > time.Second
	})
	callsEnd := max(ld.last(gone.ID()).Sub(deregAt), 0)
	time.Sleep(time.Second) // calls keep going on the new list
	counts, _ := ld.finish()
	errs := ld.failed()
	fallbacks, empty, lists, streamErr := watcher.verdict()

	t.Logf("list without %s %v after the deregistration (%v after Consul's return); last call to it %v after",
		gone.ID(), listAt.Sub(deregAt), listAt.Sub(back), callsEnd)
	t.Logf("%d calls, %d failed; watching stream: %d lists, %d empty, %d fallbacks; balancer FallbacksSent %d; calls per backend %v",
		ld.calls.Load(), len(errs), lists, empty, fallbacks, srv.Stats().FallbacksSent, counts)
	if len(errs) > 0 {
		t.Errorf("%d of %d calls failed across the outage; first: %v", len(errs), ld.calls.Load(), errs[0])
	}
	if empty > 0 || fallbacks > 0 || streamErr != nil {
		t.Errorf("the watching client got %d empty lists and %d fallbacks; stream error: %v", empty, fallbacks, streamErr)
	}
	if n := srv.Stats().FallbacksSent; n != 0 {
		t.Errorf("balancer sent %d fallbacks, want 0", n)
	}
	if d := listAt.Sub(deregAt); d > recoveryBound {
		t.Errorf("the deregistration reached clients %v after it was made, right after Consul's return; want within %v", d, recoveryBound)
	}
	if d := callsEnd; d > recoveryBound+time.Second {
		t.Errorf("calls reached the deregistered backend until %v after the deregistration; want within %v", d, recoveryBound+time.Second)
	}
	for _, b := range backends[1:] {
		if counts[b.ID()] == 0 {
			t.Errorf("backend %s got no calls: %v", b.ID(), counts)
		}
	}
	if line := regexp.MustCompile(`level=INFO msg="Consul reachable again"[^\n]* after=[^\n]*`).FindString(logs.String()); line == "" {
		t.Errorf("no INFO line \"Consul reachable again\" with after=<outage> in the balancer's log:\n%s", lastLines(logs.String(), 20))
	} else {
		t.Logf("balancer log: %s", line)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n > 60 {
		t.Errorf("%d WARN lines over the outage, want them bounded by the backoff", n)
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// countingProxy forwards HTTP requests to a Consul agent and counts them, so
// a test sees how often the balancer asks.
type countingProxy struct {
	addr     string
	requests atomic.Int64
}

func startCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	p := &countingProxy{}
	transport := &http.Transport{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.Transport = transport
	rp.ErrorLog = log.New(io.Discard, "", 0) // requests cut at cleanup
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		rp.ServeHTTP(w, r)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.Serve(lis)
	}()
	t.Cleanup(func() {
		hs.Close()
		<-done
		transport.CloseIdleConnections()
	})
	return p
}

// withoutConsulEnv is this process's environment without the CONSUL_*
// variables, which could lend a binary a token.
func withoutConsulEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	return env
}

// healthStatus asks addr's grpc.health.v1 for the overall status.
func healthStatus(t *testing.T, addr string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check of %s: %v", addr, err)
	}
	return r.GetStatus()
}

// firstAnswerKind opens a grpclb stream for service and says what the
// first answer was: "list of N", "fallback", or the error.
func firstAnswerKind(t *testing.T, addr, service string) string {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err == nil {
		err = stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
			InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: service + ":50051"}}})
	}
	for err == nil {
		var resp *lbpb.LoadBalanceResponse
		if resp, err = stream.Recv(); err != nil {
			break
		}
		switch {
		case resp.GetFallbackResponse() != nil:
			return "fallback"
		case resp.GetServerList() != nil:
			return fmt.Sprintf("list of %d", len(resp.GetServerList().GetServers()))
		}
	}
	return "error: " + err.Error()
}

// TestConsulFaultACLDeny runs the lbserver binary against a Consul that
// denies by default, without a token and with a token Consul does not
// know. Asserted: the replica reports NOT_SERVING (it has never read
// Consul), logs at ERROR what is wrong and what to do, and does not retry
// in a tight loop (requests to Consul and ERROR lines over 10 s).
func TestConsulFaultACLDeny(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	ca := consultest.StartWith(t, consultest.Options{ACL: true})
	b := servingBackend(t, svc)
	registerOnNode(t, ca.Client(), svc, b, "", nil)
	lbBin, _ := buildCmds(t)
	badTokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(badTokenFile, []byte("3f2504e0-4f89-41d3-9a0c-0305e82c3301\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		// Without a token Consul answers 200 with nothing in it and no
		// X-Consul-Results-Filtered-By-ACLs header (it sets that only for
		// requests that carry a token): /v1/catalog/services is {}, without
		// even the "consul" service every server registers, and
		// /v1/acl/token/self answers 403 "ACL not found".
		{name: "no token"},
		{name: "unknown token", args: []string{"-consul-token-file", badTokenFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := startCountingProxy(t, ca.HTTPAddr())
			args := append([]string{"-listen", "127.0.0.1:0", "-consul", proxy.addr, "-log-level", "info",
				"-client-stats-interval", "1s", "-shutdown-timeout", "2s"}, tc.args...)
			p := startProcessEnv(t, withoutConsulEnv(), lbBin, args...)

			answer := firstAnswerKind(t, p.addr, svc)
			time.Sleep(2 * time.Second) // past the first retries
			logs0, reqs0 := strings.Count(p.logs(), "level=ERROR"), proxy.requests.Load()
			const window = 10 * time.Second
			time.Sleep(window)
			logs := p.logs()
			errLines, reqs := strings.Count(logs, "level=ERROR")-logs0, proxy.requests.Load()-reqs0
			status := healthStatus(t, p.addr)
			t.Logf("first answer for %s: %s; health %v; over %v: %d requests to Consul, %d ERROR lines", svc, answer, status, window, reqs, errLines)

			if answer != "fallback" && !strings.HasPrefix(answer, "error") {
				t.Errorf("first answer for %s = %s, want fallback (or no answer): the replica cannot read Consul", svc, answer)
			}
			if status != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("health = %v, want NOT_SERVING: the replica has never read Consul", status)
			}
			var errorLines []string
			for _, l := range strings.Split(logs, "\n") {
				if strings.Contains(l, "level=ERROR") {
					errorLines = append(errorLines, l)
				}
			}
			if len(errorLines) == 0 {
				t.Errorf("no ERROR line in the replica's log:\n%s", lastLines(logs, 20))
			} else if l := errorLines[0]; !regexp.MustCompile(`(?i)acl|token|permission`).MatchString(l) {
				t.Errorf("first ERROR line does not say it is about ACLs or the token: %s", l)
			} else {
				t.Logf("first ERROR line: %s", l)
			}
			if errLines > 2 {
				t.Errorf("%d ERROR lines in %v, want at most one a minute", errLines, window)
			}
			// A replica asking about once a second (its probe, or a read while
			// it has never read Consul) asks 10 to 20 times; a tight loop
			// asks thousands of times.
			if reqs > 30 {
				t.Errorf("%d requests to Consul in %v: retrying in a tight loop", reqs, window)
			}
		})
	}
}

// flakyResolver resolves names from a table until fail is set, then
// answers every lookup with "no such host", like a DNS name that was
// removed.
type flakyResolver struct {
	mu    sync.Mutex
	hosts map[string]netip.Addr // guarded by mu
	fail  bool                  // guarded by mu
	calls int                   // guarded by mu: lookups after fail was set
}

func (r *flakyResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		r.calls++
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	if a, ok := r.hosts[host]; ok {
		return []netip.Addr{a}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (r *flakyResolver) breakNow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = true
}

func (r *flakyResolver) failedLookups() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

// TestConsulFaultHostnameStopsResolving registers an instance under a
// hostname, lets the balancer resolve it, then makes every lookup fail and
// changes the service in Consul (the instance's metadata, and a second
// instance), so the balancer reads it again. Asserted: the client keeps
// calling the instance at its last good address, with no failed call, no
// empty list and no fallback, and the new instance joins.
func TestConsulFaultHostnameStopsResolving(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	ca := consultest.StartWith(t, consultest.Options{})
	var logs syncbuf.Buffer
	logger := bufLogger(&logs)
	named, other := servingBackend(t, svc), servingBackend(t, svc)
	const host = "user-srv-1.lookaside.test"
	res := &flakyResolver{hosts: map[string]netip.Addr{host: netip.MustParseAddr("127.0.0.1")}}
	registerOnNode(t, ca.Client(), svc, named, host, map[string]string{"v": "1"})

	srv, lbAddr := faultLB(t, faultSource(t, ca.Client(), logger, func(c *consul.Config) { c.Resolver = res }), logger)
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbAddr}})
	waitSeen(t, c, named)
	watcher := watchLists(t, lbAddr, svc)
	ld := startLoadFor(context.Background(), c, 5*time.Millisecond, time.Minute)
	defer ld.finish()

	res.breakNow()
	brokeAt := time.Now()
	registerOnNode(t, ca.Client(), svc, named, host, map[string]string{"v": "2"})
	registerOnNode(t, ca.Client(), svc, other, "", nil)
	waitFor(t, 20*time.Second, "the balancer to read the change and resolve again", func() bool {
		return res.failedLookups() > 0 && time.Since(ld.last(other.ID())) < 100*time.Millisecond
	})
	time.Sleep(5 * time.Second) // and longer than a re-resolve period, if short
	lastNamed := ld.last(named.ID())
	counts, _ := ld.finish()
	errs := ld.failed()
	fallbacks, empty, lists, streamErr := watcher.verdict()
	t.Logf("%d failed lookups; %d calls, %d failed, per backend %v; stream: %d lists, %d empty, %d fallbacks",
		res.failedLookups(), ld.calls.Load(), len(errs), counts, lists, empty, fallbacks)

	if len(errs) > 0 {
		t.Errorf("%d calls failed; first: %v", len(errs), errs[0])
	}
	if empty > 0 || fallbacks > 0 || streamErr != nil || srv.Stats().FallbacksSent > 0 {
		t.Errorf("clients got %d empty lists and %d fallbacks (balancer: %d); stream error: %v",
			empty, fallbacks, srv.Stats().FallbacksSent, streamErr)
	}
	if !lastNamed.After(brokeAt.Add(4 * time.Second)) {
		t.Errorf("calls stopped reaching the instance whose hostname stopped resolving (last at %v after the failure), want it kept at its last good address",
			lastNamed.Sub(brokeAt))
	}
	if got := watcher.latest(); !got[named.Addr()] || !got[other.Addr()] {
		t.Errorf("latest list %v, want both %s (last good address) and %s", got, named.Addr(), other.Addr())
	}
}

// TestConsulFaultResolverOutage is the consul:// resolver's side of the
// outage: a client resolving the service straight from Consul (lb=off)
// keeps calling while the server is killed for 20 s, and after its return
// a deregistration reaches the client within about a second.
func TestConsulFaultResolverOutage(t *testing.T) {
	t.Parallel()
	outage := min(faultOutage(t), 20*time.Second)
	svc := serviceName(t)
	ca := consultest.StartWith(t, consultest.Options{Persistent: true})
	backends := []*runningBackend{servingBackend(t, svc), servingBackend(t, svc)}
	for _, b := range backends {
		registerOnNode(t, ca.Client(), svc, b, "", nil)
	}
	_, c := dialConsul(t, fmt.Sprintf("consul://%s/%s?lb=off&wait=1m", ca.HTTPAddr(), svc))
	waitSeen(t, c, backends...)
	ld := startLoadFor(context.Background(), c, 5*time.Millisecond, outage+2*time.Minute)
	defer ld.finish()

	if err := ca.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(outage)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := ca.Restart(ctx); err != nil {
		t.Fatalf("restarting Consul: %v", err)
	}
	gone := backends[0]
	if err := deregisterNode(ca.Client(), gone); err != nil {
		t.Fatal(err)
	}
	deregAt := time.Now()
	waitFor(t, 45*time.Second, "calls to stop reaching the deregistered backend", func() bool {
		return time.Since(ld.last(gone.ID())) > time.Second
	})
	callsEnd := max(ld.last(gone.ID()).Sub(deregAt), 0)
	counts, _ := ld.finish()
	errs := ld.failed()
	t.Logf("outage %v: %d calls, %d failed, per backend %v; last call to the deregistered backend %v after the deregistration",
		outage, ld.calls.Load(), len(errs), counts, callsEnd)
	if len(errs) > 0 {
		t.Errorf("%d calls failed; first: %v", len(errs), errs[0])
	}
	if callsEnd > 3*time.Second {
		t.Errorf("calls reached the deregistered backend until %v after the deregistration, right after Consul's return; want within 3 s", callsEnd)
	}
}
