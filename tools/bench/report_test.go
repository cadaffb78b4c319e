package main

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fixedResults is a result set with every figure, whose least_load meets
// the slow-backend goals in the sleep scenario and misses them in the
// CPU-bound one; tweak changes it before use.
func fixedResults(tweak func(*Results)) Results {
	run := func(cfg string, rate, p99, share float64) Run {
		return Run{Config: cfg, Calls: int(rate * 10), Seconds: 10, Rate: rate, P50Ms: 6, P90Ms: 8, P99Ms: p99, MeanMs: 6.5,
			SlowShare: share, CDFMs: []float64{5, 6, 8, p99}, CDFShare: []float64{0.1, 0.5, 0.9, 1}}
	}
	res := Results{
		Generated: time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC),
		Command:   "go run ./tools/bench -out docs",
		Machine:   Machine{CPU: "Test CPU", Cores: 2, MemoryGiB: 4, Go: "go1.26.0", Kernel: "Linux 6.1", OSArch: "linux/amd64"},
		Timing:    Timing{ReportInterval: 100 * time.Millisecond, Blackout: time.Second, WeightUpdate: time.Second, LoadWindow: time.Second, Workers: 8, Warmup: 5 * time.Second, Window: 10 * time.Second},
		Scenarios: []Scenario{
			{Key: "sleep", Title: "Slow backend (sleep)", Backends: "4 × `-latency 5ms`", Runs: []Run{
				run(cfgRR, 800, 23, 0.2), run(cfgLL, 1200, 12, 0.01), run(cfgXDSRR, 780, 24, 0.2), run(cfgXDSLL, 1100, 15, 0.03),
				run(cfgA58, 1000, 22, 0.06), run(cfgOracle, 1250, 10, 0),
			}},
			{Key: "cpu", Title: "Slow backend (CPU-bound)", Backends: "…", Runs: []Run{
				run(cfgRR, 400, 120, 0.2), run(cfgLL, 1000, 30, 0.05), run(cfgA58, 900, 60, 0.03), run(cfgOracle, 1200, 12, 0),
			}},
			{Key: "datapath", Title: "Data path (equal backends)", Backends: "5 × `-latency 5ms`", Runs: []Run{
				run(cfgDirect, 1200, 10, -1), run(cfgRR, 1188, 10, -1), run(cfgLL, 1100, 11, -1),
			}},
		},
		Clients: []BenchLine{
			{Name: "clients=1000", Metrics: map[string]float64{unitKiB: 12.5, unitP50: 20, unitP99: 40}},
			{Name: subClients10k, Metrics: map[string]float64{unitKiB: 17.25, unitP50: 90, unitP99: 200, unitCPU: 650, unitClientsCPU: 550}},
			{Name: subServices, Metrics: map[string]float64{unitKiB: 15, unitP50: 300, unitP99: 600}},
			{Name: subMultiplexed, Metrics: map[string]float64{unitKiB: 8, unitP50: 50, unitP99: 100}},
		},
		Propagation: []Propagation{{Clients: 1, P50Ms: 5, P99Ms: 11, MaxMs: 12}, {Clients: 1000, Err: "opening 1000 streams: refused\nmore"}},
		Collector:   []BenchLine{{Name: "", Metrics: map[string]float64{unitEndpoint: 19.5, "goroutines/endpoint": 1}}},
		XDSClients: []BenchLine{
			{Name: "streams=1000", Metrics: map[string]float64{unitKiBStream: 20, unitP50: 30, unitP99: 60}},
			{Name: subXDSStreams10k, Metrics: map[string]float64{unitKiBStream: 25.875, "goroutines/stream": 2, unitP50: 150, unitP99: 300, unitCPU: 1300}},
			{Name: "streams=10000,lrs", Metrics: map[string]float64{unitKiBStream: 40, unitP99: 320}},
		},
	}
	if tweak != nil {
		tweak(&res)
	}
	return res
}

