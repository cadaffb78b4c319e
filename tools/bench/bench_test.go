package main

import (
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestQuickEndToEnd runs `bench -quick` as make bench would, with real
// processes and Consul: every configuration of every scenario gets figures,
// and the report shows them with its plots. It needs LOOKASIDE_CONSUL and
// takes a few minutes, so it skips in -short mode and without Consul. It
// asserts that the bench runs, never a time.
func TestQuickEndToEnd(t *testing.T) {
	if testing.Short() || os.Getenv("LOOKASIDE_CONSUL") == "" {
		t.Skip("needs LOOKASIDE_CONSUL and no -short (runs real processes for a few minutes)")
	}
	out := t.TempDir()
	if err := run(t.Context(), options{out: out, quick: true, slowCPU: defaultSlowCPU}, []string{"-quick"}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "bench", "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Scenarios) != 3 {
		t.Fatalf("%d scenarios, want sleep, cpu and datapath", len(res.Scenarios))
	}
	for _, s := range res.Scenarios {
		if s.Skipped != "" {
			t.Errorf("scenario %s skipped: %s", s.Key, s.Skipped)
		}
		for _, r := range s.Runs {
			if r.Err != "" || r.Calls == 0 || r.Failures != 0 {
				t.Errorf("%s/%s: %d calls, %d failed, error %q", s.Key, r.Config, r.Calls, r.Failures, r.Err)
			}
			if s.Key != "datapath" && r.Config == cfgOracle && r.SlowShare != 0 {
				t.Errorf("%s: the oracle sent %.1f%% of calls to the slow backend", s.Key, 100*r.SlowShare)
			}
		}
	}
	if s, ok := res.scenario("sleep"); ok {
		for _, cfg := range []string{cfgXDSRR, cfgXDSLL} {
			if _, ok := s.run(cfg); !ok {
				t.Errorf("sleep: no figures for %s", cfg)
			}
		}
	}
	if len(res.Propagation) != 3 {
		t.Errorf("propagation measured for %d client counts, want 1, 10 and 100", len(res.Propagation))
	}
	for _, pr := range res.Propagation {
		if pr.Err != "" || pr.P99Ms <= 0 {
			t.Errorf("propagation to %d clients: p99 %v ms, error %q", pr.Clients, pr.P99Ms, pr.Err)
		}
	}
	if res.ClientsErr != "" || len(res.Clients) == 0 {
		t.Errorf("client benchmark: %d lines, %s", len(res.Clients), res.ClientsErr)
	}
	if res.XDSClientsErr != "" || len(res.XDSClients) == 0 {
		t.Errorf("xDS client benchmark: %d lines, %s", len(res.XDSClients), res.XDSClientsErr)
	}
	if res.CollectorErr != "" || len(res.Collector) == 0 {
		t.Errorf("collector benchmark: %d lines, %s", len(res.Collector), res.CollectorErr)
	}
	md, err := os.ReadFile(filepath.Join(out, "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "Quick run") {
		t.Error("a quick run's report does not say so")
	}
	if strings.Contains(string(md), "| Slow backend (sleep): least_load p99 / oracle p99 | not measured") {
		t.Error("the headline lacks the sleep scenario's p99 ratio")
	}
	for _, name := range []string{"latency-sleep", "latency-cpu", "latency-datapath", "memory", "propagation", "propagation-xds"} {
		f, err := os.Open(filepath.Join(out, "bench", name+".png"))
		if err != nil {
			t.Errorf("plot %s: %v", name, err)
			continue
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("plot %s: %v", name, err)
		}
		f.Close()
	}
}
