package e2e

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"
)

// Bounds of BenchmarkClientMemory: how long opening the clients, their
// first lists and the change's propagation may take, and how many
// connections are opened at once.
const (
	clientsOpenLimit  = 3 * time.Minute
	clientsPropLimit  = 30 * time.Second
	clientsDialers    = 32
	clientsSettleTime = 2 * time.Second
	// clientsInstances is how many instances each service has; the
	// change deregisters the first.
	clientsInstances = 3
)

// clientsCase is one sub-benchmark of BenchmarkClientMemory.
type clientsCase struct {
	name     string
	streams  int  // streams in all
	services int  // services the streams spread over, evenly
	perConn  int  // streams per client connection
	waves    bool // every client reconnects once, and RSS is read again
	// transport is the lbserver's -transport ("" for its default, the
	// balancer's own).
	transport string
}

// BenchmarkClientMemory measures what clients cost the lbserver binary
// (built without the race detector, a process of its own, limits raised
// by flags to let the clients in). Each client is a grpc-go ClientConn
// with raw BalanceLoad streams (as every grpclb channel has a connection
// of its own to its balancer); each service has three instances
// registered in Consul (no backend runs: the balancer only lists them).
// Once every stream has its first list it reports the balancer's RSS per
// stream, (RSS with the streams − RSS with one stream per service) / N,
// and its goroutines, heap in use and goroutine stacks per stream (from
// its /metrics). Then it deregisters the first instance of every service
// at once and reports, over the streams, the p50 and p99 of the time until
// each stream's next list (the one without that instance), and the CPU
// time the balancer used until the last stream had it
// (balancer-cpu-ms/change: unlike the times, it hardly depends on what
// else the machine runs).
//
// Sub-benchmarks (their names and the metrics KiB-RSS/client,
// p50-change-ms and p99-change-ms are parsed by tools/bench):
//   - clients=1000, clients=10000: N clients, each on its own connection,
//     one service; also the RSS after every client reconnected
//     (KiB-RSS/client-reconnected), as -max-stream-age makes them do.
//   - services=100: 10,000 clients on their own connections over 100
//     services, one change in each service at once.
//   - clients=10000,per-conn=100: the same 10,000 streams multiplexed 100
//     per connection (the anchor: what a stream costs without its
//     connection).
//
// Run it with -benchtime 1x (make bench); it skips a size when the
// open-file limit cannot fit its connections. With
// LOOKASIDE_CLIENTS_PROFILES=<dir> it saves the balancer's heap and
// goroutine profiles there once every stream has its first list.
func BenchmarkClientMemory(b *testing.B) {
	lbBin, _ := buildCmdsWith(b)
	for _, c := range []clientsCase{
		{name: "clients=1000", streams: 1000, services: 1, perConn: 1, waves: true},
		{name: "clients=10000", streams: 10000, services: 1, perConn: 1, waves: true},
		{name: "services=100", streams: 10000, services: 100, perConn: 1},
		{name: "clients=10000,per-conn=100", streams: 10000, services: 1, perConn: 100},
		// The same clients on grpc-go's server instead of the balancer's
		// own transport, side by side.
		{name: "clients=10000,transport=grpc", streams: 10000, services: 1, perConn: 1, transport: "grpc"},
	} {
		b.Run(c.name, func(b *testing.B) {
			conns := c.streams / c.perConn
			if err := raiseNofile(uint64(conns) + 1000); err != nil {
				b.Skipf("%d connections: %v", conns, err)
			}
			benchClients(b, lbBin, c)
		})
	}
}

// raiseNofile raises this process's open-file limit to at least want, up
// to the hard limit; it fails if the hard limit is lower than want.
// lbserver, started later, inherits the limit.
func raiseNofile(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Max < want {
		return fmt.Errorf("open-file hard limit %d, need %d", lim.Max, want)
	}
	if lim.Cur < want {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raising the open-file limit to %d: %w", lim.Max, err)
		}
	}
	return nil
}