func TestHeadlineFromData(t *testing.T) {
	got := headline(fixedResults(nil))
	want := []goalRow{
		{"Slow backend (sleep): least_load p99 / oracle p99", "1.20× (12.0 ms / 10.0 ms)", "≤ 1.5×", "met"},
		{"Slow backend (sleep): least_load calls/s / oracle calls/s", "0.96 (1200 / 1250)", "≥ 0.95", "met"},
		{"Slow backend (CPU-bound): least_load p99 / oracle p99", "2.50× (30.0 ms / 12.0 ms)", "≤ 1.5×", "**not met**"},
		{"Slow backend (CPU-bound): least_load calls/s / oracle calls/s", "0.83 (1000 / 1200)", "≥ 0.95", "**not met**"},
		{"data path: Lookaside round_robin calls/s / direct round_robin", "0.990 (1188 / 1200)", "≥ 0.95", "met"},
		{"data path: Lookaside least_load calls/s / direct round_robin", "0.917 (1100 / 1200)", "≥ 0.95", "**not met**"},
		{"equal backends: least_load calls/s / round_robin calls/s", "0.926 (1100 / 1188)", "≥ 0.97 (within 3 %)", "**not met**"},
		{"LB memory per client on its own connection (10,000 clients)", "17.2 KiB", "≤ 16 KiB", "**not met**"},
		{"one change reaching 10,000 clients: p99", "200 ms", "≤ 250 ms", "met"},
		{"one change in each of 100 services (10,000 clients): p99", "600 ms", "≤ 500 ms", "**not met**"},
		{"load collection per endpoint (1,000 endpoints): RSS", "19.5 KiB", "≤ 20 KiB", "met"},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(goalRow{})); diff != "" {
		t.Errorf("headline (-want +got):\n%s", diff)
	}
}

// TestHeadlineFollowsTheData: the same figure flips its verdict when the
// data does, and a figure that was not measured says why.
func TestHeadlineFollowsTheData(t *testing.T) {
	res := fixedResults(func(r *Results) {
		r.Scenarios[0].Runs[1].P99Ms = 16 // sleep least_load: 1.6× the oracle
		r.Scenarios[1] = Scenario{Key: "cpu", Title: "Slow backend (CPU-bound)", Skipped: "cmd/backend has no -call-cpu flag in this checkout"}
		r.Clients = nil
		r.Quick = true
	})
	rows := headline(res)
	find := func(figure string) goalRow {
		t.Helper()
		for _, r := range rows {
			if r.figure == figure {
				return r
			}
		}
		t.Fatalf("no row %q in %v", figure, rows)
		return goalRow{}
	}
	if r := find("Slow backend (sleep): least_load p99 / oracle p99"); r.verdict != "**not met**" || r.measured != "1.60× (16.0 ms / 10.0 ms)" {
		t.Errorf("sleep p99 row: %+v", r)
	}
	if r := find("Slow backend (CPU-bound): least_load p99 / oracle p99"); r.measured != "not measured" || !strings.Contains(r.verdict, "-call-cpu") {
		t.Errorf("skipped CPU row: %+v", r)
	}
	if r := find("one change reaching 10,000 clients: p99"); r.measured != "not measured" || r.verdict != "not run by -quick" {
		t.Errorf("clients row of a quick run: %+v", r)
	}
	res.Quick = false
	res.ClientsErr = "skipped (-skip-go-bench)"
	res.Collector, res.CollectorErr = nil, "go test -bench CollectorMemory ./loadreport: exit status 1\nFAIL"
	rows = headline(res)
	if r := find("LB memory per client on its own connection (10,000 clients)"); r.verdict != "skipped (-skip-go-bench)" {
		t.Errorf("clients row of a run without go benchmarks: %+v", r)
	}
	if r := find("load collection per endpoint (1,000 endpoints): RSS"); r.verdict != "go test -bench CollectorMemory ./loadreport: exit status 1" {
		t.Errorf("collector row of a failed benchmark: %+v", r)
	}
}

