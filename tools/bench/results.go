package main

import (
	"bufio"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Results is everything one bench run measured; the report (markdown and
// plots) is rendered from it alone, and it is saved next to the plots as
// JSON.
type Results struct {
	Generated time.Time
	// Command reproduces the run.
	Command string
	// Quick is set by -quick: short windows, fewer clients; the figures are
	// a smoke test, not for publication.
	Quick bool
	// Note is -note: a sentence shown under the title.
	Note    string
	Machine Machine
	Timing  Timing
	// Scenarios: "sleep", "cpu" (a slow backend) and "datapath" (equal
	// backends), in that order. The slow-backend scenarios also measure
	// xDS clients (cfgXDSRR, cfgXDSLL; with -quick in "sleep" only).
	Scenarios []Scenario
	// Propagation: one Consul change reaching 1 to 1,000 streams.
	Propagation []Propagation
	// Clients are BenchmarkClientMemory's sub-benchmarks (./e2e), Collector
	// BenchmarkCollectorMemory's (./loadreport); the *Err fields say why
	// one is missing.
	Clients      []BenchLine
	ClientsErr   string
	Collector    []BenchLine
	CollectorErr string
	// XDSClients are BenchmarkXDSClientMemory's sub-benchmarks (./e2e):
	// ADS streams' memory and one change's fan-out; XDSClientsErr says
	// why some are missing. Absent from results of older runs.
	XDSClients    []BenchLine `json:",omitempty"`
	XDSClientsErr string      `json:",omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPU       string
	Cores     int
	MemoryGiB float64
	Go        string
	Kernel    string
	OSArch    string
}

// Timing is the load-report timing and the load shape shared by every
// balancing configuration.
type Timing struct {
	// ReportInterval: ORCA reports asked of backends (Lookaside
	// -load-report-interval, A58 oobReportingPeriod; backends
	// -orca-min-interval).
	ReportInterval time.Duration
	// Blackout: how long a backend reports before its load counts
	// (Lookaside -load-blackout, A58 blackoutPeriod).
	Blackout time.Duration
	// WeightUpdate: least time between weight updates (Lookaside's
	// fixed 1 s publication interval, A58 weightUpdatePeriod).
	WeightUpdate time.Duration
	// LoadWindow: the backends' -load-window (QPS and calls in flight are
	// averaged over it).
	LoadWindow time.Duration
	Workers    int
	// Warmup precedes a configuration's first round, Rewarm its others;
	// Window is its measured time, split into Rounds rounds that
	// alternate between the configurations.
	Warmup time.Duration
	Rewarm time.Duration
	Window time.Duration
	Rounds int
}

// Configuration keys of a Run.
const (
	cfgRR     = "lookaside-rr"
	cfgLL     = "lookaside-ll"
	cfgA58    = "grpc-wrr"
	cfgOracle = "oracle"
	cfgDirect = "direct-rr"
	// The xDS configurations: grpc-go's xDS client (xds:///<service>)
	// fed by the same lbserver process as cfgRR and cfgLL.
	cfgXDSRR = "xds-rr"
	cfgXDSLL = "xds-ll"
)

// configTitle names a configuration in the report.
var configTitle = map[string]string{
	cfgRR:     "Lookaside round_robin",
	cfgLL:     "Lookaside least_load",
	cfgA58:    "grpc-go weighted_round_robin (A58, OOB ORCA)",
	cfgOracle: "oracle: round_robin over the fast backends only",
	cfgDirect: "direct: client-side round_robin, no balancer",
	cfgXDSRR:  "Lookaside round_robin, xDS client",
	cfgXDSLL:  "Lookaside least_load, xDS client",
}

// Scenario is one set of backends and the configurations measured on it,
// one after another.
type Scenario struct {
	Key   string
	Title string
	// Backends describes the backends and their flags.
	Backends string
	// Note says what the scenario shows and how to read it.
	Note string
	// Skipped, if set, says why the scenario did not run.
	Skipped string
	Runs    []Run
}

// Run is one configuration's measured window.
type Run struct {
	Config   string
	Calls    int
	Failures int
	Seconds  float64
	Rate     float64 // calls/s
	MeanMs   float64
	P50Ms    float64
	P90Ms    float64
	P99Ms    float64
	// SlowShare is the slow backend's share of the calls; -1 without one.
	SlowShare float64
	// CDF of the latencies: CDFMs[i] ms or less for a share CDFShare[i].
	CDFMs    []float64
	CDFShare []float64
	// Err, if set, says why the run has no figures.
	Err string
}

// run returns the scenario's run of configuration cfg, if it has figures.
func (s Scenario) run(cfg string) (Run, bool) {
	for _, r := range s.Runs {
		if r.Config == cfg && r.Err == "" && r.Calls > 0 {
			return r, true
		}
	}
	return Run{}, false
}

// scenario returns the scenario key of res.
func (res Results) scenario(key string) (Scenario, bool) {
	for _, s := range res.Scenarios {
		if s.Key == key {
			return s, true
		}
	}
	return Scenario{}, false
}

// BenchLine is one line of `go test -bench` output: the sub-benchmark name
// (without the benchmark's name and the GOMAXPROCS suffix) and its metrics
// by unit.
type BenchLine struct {
	Name    string
	Metrics map[string]float64
}

// metric returns the metric unit of sub-benchmark name in lines.
func metric(lines []BenchLine, name, unit string) (float64, bool) {
	for _, l := range lines {
		if l.Name == name {
			v, ok := l.Metrics[unit]
			return v, ok
		}
	}
	return 0, false
}

var procsSuffix = regexp.MustCompile(`-\d+$`)

// parseBench returns the result lines of benchmark bench (e.g.
// "BenchmarkClientMemory") in `go test -bench` output: for
// "BenchmarkX/clients=1000-2  1  5 ns/op  40.1 KiB-RSS/client" the name
// "clients=1000" and the metrics {"ns/op": 5, "KiB-RSS/client": 40.1}; a
// benchmark without sub-benchmarks has the name "".
func parseBench(out, bench string) []BenchLine {
	var lines []BenchLine
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || (f[0] != bench && !strings.HasPrefix(f[0], bench+"/") && !strings.HasPrefix(f[0], bench+"-")) {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // a log line that starts with the name
		}
		name := procsSuffix.ReplaceAllString(f[0], "")
		name = strings.TrimPrefix(strings.TrimPrefix(name, bench), "/")
		l := BenchLine{Name: name, Metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			l.Metrics[f[i+1]] = v
		}
		lines = append(lines, l)
	}
	return lines
}
