// Command bench measures Lookaside side by side with client-side
// balancing, as a new user would: it builds the lbserver and backend
// commands, starts a Consul dev agent, out-of-process backends and the
// lbserver binary on loopback, runs closed-loop load through each
// balancing configuration in turn, runs the client and endpoint memory
// benchmarks (go test), and writes docs/BENCHMARKS.md with PNG plots in
// docs/bench/.
//
//	go run ./tools/bench -out docs          # make bench: about 12 minutes on 2 cores
//	go run ./tools/bench -quick -out /tmp/b # a smoke test: about 2 minutes
//
// Benchmarks report; they never fail on a time. The command exits non-zero
// only when it cannot run (no Consul, a build error) or cannot write its
// output. Progress goes to stderr.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lookaside-lb/lookaside/internal/consultest"
)

// defaultSlowCPU is the CPU time the slow backend of the CPU-bound
// scenario spends in every call.
const defaultSlowCPU = 15 * time.Millisecond

// options are the command's flags.
type options struct {
	out     string
	quick   bool
	slowCPU time.Duration
	skipGo  bool
	render  string
	note    string
}

func main() {
	var o options
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.StringVar(&o.out, "out", "docs", "directory that receives BENCHMARKS.md; the plots and results.json go to its bench/ subdirectory")
	fs.BoolVar(&o.quick, "quick", false, "a smoke test: short warm-up and windows, 1,000 clients only; the report says its figures are not for publication")
	fs.DurationVar(&o.slowCPU, "slow-call-cpu", defaultSlowCPU, "CPU-bound scenario: CPU time the slow backend spends in every call (backend -call-cpu), on top of its 5ms -latency")
	fs.BoolVar(&o.skipGo, "skip-go-bench", false, "skip the go test benchmarks (BenchmarkClientMemory and BenchmarkXDSClientMemory in ./e2e, BenchmarkCollectorMemory in ./loadreport)")
	fs.StringVar(&o.render, "render", "", "render the report from this results.json instead of measuring")
	fs.StringVar(&o.note, "note", "", "a sentence shown under the report's title, e.g. that the machine was busy (kept in results.json; with -render, replaces the saved one)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: go run ./tools/bench [flags]\n\nMeasures Lookaside against client-side balancing with out-of-process backends and a Consul dev agent, and writes BENCHMARKS.md with PNG plots.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run measures (or reads results.json with -render) and writes the report.
func run(ctx context.Context, o options, args []string) error {
	var res Results
	if o.render != "" {
		b, err := os.ReadFile(o.render)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("%s: %w", o.render, err)
		}
	} else {
		var err error
		res, err = measureAll(ctx, o, args)
		if err != nil {
			return err
		}
	}
	if o.note != "" {
		res.Note = o.note
	}
	return writeReport(o.out, res)
}

// measureAll runs every measurement of the report. It blocks for the whole
// run (about 12 minutes on 2 cores, 2 with -quick).
func measureAll(ctx context.Context, o options, args []string) (Results, error) {
	begin := time.Now()
	res := Results{
		Generated: begin.UTC(),
		Command:   strings.TrimSpace("go run ./tools/bench " + strings.Join(args, " ")),
		Quick:     o.quick,
		Machine:   machine(ctx),
		Timing: Timing{
			ReportInterval: 100 * time.Millisecond,
			Blackout:       time.Second,
			WeightUpdate:   time.Second,
			LoadWindow:     time.Second,
			Workers:        8,
			Warmup:         5 * time.Second,
			Rewarm:         2 * time.Second,
			Window:         12 * time.Second,
			Rounds:         4,
		},
	}
	if o.quick {
		res.Timing.Warmup, res.Timing.Window, res.Timing.Rounds = 3*time.Second, 2*time.Second, 1
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return res, err
	}
	consulBin, err := consulBinary(ctx, root)
	if err != nil {
		return res, err
	}
	tmp, err := os.MkdirTemp("", "lookaside-bench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(tmp)
	logf("building cmd/lbserver and cmd/backend")
	bins, err := build(ctx, root, tmp)
	if err != nil {
		return res, err
	}
	logf("starting Consul (%s)", consulBin)
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	agent, err := consultest.Run(startCtx, consultest.Options{Binary: consulBin})
	cancel()
	if err != nil {
		return res, err
	}
	defer agent.Stop()
	b := &bench{bins: bins, consul: agent.HTTPAddr(), client: agent.Client(), timing: res.Timing, logf: logf}

	// The xDS clients on the slow-backend scenarios; -quick measures
	// them in the sleep scenario only, to stay a short smoke test.
	slowConfigs := []string{cfgRR, cfgLL, cfgXDSRR, cfgXDSLL, cfgA58, cfgOracle}
	cpuConfigs := slowConfigs
	if o.quick {
		cpuConfigs = []string{cfgRR, cfgLL, cfgA58, cfgOracle}
	}
	fast := backendSpec{args: []string{"-latency", "5ms"}}
	for _, spec := range []scenarioSpec{
		{
			key: "sleep", title: "Slow backend (sleep)", configs: slowConfigs,
			note:     "One backend of five takes four times as long per call, asleep: it costs no CPU. Round robin gives it a fifth of the calls, and every one of them is a slow call; the oracle never calls it.",
			backends: []backendSpec{fast, fast, fast, fast, {args: []string{"-latency", "20ms"}, slow: true}},
		},
		{
			key: "cpu", title: "Slow backend (CPU-bound)", configs: cpuConfigs, needFlag: "call-cpu",
			note:     fmt.Sprintf("The slow backend spends its extra time on the CPU: %v of CPU time in every call (`-call-cpu`) after the same 5 ms sleep as the others. On a 2-core machine shared by the client, Consul, the balancer and five backends, the calls a balancer still sends it queue for the CPU, so its latency grows with its share: under round robin (a fifth of the calls) it is the bottleneck of the whole closed loop.", o.slowCPU),
			backends: []backendSpec{fast, fast, fast, fast, {args: []string{"-latency", "5ms", "-call-cpu", o.slowCPU.String()}, slow: true}},
		},
		{
			key: "datapath", title: "Data path (equal backends)", configs: []string{cfgDirect, cfgRR, cfgLL},
			note:     "Five alike backends. The balancer is not on the data path: a grpclb client calls the backends directly, with an lb-token in its metadata, so its calls/s should match a client that dials them itself with round robin. least_load with equal backends should stay within 3 % of round robin.",
			backends: []backendSpec{fast, fast, fast, fast, fast},
		},
	} {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		res.Scenarios = append(res.Scenarios, b.runScenario(ctx, spec))
	}
	counts := []int{1, 10, 100, 1000}
	if o.quick {
		counts = counts[:3]
	}
	res.Propagation = b.runPropagation(ctx, counts)
	// The load's processes are gone: the memory benchmarks have the
	// machine to themselves (and their own Consul agents).
	agent.Stop()
	if o.skipGo {
		res.ClientsErr, res.XDSClientsErr, res.CollectorErr = "skipped (-skip-go-bench)", "skipped (-skip-go-bench)", "skipped (-skip-go-bench)"
	} else {
		// One go test run for the grpclb and the xDS clients' benchmarks
		// (the pattern matches BenchmarkClientMemory and
		// BenchmarkXDSClientMemory): one build and one Consul agent.
		pattern, limit := "ClientMemory", 18*time.Minute
		if o.quick {
			pattern, limit = "ClientMemory/^(clients=1000|streams=100)$", 5*time.Minute
		}
		logf("go test -bench %s ./e2e (up to %v)", pattern, limit)
		lines, errs := goBenchEach(ctx, root, consulBin, "./e2e", pattern, limit, "BenchmarkClientMemory", "BenchmarkXDSClientMemory")
		res.Clients, res.XDSClients = lines[0], lines[1]
		if errs[0] != nil {
			res.ClientsErr = errs[0].Error()
			logf("%v", errs[0])
		}
		if errs[1] != nil {
			res.XDSClientsErr = errs[1].Error()
			logf("%v", errs[1])
		}
		logf("go test -bench CollectorMemory ./loadreport")
		res.Collector, err = goBench(ctx, root, consulBin, "./loadreport", "CollectorMemory", "BenchmarkCollectorMemory", 5*time.Minute)
		if err != nil {
			res.CollectorErr = err.Error()
			logf("%v", err)
		}
	}
	logf("measured in %v", time.Since(begin).Round(time.Second))
	return res, ctx.Err()
}

// writeReport writes out/BENCHMARKS.md, out/bench/*.png and
// out/bench/results.json.
func writeReport(out string, res Results) error {
	dir := filepath.Join(out, "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	plots, err := writePlots(dir, res)
	if err != nil {
		return err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	md := filepath.Join(out, "BENCHMARKS.md")
	if err := os.WriteFile(md, []byte(renderMarkdown(res, plots)), 0o644); err != nil {
		return err
	}
	logf("wrote %s, %d plots and results.json in %s", md, len(plots), dir)
	return nil
}