func TestRenderMarkdown(t *testing.T) {
	res := fixedResults(func(r *Results) { r.Quick = true; r.Note = "Busy machine." })
	md := renderMarkdown(res, map[string]string{"latency-sleep": "bench/latency-sleep.png", "memory": "bench/memory.png"})
	for _, want := range []string{
		"Generated by `go run ./tools/bench -out docs` on 2026-12-02 17:00 UTC (`make bench` runs `go run ./tools/bench -out docs`)",
		"> Busy machine.",
		"**Quick run (`-quick`)",
		"Machine: Test CPU, 2 cores, 4.0 GiB memory; go1.26.0; Linux 6.1 (linux/amd64)",
		"| Slow backend (sleep): least_load p99 / oracle p99 | 1.20× (12.0 ms / 10.0 ms) | ≤ 1.5× | met |",
		"| Slow backend (CPU-bound): least_load calls/s / oracle calls/s | 0.83 (1000 / 1200) | ≥ 0.95 | **not met** |",
		// Per-scenario table: ratios to the oracle computed from the runs.
		"| Lookaside round_robin | 800 | 6.00 | 8.00 | 23.00 | 20.0 % | 0.640 | 2.30× | 0 |",
		"| Lookaside least_load | 1200 | 6.00 | 8.00 | 12.00 | 1.0 % | 0.960 | 1.20× | 0 |",
		"least_load against grpc-go's weighted_round_robin: p99 0.55×, calls/s 1.200.",
		"| Lookaside round_robin | 1188 | 6.00 | 8.00 | 10.00 | – | 0.990 | 1.00× | 0 |",
		"| report interval | 100ms | `-load-report-interval` | `oobReportingPeriod` |",
		"![latency CDF, Slow backend (sleep)](bench/latency-sleep.png)",
		"![memory](bench/memory.png)",
		"| `clients=10000,per-conn=100` | 8 | 50 | 100 |",
		"| RSS-KiB/endpoint | 19.5 | 0 |",
		"| 1 | 5.0 | 11.0 | 12.0 |",
		// The floor of the propagation goals: both processes' CPU over
		// the cores; services=100 lacks the CPU figures and has no row.
		"the same 2 cores as the balancer",
		"| `clients=10000` | 650 ms | 550 ms | 600 ms | 200 ms |",
		"| 1000 | not measured: opening 1000 streams: refused | | |",
		// xDS: the configuration table, the scenario's comparison line,
		// the xDS section's rows and the memory table against grpclb.
		"| Lookaside round_robin, xDS client | grpc-go's xDS client",
		"xDS clients against grpclb clients of the same lbserver: round_robin p99 1.04×, calls/s 0.975; least_load p99 1.25×, calls/s 0.917.",
		"## xDS clients",
		"| Slow backend (sleep) | Lookaside least_load, xDS client | 1100 | 6.00 | 15.00 | 3.0 % | 0.880 | 1.50× | 1.25×, 0.917 |",
		"| Slow backend (CPU-bound) | Lookaside round_robin, xDS client | not measured: not run by -quick | | | | | | |",
		"| per stream | grpclb `clients=1000` | grpclb `clients=10000` | xDS `streams=1000` | xDS `streams=10000` | xDS `streams=10000,lrs` |",
		"| balancer RSS per stream, KiB | 12.5 | 17.25 | 20 | 25.875 | 40 |",
		"| one change: p99 ms until each stream has it | 40 | 200 | 60 | 300 | 320 |",
		"At 10,000: an xDS stream costs the balancer 25.9 KiB of RSS, 1.50× a grpclb client's 17.2 KiB; one change reaches every xDS stream in p99 300 ms, 1.50× the grpclb clients' 200 ms, and takes the balancer 1300 ms of CPU time, 2.00× the grpclb clients' 650 ms",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, "latency-cpu.png") {
		t.Error("markdown links a plot that was not written")
	}
}