// benchStream is one stream of BenchmarkClientMemory.
type benchStream struct {
	svc    string
	first  chan struct{} // closed at the first list with backends
	change atomic.Int64  // UnixNano of the first list with one instance less; 0 until then
	err    atomic.Pointer[error]
}

// benchConn is one client connection of BenchmarkClientMemory with its
// streams.
type benchConn struct {
	cc      *grpc.ClientConn
	streams []*benchStream
}

// startBenchBalancer starts lbBin against the agent with its limits
// raised for streams streams (and a slack of 100), perConn of them per
// connection, no stream rate limit, WARN logs and an admin listener, whose
// address it returns; extra flags follow.
func startBenchBalancer(b *testing.B, lbBin string, streams, perConn int, extra ...string) (*process, string) {
	b.Helper()
	slack := strconv.Itoa(streams + 100)
	admin := freeLoopback(b)
	args := append([]string{"-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(),
		"-max-conns", slack, "-max-conns-per-ip", slack,
		"-max-streams", slack, "-max-streams-per-ip", slack,
		"-max-streams-per-conn", strconv.Itoa(perConn),
		"-max-stream-rate-per-ip", "0", "-log-level", "warn",
		"-admin-listen", admin, "-admin-pprof"}, extra...)
	return startProcess(b, lbBin, args...), admin
}

// measureBalancer reads, after clientsSettleTime, the RSS of the
// balancer process pid and its runtime figures from its admin listener.
func measureBalancer(b *testing.B, pid int, admin string) (int64, balancerStats) {
	b.Helper()
	time.Sleep(clientsSettleTime)
	rss, err := rssBytes(pid)
	if err != nil {
		b.Fatal(err)
	}
	st, err := readBalancerStats(admin)
	if err != nil {
		b.Fatal(err)
	}
	return rss, st
}

// balancerStats is what the balancer's /metrics says of its Go runtime.
type balancerStats struct {
	goroutines, heapInuse, stackInuse float64
}

// readBalancerStats reads go_goroutines, go_memstats_heap_inuse_bytes and
// go_memstats_stack_inuse_bytes from the admin listener at addr.
func readBalancerStats(addr string) (balancerStats, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return balancerStats{}, err
	}
	defer resp.Body.Close()
	var st balancerStats
	want := map[string]*float64{
		"go_goroutines":                 &st.goroutines,
		"go_memstats_heap_inuse_bytes":  &st.heapInuse,
		"go_memstats_stack_inuse_bytes": &st.stackInuse,
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if p := want[name]; ok && p != nil {
			if *p, err = strconv.ParseFloat(v, 64); err != nil {
				return balancerStats{}, fmt.Errorf("%s: %w", name, err)
			}
			delete(want, name)
		}
	}
	if len(want) > 0 {
		return balancerStats{}, fmt.Errorf("/metrics lacks %d of the Go runtime's metrics", len(want))
	}
	return st, sc.Err()
}

