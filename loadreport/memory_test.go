package loadreport

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/lookaside-lb/lookaside/discovery"
)

// memServerEnv makes the test binary an ORCA server on that many loopback
// ports (see serveManyORCA), so that the collector's memory is measured in
// a process of its own.
const memServerEnv = "LOADREPORT_MEMORY_SERVER"

// serveManyORCA serves a Reporter on n loopback ports, prints one address
// a line on stdout, then serves until stdin closes. It runs in the child
// process of measureCollector and exits.
func serveManyORCA(n int) {
	rep, err := NewReporter(&fixedMetrics{m: Metrics{CPU: 0.5, QPS: 10}}, ReporterConfig{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := grpc.NewServer(grpc.ReadBufferSize(4096), grpc.WriteBufferSize(4096), grpc.SharedWriteBuffer(true))
	rep.Register(srv)
	out := bufio.NewWriter(os.Stdout)
	for range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go srv.Serve(lis)
		fmt.Fprintln(out, lis.Addr().String())
	}
	out.Flush()
	io.Copy(io.Discard, os.Stdin)
	rep.Close()
	srv.Stop()
	os.Exit(0)
}

// collectorCost is what a Collector costs per endpoint.
type collectorCost struct {
	heap       float64 // bytes of live heap after GC
	stack      float64 // bytes of goroutine stacks
	rss        float64 // bytes of resident memory (0 where unknown)
	goroutines float64
	conns      float64 // connections (file descriptors) per endpoint
}

// measureCollector starts n ORCA endpoints in a child process, has one
// Collector stream from all of them until each has reported, and returns
// the growth of heap, stacks, RSS, goroutines and open files divided by n.
func measureCollector(tb testing.TB, n int) collectorCost {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), memServerEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	snap := discovery.Snapshot{Service: "svc"}
	sc := bufio.NewScanner(stdout)
	for i := 0; i < n && sc.Scan(); i++ {
		snap.Endpoints = append(snap.Endpoints, discovery.Endpoint{
			ID: fmt.Sprintf("ep-%04d", i), Addr: netip.MustParseAddrPort(sc.Text()), Weight: 1,
		})
	}
	if len(snap.Endpoints) != n {
		tb.Fatalf("the ORCA server gave %d addresses, want %d", len(snap.Endpoints), n)
	}
	snap.Endpoints = discovery.SortEndpoints(snap.Endpoints)

	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.DiscardHandler)
	c, err := NewCollector(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	heap0, stack0, rss0, g0 := memNow()
	fd0 := openFiles()
	c.Update(snap)
	deadline := time.Now().Add(60 * time.Second)
	for {
		l := c.Loads()
		if len(l.Reports) == n {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d endpoints reported within 60 s", len(l.Reports), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Let a few reports flow so that buffers reach their steady size.
	time.Sleep(2 * cfg.Interval)
	heap1, stack1, rss1, g1 := memNow()
	fd1 := openFiles()
	if f := os.Getenv("LOADREPORT_GOROUTINES"); f != "" {
		w, _ := os.Create(f)
		pprof.Lookup("goroutine").WriteTo(w, 1)
		w.Close()
	}
	if f := os.Getenv("LOADREPORT_HEAP"); f != "" {
		w, _ := os.Create(f)
		runtime.MemProfileRate = 1
		pprof.Lookup("heap").WriteTo(w, 0)
		w.Close()
	}
	return collectorCost{
		heap:       float64(heap1-heap0) / float64(n),
		stack:      float64(stack1-stack0) / float64(n),
		rss:        float64(rss1-rss0) / float64(n),
		goroutines: float64(g1-g0) / float64(n),
		conns:      float64(fd1-fd0) / float64(n),
	}
}

// memNow returns the live heap after two GCs, the goroutine stacks, the
// resident set size
// (0 where /proc is missing) and the number of goroutines.
func memNow() (heap, stack, rss int64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				rss = kb << 10
			}
		}
	}
	return int64(ms.HeapAlloc), int64(ms.StackInuse), rss, runtime.NumGoroutine()
}

// openFiles counts the process's open file descriptors (sockets
// included); 0 where /proc is missing.
func openFiles() int {
	fds, _ := os.ReadDir("/proc/self/fd")
	return len(fds)
}

// BenchmarkCollectorMemory reports what load collection costs per
// endpoint at 1,000 endpoints (each its own ORCA server port, in a child
// process): live heap after GC, goroutine stacks, RSS, goroutines and
// connections.
//
//	go test -run '^$' -bench CollectorMemory -benchtime 1x ./loadreport
func BenchmarkCollectorMemory(b *testing.B) {
	const n = 1000
	var cost collectorCost
	for b.Loop() {
		cost = measureCollector(b, n)
	}
	b.ReportMetric(cost.heap/1024, "heap-KiB/endpoint")
	b.ReportMetric(cost.stack/1024, "stack-KiB/endpoint")
	b.ReportMetric(cost.rss/1024, "RSS-KiB/endpoint")
	b.ReportMetric(cost.goroutines, "goroutines/endpoint")
	b.ReportMetric(cost.conns, "conns/endpoint")
}