func TestWriteReport(t *testing.T) {
	dir := t.TempDir()
	if err := writeReport(dir, fixedResults(nil)); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"latency-sleep", "latency-cpu", "latency-datapath", "memory", "propagation", "propagation-xds"} {
		path := filepath.Join(dir, "bench", name+".png")
		f, err := os.Open(path)
		if err != nil {
			t.Errorf("plot %s: %v", name, err)
			continue
		}
		if _, err := png.DecodeConfig(f); err != nil {
			t.Errorf("plot %s does not decode: %v", name, err)
		}
		f.Close()
		if !strings.Contains(string(md), "bench/"+name+".png") {
			t.Errorf("BENCHMARKS.md does not show %s", name)
		}
	}
	// -render reads results.json back into the same report.
	out2 := t.TempDir()
	if err := run(t.Context(), options{out: out2, render: filepath.Join(dir, "bench", "results.json")}, nil); err != nil {
		t.Fatal(err)
	}
	md2, err := os.ReadFile(filepath.Join(out2, "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(md), string(md2)); diff != "" {
		t.Errorf("report rendered from results.json differs (-measured +rendered):\n%s", diff)
	}
}

func TestParseBench(t *testing.T) {
	out := `goos: linux
BenchmarkClientMemory/clients=1000-2         	       1	5123456789 ns/op	        12.50 KiB-RSS/client	        40.00 p50-change-ms	        80.00 p99-change-ms
    clients_bench_test.go:242: BenchmarkClientMemory/clients=1000 log line
BenchmarkClientMemory/clients=10000,per-conn=100-2 	       1	9 ns/op	 8.1 KiB-RSS/client
BenchmarkCollectorMemory-2   	       1	  77 ns/op	 19.5 RSS-KiB/endpoint	 1.000 goroutines/endpoint
PASS
`
	got := parseBench(out, "BenchmarkClientMemory")
	want := []BenchLine{
		{Name: "clients=1000", Metrics: map[string]float64{"ns/op": 5123456789, unitKiB: 12.5, unitP50: 40, unitP99: 80}},
		{Name: "clients=10000,per-conn=100", Metrics: map[string]float64{"ns/op": 9, unitKiB: 8.1}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ClientMemory lines (-want +got):\n%s", diff)
	}
	got = parseBench(out, "BenchmarkCollectorMemory")
	want = []BenchLine{{Name: "", Metrics: map[string]float64{"ns/op": 77, unitEndpoint: 19.5, "goroutines/endpoint": 1}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CollectorMemory lines (-want +got):\n%s", diff)
	}
}

func TestClientsOf(t *testing.T) {
	for _, tt := range []struct {
		name string
		n    int
		kind string
	}{
		{"clients=1000", 1000, "own connection"},
		{"services=100", 10000, "100 services"},
		{"clients=10000,per-conn=100", 10000, "multiplexed 100 per connection"},
		{"other", 0, "own connection"},
	} {
		n, kind := clientsOf(tt.name)
		if n != tt.n || kind != tt.kind {
			t.Errorf("clientsOf(%q) = %d, %q; want %d, %q", tt.name, n, kind, tt.n, tt.kind)
		}
	}
}

func TestXDSKind(t *testing.T) {
	for _, tt := range []struct {
		name string
		n    int
		kind string
	}{
		{"streams=100", 100, "xDS: ADS stream, own connection"},
		{"streams=10000,lrs", 10000, "xDS: ADS + LRS streams, own connection"},
		{"other", 0, "xDS: ADS stream, own connection"},
	} {
		n, kind := xdsKind(tt.name)
		if n != tt.n || kind != tt.kind {
			t.Errorf("xdsKind(%q) = %d, %q; want %d, %q", tt.name, n, kind, tt.n, tt.kind)
		}
	}
}

// TestRenderOldResults: results.json of a run before the xDS figures
// still renders, saying they were not measured.
func TestRenderOldResults(t *testing.T) {
	res := fixedResults(func(r *Results) {
		r.XDSClients = nil
		r.Scenarios[0].Runs = slices.DeleteFunc(r.Scenarios[0].Runs, func(x Run) bool { return x.Config == cfgXDSRR || x.Config == cfgXDSLL })
	})
	md := renderMarkdown(res, nil)
	for _, want := range []string{
		"| Slow backend (sleep) | Lookaside least_load, xDS client | not measured: not run | | | | | | |",
		"| per stream | grpclb `clients=1000` | grpclb `clients=10000` |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, "xDS clients against grpclb clients") || strings.Contains(md, "At 10,000: an xDS stream") {
		t.Error("markdown compares xDS figures that were not measured")
	}
}