// saveProfiles saves the balancer's heap and goroutine profiles and its
// metrics (from its admin listener at addr) as prefix-heap.pb.gz,
// prefix-goroutine.txt and prefix-metrics.txt.
func saveProfiles(t testing.TB, addr, prefix string) {
	t.Helper()
	for _, p := range []struct{ path, file string }{
		{"/metrics", prefix + "-metrics.txt"}, // before the heap profile's GC
		{"/debug/pprof/heap?gc=1", prefix + "-heap.pb.gz"},
		{"/debug/pprof/goroutine?debug=1", prefix + "-goroutine.txt"},
	} {
		resp, err := http.Get("http://" + addr + p.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			err = os.WriteFile(p.file, body, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("profiles saved as %s-*", prefix)
}

// cpuTime returns the CPU time (user and system) process pid used so
// far, from /proc/pid/stat, in clock ticks of 10 ms.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command (in parentheses, which may hold
	// spaces): utime and stime are the 14th and 15th of the line.
	_, rest, ok := strings.Cut(string(raw), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, raw)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// saveURL saves what a GET of url answers in file; errors are ignored
// (the file is then missing or short).
func saveURL(url, file string) {
	resp, err := http.Get(url)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	os.WriteFile(file, body, 0o644)
}

// freeLoopback returns a loopback address with a port free now.
func freeLoopback(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runAll runs f(0) … f(n-1) on workers goroutines and returns the first
// error.
// openBefore opens connections 0 to n-1 with open, clientsDialers at
// once, and returns the first error, or one saying how many were left
// when deadline passed.
func openBefore(n int, deadline time.Time, open func(i int) error) error {
	return runAll(n, clientsDialers, func(i int) error {
		if time.Now().After(deadline) {
			return fmt.Errorf("connection %d of %d not opened before the deadline", i, n)
		}
		if err := open(i); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		return nil
	})
}

func runAll(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if p := first.Load(); p != nil {
		return *p
	}
	return nil
}

func benchClients(b *testing.B, lbBin string, c clientsCase) {
	// The services and their instances, registered with the agent
	// directly, each with a passing TTL check.
	base := serviceName(b)
	svcs := make([]string, c.services)
	for i := range svcs {
		svcs[i] = fmt.Sprintf("%s-%d", base, i)
	}
	instID := func(svc string, j int) string { return fmt.Sprintf("%s-i%d", svc, j) }
	consulAgent := agent.Client().Agent()
	if err := runAll(c.services*clientsInstances, 8, func(k int) error {
		svc, j := svcs[k/clientsInstances], k%clientsInstances
		return consulAgent.ServiceRegister(&api.AgentServiceRegistration{
			ID: instID(svc, j), Name: svc, Address: "127.0.0.1", Port: 20000 + k,
			Check: &api.AgentServiceCheck{CheckID: instID(svc, j) + "-ttl", TTL: "10m", Status: api.HealthPassing},
		})
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		runAll(c.services*clientsInstances, 8, func(k int) error {
			return consulAgent.ServiceDeregister(instID(svcs[k/clientsInstances], k%clientsInstances))
		})
	})
	// All passing, within one bound for all the services.
	passing := map[string]bool{}
	waitFor(b, time.Minute, fmt.Sprintf("%d passing instances of each of %d services", clientsInstances, len(svcs)), func() bool {
		for _, svc := range svcs {
			if passing[svc] {
				continue
			}
			entries, _, err := agent.Client().Health().Service(svc, "", true, nil)
			if err != nil || len(entries) != clientsInstances {
				return false
			}
			passing[svc] = true
		}
		return true
	})

	lbp, admin := startBenchBalancer(b, lbBin, c.streams+c.services, max(c.perConn, c.services),
		"-transport", cmp.Or(c.transport, "lookaside"))
	pid := lbp.cmd.Process.Pid

	ctx, cancel := deadlineFree(2*clientsOpenLimit + clientsPropLimit + time.Minute)
	var wg sync.WaitGroup
	var conns []*benchConn
	b.Cleanup(func() {
		cancel()
		for _, bc := range conns {
			if bc.cc != nil {
				bc.cc.Close()
			}
		}
		wg.Wait()
	})
	// open dials bc's connection and opens its streams.
	open := func(bc *benchConn) error {
		cc, err := grpc.NewClient(lbp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		bc.cc = cc
		for _, s := range bc.streams {
			stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
			if err != nil {
				return err
			}
			if err := stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
				InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: s.svc + ":50051"}}}); err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.recv(stream)
			}()
		}
		return nil
	}
	// waitFirsts waits until every stream of cs has its first list.
	waitFirsts := func(cs []*benchConn, deadline time.Time) error {
		for i, bc := range cs {
			for _, s := range bc.streams {
				select {
				case <-s.first:
				case <-time.After(time.Until(deadline)):
					return fmt.Errorf("connection %d of %d: no first list by the deadline", i, len(cs))
				}
				if p := s.err.Load(); p != nil {
					return fmt.Errorf("connection %d of %d: %w", i, len(cs), *p)
				}
			}
		}
		return nil
	}
	newStreams := func(n, first int) []*benchStream {
		ss := make([]*benchStream, n)
		for i := range ss {
			ss[i] = &benchStream{svc: svcs[(first+i)%len(svcs)], first: make(chan struct{})}
		}
		return ss
	}
	measure := func() (int64, balancerStats) { return measureBalancer(b, pid, admin) }

	// The baseline: one stream per service on one connection, so every
	// service is watched already.
	warm := &benchConn{streams: newStreams(len(svcs), 0)}
	conns = append(conns, warm)
	if err := open(warm); err != nil {
		b.Fatal(err)
	}
	if err := waitFirsts([]*benchConn{warm}, time.Now().Add(30*time.Second)); err != nil {
		b.Fatal(err)
	}
	rss0, st0 := measure()

	b.ResetTimer()
	// wave opens the connections with their streams, at most
	// clientsDialers at once, and waits until each stream has its first
	// list.
	wave := func() ([]*benchConn, time.Duration) {
		start := time.Now()
		deadline := start.Add(clientsOpenLimit)
		cs := make([]*benchConn, c.streams/c.perConn)
		for i := range cs {
			cs[i] = &benchConn{streams: newStreams(c.perConn, i*c.perConn)}
		}
		conns = append(conns, cs...)
		if err := openBefore(len(cs), deadline, func(i int) error { return open(cs[i]) }); err != nil {
			b.Fatal(err)
		}
		if err := waitFirsts(cs, deadline); err != nil {
			logs := lbp.logs()
			b.Fatalf("%v\nlbserver's log (last 2000 bytes):\n%s", err, logs[max(0, len(logs)-2000):])
		}
		return cs, time.Since(start)
	}
	cs, opened := wave()
	rssN, stN := measure()
	if dir := os.Getenv("LOOKASIDE_CLIENTS_PROFILES"); dir != "" {
		saveProfiles(b, admin, filepath.Join(dir, strings.NewReplacer("=", "", ",", "-").Replace(c.name)))
	}
	n := float64(c.streams)
	perStream := float64(rssN-rss0) / n
	b.ReportMetric(perStream/1024, "KiB-RSS/client")
	b.ReportMetric((stN.goroutines-st0.goroutines)/n, "goroutines/client")
	b.ReportMetric((stN.heapInuse-st0.heapInuse)/n/1024, "KiB-heap/client")
	b.ReportMetric((stN.stackInuse-st0.stackInuse)/n/1024, "KiB-stack/client")
	b.Logf("%s: RSS %.1f MiB → %.1f MiB, %.1f KiB per stream; goroutines %.0f → %.0f; heap in use %.1f → %.1f MiB; stacks %.1f → %.1f MiB; all first lists in %v",
		c.name, float64(rss0)/(1<<20), float64(rssN)/(1<<20), perStream/1024, st0.goroutines, stN.goroutines,
		st0.heapInuse/(1<<20), stN.heapInuse/(1<<20), st0.stackInuse/(1<<20), stN.stackInuse/(1<<20), opened.Round(time.Millisecond))
	if c.waves {
		// Every client reconnects (as -max-stream-age makes them do):
		// the balancer now reuses the memory the first connections
		// freed, which the Go runtime zeroes, so it is resident; the
		// steady state.
		for _, bc := range cs {
			bc.cc.Close()
		}
		time.Sleep(clientsSettleTime)
		cs, _ = wave()
		rssR, _ := measure()
		perStreamR := float64(rssR-rss0) / n
		b.ReportMetric(perStreamR/1024, "KiB-RSS/client-reconnected")
		b.Logf("%s: after every client reconnected: RSS %.1f MiB, %.1f KiB per stream", c.name, float64(rssR)/(1<<20), perStreamR/1024)
	}

	// Propagation: the first instance of every service leaves, at once;
	// every stream's next list.
	profiled := make(chan struct{})
	if dir := os.Getenv("LOOKASIDE_CLIENTS_PROFILES"); dir != "" {
		// The balancer's CPU profile over the change's first 3 s.
		file := filepath.Join(dir, strings.NewReplacer("=", "", ",", "-").Replace(c.name)) + "-cpu.pb.gz"
		go func() {
			defer close(profiled)
			saveURL("http://"+admin+"/debug/pprof/profile?seconds=3", file)
		}()
		time.Sleep(100 * time.Millisecond)
	} else {
		close(profiled)
	}
	cpu0, err := cpuTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	// The clients run in this process: what they spend on the change
	// shares the machine's cores with the balancer.
	clientsCPU0, err := cpuTime(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	changed := time.Now()
	if err := runAll(len(svcs), min(len(svcs), 32), func(i int) error {
		return consulAgent.ServiceDeregister(instID(svcs[i], 0))
	}); err != nil {
		b.Fatal(err)
	}
	waitFor(b, clientsPropLimit, "every stream's list without the deregistered instance", func() bool {
		for _, bc := range cs {
			for _, s := range bc.streams {
				if s.change.Load() == 0 {
					return false
				}
			}
		}
		return true
	})
	b.StopTimer()
	clientsCPU1, err := cpuTime(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	<-profiled
	cpu1, err := cpuTime(pid)
	if err != nil {
		b.Fatal(err)
	}
	clientsCPU := clientsCPU1 - clientsCPU0
	var lat []time.Duration
	for _, bc := range cs {
		for _, s := range bc.streams {
			lat = append(lat, time.Unix(0, s.change.Load()).Sub(changed))
		}
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.5).Microseconds())/1000, "p50-change-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-change-ms")
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/1000, "balancer-cpu-ms/change")
	b.ReportMetric(float64(clientsCPU.Microseconds())/1000, "clients-cpu-ms/change")
	// No schedule of the two processes on this machine's cores can give
	// the last stream its list sooner than their CPU time over the cores.
	floor := (cpu1 - cpu0 + clientsCPU) / time.Duration(runtime.NumCPU())
	b.Logf("%s: %d streams on %d connections over %d services; one instance of each service deregistered → next list min %v, p50 %v, p99 %v, max %v; CPU time meanwhile: the balancer %v, the clients (this process) %v, together over %d cores %v",
		c.name, c.streams, len(cs), c.services, lat[0].Round(time.Millisecond), pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond),
		(cpu1 - cpu0).Round(time.Millisecond), clientsCPU.Round(time.Millisecond), runtime.NumCPU(), floor.Round(time.Millisecond))
}

