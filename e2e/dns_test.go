package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/grpclb" // the only import a DNS client needs
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/consulreg"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/lbtoken"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// The DNS tests run the dnsserver responder on loopback and grpc-go
// clients that import only the grpclb package and dial
//
//	dns://127.0.0.1:<dnsport>/<svc>.lb.internal:<port>
//
// with no service config in code: the TXT record selects grpclb, the SRV
// records name the balancer replicas registered in Consul, and the A
// records are the fallback addresses, used with the target's port. So
// that fallback works, every backend of a test listens on the same port,
// each on its own loopback address (127.0.0.2, 127.0.0.3, ...).

const dnsZone = "lb.internal"

// dnsResponder is a DNS responder serving in this process, apart from the
// balancers, so that it keeps answering while they are down (as another
// replica, or CoreDNS with the same records, would).
type dnsResponder struct {
	addr string
	srv  *dnsserver.Server
}

// startDNS serves the zone with the passing instances of each service and,
// in SRV records, the passing instances of lbService.
func startDNS(t *testing.T, lbService string) *dnsResponder {
	t.Helper()
	return startDNSWith(t, lbService, nil, nil)
}

// startDNSWith is startDNS with the responder's config changed by tweak
// and the catalog's source wrapped by wrap (either may be nil).
func startDNSWith(t *testing.T, lbService string, tweak func(*dnsserver.Config), wrap func(discovery.Source) discovery.Source) *dnsResponder {
	t.Helper()
	newSource := func() *consul.Source {
		cfg := consul.DefaultConfig()
		cfg.Client = consul.API(agent.Client())
		cfg.Logger = quietLogger()
		src, err := consul.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	// The catalog is a balancer that serves no stream: what -dns-listen
	// uses in the command. Its source's directory is read while Run runs,
	// as lbserver.Serve runs it in the command.
	catalogSrc := newSource()
	lcfg := lbserver.DefaultConfig()
	lcfg.Source = catalogSrc
	if wrap != nil {
		lcfg.Source = wrap(lcfg.Source)
	}
	lcfg.Zones = []string{dnsZone}
	lcfg.Logger = quietLogger()
	catalog, err := lbserver.New(lcfg)
	if err != nil {
		t.Fatal(err)
	}
	replicas := dnsserver.NewReplicas(newSource(), lbService, quietLogger())
	cfg := dnsserver.DefaultConfig()
	cfg.Zone = dnsZone
	cfg.Catalog = catalog
	cfg.Balancers = replicas
	cfg.Names = lbserver.NameMapper{Zones: []string{dnsZone}, MaxLength: lbserver.DefaultMaxNameLength}
	cfg.Logger = quietLogger()
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := dnsserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, lis, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		catalogSrc.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, pc, lis); err != nil {
			t.Errorf("DNS responder: %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := replicas.Run(ctx); err != nil {
			t.Errorf("replicas: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		catalog.Close()
	})
	return &dnsResponder{addr: pc.LocalAddr().String(), srv: srv}
}

// dnsRegister registers the balancer l in Consul as an instance of
// lbService with a gRPC health check every second, as `lbserver -register`
// does; the registration is removed at cleanup. It survives l.stop and
// l.start (the check fails, then passes again).
func dnsRegister(t *testing.T, l *lb, lbService string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(l.addr)
	id := fmt.Sprintf("%s-%s-%s", lbService, host, port)
	in := consulreg.Instance{ID: id, Service: lbService, Addr: l.addr, CheckInterval: time.Second}
	if err := consulreg.Register(t.Context(), agent.Client(), in); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = consulreg.Deregister(context.Background(), agent.Client(), id) })
}

// startDNSLB starts a balancer that maps <svc>.lb.internal:<port> to
// <svc>, registered under lbService.
func startDNSLB(t *testing.T, lbService string, tweak func(*lbserver.Config)) *lb {
	t.Helper()
	l := startLB(t, func(c *lbserver.Config) {
		c.Zones = []string{dnsZone}
		if tweak != nil {
			tweak(c)
		}
	})
	dnsRegister(t, l, lbService)
	return l
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startBackendAt starts a backend of service listening on 127.0.0.<n>:port.
func startBackendAt(t *testing.T, service string, n, port int) *runningBackend {
	t.Helper()
	return startBackend(t, service, func(c *backend.Config) { c.Listen = fmt.Sprintf("127.0.0.%d:%d", n, port) })
}

// startSamePortBackends starts n backends of service on one port, each on
// its own loopback address, and waits until Consul reports them passing.
func startSamePortBackends(t *testing.T, service string, n int) ([]*runningBackend, int) {
	t.Helper()
	port := freePort(t)
	var bs []*runningBackend
	for i := range n {
		bs = append(bs, startBackendAt(t, service, 2+i, port))
	}
	waitPassing(t, service, n)
	return bs, port
}

// dnsClient dials <service>.lb.internal:<port> through the DNS responder
// at dnsAddr, with no service config and no option but insecure
// credentials.
func dnsClient(t *testing.T, dnsAddr, service string, port int) userpb.UserClient {
	t.Helper()
	target := fmt.Sprintf("dns://%s/%s.%s:%d", dnsAddr, service, dnsZone, port)
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return userpb.NewUserClient(cc)
}

// balancedCall reports whether r came through a balancer's list: it
// carries the lb-token of the backend that served it.
func balancedCall(r *userpb.UserListResponse) bool {
	return r.LbToken != "" && r.LbToken == lbtoken.ForID(r.BackendId)
}

// waitBalanced calls c until a call is balanced, and returns how long
// that took.
func waitBalanced(t *testing.T, c userpb.UserClient, timeout time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, timeout, what, func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		r, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
		return err == nil && balancedCall(r)
	})
	return time.Since(start)
}

// TestDNSClientNeedsNoConfig: a client that only imports grpclb and dials
// dns://127.0.0.1:<port>/<svc>.lb.internal:<port> is balanced by the
// balancer the SRV record names, with the policy the TXT record selects.
func TestDNSClientNeedsNoConfig(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	bs, port := startSamePortBackends(t, svc, 3)
	l := startDNSLB(t, lbSvc, nil)
	waitPassing(t, lbSvc, 1)
	d := startDNS(t, lbSvc)
	waitSRV(t, d.addr, svc, 1, "the balancer in SRV")

	start := time.Now()
	c := dnsClient(t, d.addr, svc, port)
	took := waitBalanced(t, c, 20*time.Second, "a balanced call")
	t.Logf("dial → first balanced call: %v", took)
	waitSeen(t, c, bs...)
	const n = 300
	got := map[string]int{}
	for i := range n {
		r, err := call(t.Context(), c)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if !balancedCall(r) {
			t.Fatalf("call %d to %s carried lb-token %q, want %q", i, r.BackendId, r.LbToken, lbtoken.ForID(r.BackendId))
		}
		got[r.BackendId]++
	}
	t.Logf("spread over %d calls: %v (%v after the dial)", n, got, time.Since(start))
	for _, b := range bs {
		if c := got[b.ID()]; c < n/3-10 || c > n/3+10 {
			t.Errorf("backend %s served %d of %d calls, want %d±10", b.ID(), c, n, n/3)
		}
	}
	if st := l.server().Stats(); st.StreamsActive != 1 || st.ListsSent < 1 {
		t.Errorf("balancer stats %+v: want 1 active stream and a list sent", st)
	}
	st := d.srv.Stats()
	t.Logf("DNS responder: %+v", st)
	if st.Answers < 3 || st.ServFail != 0 || st.Refused != 0 {
		t.Errorf("DNS stats %+v: want SRV, A and TXT answers, no SERVFAIL or REFUSED", st)
	}
}