// recv reads stream until it ends: it closes s.first at the first list
// with backends and records when a list with one backend less (after
// the first instance left) arrives. An error before the first list is
// kept in s.err.
func (s *benchStream) recv(stream lbpb.LoadBalancer_BalanceLoadClient) {
	firstDone := false
	defer func() {
		if !firstDone {
			close(s.first)
		}
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			if !firstDone {
				s.err.Store(&err)
			}
			return
		}
		if resp.GetFallbackResponse() != nil && !firstDone {
			err := errors.New("fallback instead of a list")
			s.err.Store(&err)
			return
		}
		sl := resp.GetServerList()
		if sl == nil {
			continue
		}
		backends := map[string]bool{}
		for _, srv := range sl.GetServers() {
			if !srv.GetDrop() {
				backends[fmt.Sprintf("%x:%d", srv.GetIpAddress(), srv.GetPort())] = true
			}
		}
		switch {
		case len(backends) == 0:
		case !firstDone:
			firstDone = true
			close(s.first)
		case len(backends) == clientsInstances-1 && s.change.Load() == 0:
			s.change.Store(time.Now().UnixNano())
		}
	}
}

// deadlineFree returns a context cancelled after d, or by cancel, with no
// deadline: streams opened with it carry none (no grpc-timeout), as
// grpc-go's grpclb and xDS clients' streams do not, since a deadline
// costs the balancer a timer per stream.
func deadlineFree(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	limit := time.AfterFunc(d, cancel)
	return ctx, func() {
		limit.Stop()
		cancel()
	}
}