// TestDNSReplicaKilledUnderLoad: with two replicas in the SRV records,
// clients spread over both; the replica holding streams goes away under
// steady load, no call fails, and its clients move to the other one; once
// it is back, the maximum stream age spreads them again.
func TestDNSReplicaKilledUnderLoad(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	_, port := startSamePortBackends(t, svc, 3)
	const age = 10 * time.Second // the shortest allowed
	withAge := func(c *lbserver.Config) { c.MaxStreamAge = age }
	lbs := []*lb{startDNSLB(t, lbSvc, withAge), startDNSLB(t, lbSvc, withAge)}
	waitPassing(t, lbSvc, 2)
	d := startDNS(t, lbSvc)
	waitSRV(t, d.addr, svc, 2, "both balancers in SRV")

	const clients = 6
	var loads []*load
	for i := range clients {
		c := dnsClient(t, d.addr, svc, port)
		waitBalanced(t, c, 20*time.Second, fmt.Sprintf("client %d balanced", i))
		loads = append(loads, startLoad(t.Context(), c, 10*time.Millisecond))
	}
	active := func(l *lb) int64 { return l.server().Stats().StreamsActive }
	waitFor(t, 10*time.Second, "every client's stream", func() bool { return active(lbs[0])+active(lbs[1]) == clients })
	t.Logf("streams per replica: %d and %d", active(lbs[0]), active(lbs[1]))
	victim, survivor := lbs[0], lbs[1]
	if active(lbs[1]) > active(lbs[0]) {
		victim, survivor = lbs[1], lbs[0]
	}
	moved := active(victim)
	time.Sleep(500 * time.Millisecond)

	start := time.Now()
	victim.stop()
	waitFor(t, 30*time.Second, "the victim's clients on the other replica", func() bool { return active(survivor) == clients })
	rehome := time.Since(start)
	t.Logf("replica stopped → its %d clients streaming from the other: %v", moved, rehome)
	time.Sleep(time.Second) // calls keep going on the survivor's lists

	victim.start()
	start = time.Now()
	waitPassing(t, lbSvc, 2)
	waitFor(t, 90*time.Second, "clients back on the returned replica", func() bool { return active(victim) >= 1 })
	t.Logf("replica back → first client back on it: %v (max stream age %v); streams %d and %d",
		time.Since(start), age, active(victim), active(survivor))

	var total int64
	for i, ld := range loads {
		counts, err := ld.finish()
		if err != nil {
			t.Errorf("client %d: calls failed: %v", i, err)
		}
		total += ld.calls.Load()
		if len(counts) != 3 {
			t.Errorf("client %d reached %d backends, want 3: %v", i, len(counts), counts)
		}
	}
	t.Logf("%d calls from %d clients, none failed", total, clients)
}

// TestDNSAllBalancersDown: with every balancer down, existing clients keep
// calling their backends with no failure, and the SRV records still name
// the balancers last known; a new client uses the fallback addresses (the
// A records) after grpc-go's fallback timeout; when one balancer comes
// back both clients take its lists again.
func TestDNSAllBalancersDown(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	bs, port := startSamePortBackends(t, svc, 3)
	lbs := []*lb{startDNSLB(t, lbSvc, nil), startDNSLB(t, lbSvc, nil)}
	waitPassing(t, lbSvc, 2)
	d := startDNS(t, lbSvc)
	waitSRV(t, d.addr, svc, 2, "both balancers in SRV")

	old := dnsClient(t, d.addr, svc, port)
	waitBalanced(t, old, 20*time.Second, "the existing client balanced")
	ld := startLoad(t.Context(), old, 10*time.Millisecond)

	lbs[0].stop()
	time.Sleep(2 * time.Second) // one after the other, as in an outage
	lbs[1].stop()
	waitPassing(t, lbSvc, 0)
	time.Sleep(2 * time.Second) // for the responder's watch to see it too
	waitSRV(t, d.addr, svc, 2, "SRV with no balancer passing to name the two last known")

	// A new client: its balancers do not answer, so after the fallback
	// timeout it calls the A records' addresses, without a token.
	fresh := dnsClient(t, d.addr, svc, port)
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	r, err := fresh.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
	cancel()
	fallbackDelay := time.Since(start)
	if err != nil {
		t.Fatalf("new client's first call with every balancer down: %v", err)
	}
	t.Logf("every balancer down: new client's first call served by fallback after %v", fallbackDelay)
	if r.LbToken != "" || !slices.ContainsFunc(bs, func(b *runningBackend) bool { return b.ID() == r.BackendId }) {
		t.Errorf("first call served by %s with token %q; want a fallback backend and no token", r.BackendId, r.LbToken)
	}
	if fallbackDelay < 8*time.Second || fallbackDelay > 20*time.Second {
		t.Errorf("fallback after %v, want about grpc-go's 10 s fallback timeout", fallbackDelay)
	}
	got := spread(t, fresh, 30)
	t.Logf("new client in fallback, 30 calls: %v", got)
	if len(got) != 3 {
		t.Errorf("fallback calls reached %d backends, want all 3: %v", len(got), got)
	}
	freshLoad := startLoad(t.Context(), fresh, 10*time.Millisecond)

	// One balancer comes back at its address. A backend added now is only
	// known through it: calls reaching it show that a client left
	// fallback (the new client's fallback addresses are the A records it
	// resolved before).
	lbs[1].start()
	start = time.Now()
	waitPassing(t, lbSvc, 1)
	nb := startBackendAt(t, svc, 9, port)
	waitFor(t, 90*time.Second, "both clients calling the backend added after the balancer returned", func() bool {
		return !freshLoad.last(nb.ID()).IsZero() && !ld.last(nb.ID()).IsZero()
	})
	t.Logf("balancer back → both clients on its lists: %v (new client first called the new backend after %v, existing client after %v)",
		time.Since(start), freshLoad.last(nb.ID()).Sub(start), ld.last(nb.ID()).Sub(start))
	if got := lbs[1].server().Stats().StreamsActive; got != 2 {
		t.Errorf("%d streams on the returned balancer, want 2", got)
	}
	freshCounts, err := freshLoad.finish()
	if err != nil {
		t.Errorf("the new client's calls failed: %v", err)
	}
	counts, err := ld.finish()
	if err != nil {
		t.Fatalf("the existing client's calls failed while no balancer answered: %v", err)
	}
	t.Logf("existing client: %d calls, none failed: %v", ld.calls.Load(), counts)
	t.Logf("new client: %d calls, none failed: %v", freshLoad.calls.Load(), freshCounts)

	// grpc-go reuses the connections it opened in fallback when the list
	// names the same backends, and those carry no lb-token.
	tokens := map[string]string{}
	for range 40 {
		if r, err := call(t.Context(), fresh); err == nil {
			tokens[r.BackendId] = r.LbToken
		}
	}
	t.Logf("new client after leaving fallback, lb-token per backend: %v", tokens)
}

// dnsSRV returns the SRV records of service at the DNS server addr, as
// "target:port", or nil if the question failed.
func dnsSRV(addr, service string) []string {
	m := new(dns.Msg)
	m.SetQuestion(fmt.Sprintf("_grpclb._tcp.%s.%s.", service, dnsZone), dns.TypeSRV)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
	if err != nil {
		return nil
	}
	var out []string
	for _, rr := range r.Answer {
		if srv, ok := rr.(*dns.SRV); ok {
			out = append(out, fmt.Sprintf("%s:%d", srv.Target, srv.Port))
		}
	}
	return out
}

// waitSRV waits until the DNS server at addr names n balancers for
// service. Clients that resolve before the responder knows a balancer go
// to fallback and stay there, so tests wait for it before they dial.
func waitSRV(t *testing.T, addr, service string, n int, what string) {
	t.Helper()
	waitFor(t, 20*time.Second, what, func() bool { return len(dnsSRV(addr, service)) == n })
}

// TestDNSServiceWithoutInstances: a service that is unknown, or whose
// instances are all failing, has SRV and TXT records but no A record. The
// balancer answers with a FallbackResponse, the client has no fallback
// address and its calls fail; once an instance passes, the balancer's list
// reaches the client with no new DNS lookup.
func TestDNSServiceWithoutInstances(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	l := startDNSLB(t, lbSvc, nil)
	waitPassing(t, lbSvc, 1)
	d := startDNS(t, lbSvc)
	waitSRV(t, d.addr, svc, 1, "the balancer in SRV")

	// One after the other, so that each FallbackResponse is counted.
	t.Run("unknown", func(t *testing.T) {
		name := svc + "-unknown"
		port := freePort(t)
		c := dnsClient(t, d.addr, name, port)
		before := l.server().Stats().FallbacksSent
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		_, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
		cancel()
		if err == nil {
			t.Fatal("a call to a service with no instance succeeded")
		}
		t.Logf("call with no instance anywhere: %v", err)
		if got := l.server().Stats().FallbacksSent; got <= before {
			t.Errorf("FallbacksSent %d, want more than %d", got, before)
		}
		start := time.Now()
		startBackendAt(t, name, 2, port)
		took := waitBalanced(t, c, 30*time.Second, "calls once an instance exists")
		t.Logf("instance registered → first balanced call: %v (%v after registration began)", took, time.Since(start))
	})
	t.Run("failing", func(t *testing.T) {
		name := svc + "-failing"
		port := freePort(t)
		b := startBackendAt(t, name, 2, port)
		b.SetServing(false)
		waitFor(t, 20*time.Second, "the instance to fail its check", func() bool {
			entries, _, err := agent.Client().Health().Service(name, "", false, nil)
			return err == nil && len(entries) == 1 && entries[0].Checks.AggregatedStatus() == "critical"
		})
		c := dnsClient(t, d.addr, name, port)
		before := l.server().Stats().FallbacksSent
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		r, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
		cancel()
		if err == nil {
			t.Fatalf("a call with no passing instance succeeded: %v", r)
		}
		if got := l.server().Stats().FallbacksSent; got <= before {
			t.Errorf("FallbacksSent %d, want more than %d", got, before)
		}
		b.SetServing(true)
		took := waitBalanced(t, c, 30*time.Second, "calls once the instance passes")
		t.Logf("instance passing again → first balanced call: %v", took)
	})
}

// TestDNSBinaries runs the real command: one lbserver answers DNS
// (-dns-listen, not itself registered), two register themselves as the
// replicas (-register). A client that resolved while only the first
// replica ran is on it; that replica is killed (SIGKILL) under steady load,
// no call fails, and the client re-resolves and moves to the second.
func TestDNSBinaries(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	lbBin, _ := buildCmds(t)
	_, port := startSamePortBackends(t, svc, 3)

	pc, lis, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr := pc.LocalAddr().String()
	pc.Close()
	lis.Close()
	startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(), "-log-level", "warn",
		"-dns-listen", dnsAddr, "-dns-zone", dnsZone, "-dns-lb-service", lbSvc, "-dns-ttl", "1s")
	replica := func() *process {
		p := startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(), "-log-level", "warn",
			"-zone", dnsZone, "-register", "-register-service", lbSvc, "-check-interval", "1s", "-drain-delay", "200ms")
		host, port, _ := net.SplitHostPort(p.addr)
		id := fmt.Sprintf("%s-%s-%s", lbSvc, host, port) // the command's default -register-id
		t.Cleanup(func() { _ = consulreg.Deregister(context.Background(), agent.Client(), id) })
		return p
	}
	first := replica()
	waitPassing(t, lbSvc, 1)
	waitSRV(t, dnsAddr, svc, 1, "the first replica in the command's SRV records")

	c := dnsClient(t, dnsAddr, svc, port)
	took := waitBalanced(t, c, 20*time.Second, "a balanced call through the commands")
	t.Logf("dial → first balanced call: %v", took)
	resolved := time.Now()
	ld := startLoad(t.Context(), c, 10*time.Millisecond)
	replica()
	waitPassing(t, lbSvc, 2)

	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-first.exited
	killed := time.Now()
	// A backend added now is only known through a live balancer.
	nb := startBackendAt(t, svc, 9, port)
	waitFor(t, 90*time.Second, "calls to the backend added after the kill", func() bool { return !ld.last(nb.ID()).IsZero() })
	t.Logf("SIGKILL of the client's balancer → first call to a backend added after it: %v (the client had resolved %v before the kill; grpc-go re-resolves at most every 30 s)",
		ld.last(nb.ID()).Sub(killed), killed.Sub(resolved))
	counts, err := ld.finish()
	if err != nil {
		t.Fatalf("calls failed across the kill: %v", err)
	}
	t.Logf("%d calls, none failed: %v", ld.calls.Load(), counts)
}

// TestDNSConsulPreparedQueries: without the responder, Consul's own DNS
// can give grpclb clients the SRV and A records, through two prepared
// query templates (docs/dns.md): one for _grpclb._tcp.<svc>, answered
// with the balancer replicas, one for <svc>, answered with its instances.
// Consul serves no TXT record, so the client selects grpclb in code.
func TestDNSConsulPreparedQueries(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	bs, port := startSamePortBackends(t, svc, 2)
	l := startLB(t, func(c *lbserver.Config) { c.Zones = []string{"query.consul"} })
	dnsRegister(t, l, lbSvc)
	waitPassing(t, lbSvc, 1)

	// Templates matching this test's names only; docs/dns.md shows the
	// catch-all form.
	q := agent.Client().PreparedQuery()
	for _, def := range []*api.PreparedQueryDefinition{
		{Name: "_grpclb._tcp." + svc, Template: api.QueryTemplate{Type: "name_prefix_match"},
			Service: api.ServiceQuery{Service: lbSvc, OnlyPassing: true}},
		{Name: svc, Template: api.QueryTemplate{Type: "name_prefix_match"},
			Service: api.ServiceQuery{Service: svc, OnlyPassing: true}},
	} {
		id, _, err := q.Create(def, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Delete(id, nil) })
	}

	target := fmt.Sprintf("dns://%s/%s.query.consul:%d", agent.DNSAddr(), svc, port)
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"grpclb":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	c := userpb.NewUserClient(cc)
	took := waitBalanced(t, c, 20*time.Second, "a balanced call through Consul's DNS")
	t.Logf("dial through Consul DNS → first balanced call: %v", took)
	waitSeen(t, c, bs...)
	if st := l.server().Stats(); st.StreamsActive != 1 || st.FallbacksSent != 0 {
		t.Errorf("balancer stats %+v: want 1 stream, no fallback", st)
	}
}

// TestDNSAmplificationBinary measures, against the lbserver command, how
// many bytes the largest UDP answer holds per byte of question, for the
// questions an attacker would pick (EDNS0 buffer 4096, ANY, the A records
// of a service with 100 backends, SRV with 3 balancers). Before the size
// bounds the worst was ×27.9 (ANY and A of that service).
func TestDNSAmplificationBinary(t *testing.T) {
	t.Parallel()
	lbBin, _ := buildCmds(t)
	pc, lis, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr := pc.LocalAddr().String()
	pc.Close()
	lis.Close()
	var eps []string
	for i := range 100 {
		eps = append(eps, fmt.Sprintf("127.1.%d.%d:50051", i/250, i%250+1))
	}
	startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-static", "big="+strings.Join(eps, ","), "-log-level", "error",
		"-dns-listen", dnsAddr, "-dns-balancers", "127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000")
	waitSRV(t, dnsAddr, "big", 3, "the command's SRV records")

	worst, which := 0.0, ""
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"big", dns.TypeANY}, {"big", dns.TypeA}, {"_grpclb._tcp.big", dns.TypeSRV}, {"_grpc_config.big", dns.TypeTXT}, {"nothing.x", dns.TypeANY}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name+"."+dnsZone+".", q.qtype)
		m.SetEdns0(4096, false)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("udp", dnsAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 65536)
		n, err := c.Read(buf)
		c.Close()
		if err != nil {
			t.Fatalf("%s %s: %v", q.name, dns.TypeToString[q.qtype], err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		if q.qtype == dns.TypeANY && len(r.Answer) > 1 {
			t.Errorf("ANY %s: %d records, want at most RFC 8482's one", q.name, len(r.Answer))
		}
		ratio := float64(n) / float64(len(b))
		t.Logf("%s %s: %d bytes for a %d-byte question (×%.1f), TC %v", q.name, dns.TypeToString[q.qtype], n, len(b), ratio, r.Truncated)
		if ratio > worst {
			worst, which = ratio, q.name+" "+dns.TypeToString[q.qtype]
		}
	}
	t.Logf("amplification: at most ×%.1f (%s)", worst, which)
	if worst > 10 {
		t.Errorf("an answer ×%.1f its question (%s), over the bound of 10", worst, which)
	}
}
