package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lookaside-lb/lookaside/internal/plot"
)

// Goals of issue 11, checked against the figures. Benchmarks report: a
// goal not met is stated, never an error.
const (
	goalP99Ratio       = 1.5   // least_load p99 ≤ 1.5 × the oracle's
	goalRateRatio      = 0.95  // least_load calls/s ≥ 95 % of the oracle's
	goalDataPath       = 0.95  // balanced calls/s ≥ 95 % of direct round_robin
	goalEqualRR        = 0.97  // least_load within 3 % of round_robin with equal backends
	goalKiBPerClient   = 16.0  // LB memory per client on its own connection
	goalChangeP99Ms    = 250.0 // one change to 10,000 clients
	goalServicesP99Ms  = 500.0 // one change in each of 100 services
	goalKiBPerEndpoint = 20.0  // load collection per endpoint
)

// Names of BenchmarkClientMemory's sub-benchmarks and metrics (the contract
// with its owner, docs in /e2e/clients_bench_test.go).
const (
	subClients10k  = "clients=10000"
	subServices    = "services=100"
	subMultiplexed = "clients=10000,per-conn=100"
	// subGRPCTransport is subClients10k on grpc-go's server.
	subGRPCTransport = "clients=10000,transport=grpc"
	unitKiB          = "KiB-RSS/client"
	unitKiBRecon     = "KiB-RSS/client-reconnected"
	unitP50          = "p50-change-ms"
	unitP99          = "p99-change-ms"
	// unitClientsCPU is the CPU time the benchmark's clients spent on one
	// change.
	unitClientsCPU = "clients-cpu-ms/change"
	unitEndpoint   = "RSS-KiB/endpoint"
)

// verdict states whether a figure meets its goal.
func verdict(met bool) string {
	if met {
		return "met"
	}
	return "**not met**"
}

// goalRow is one line of the headline table.
type goalRow struct {
	figure, measured, goal, verdict string
}

// headline computes the goal rows from the results: a figure that was not
// measured says so.
func headline(res Results) []goalRow {
	var rows []goalRow
	missing := func(figure, goal, why string) {
		rows = append(rows, goalRow{figure, "not measured", goal, why})
	}
	for _, key := range []string{"sleep", "cpu"} {
		s, ok := res.scenario(key)
		title := key
		if ok {
			title = s.Title
		}
		ll, okLL := s.run(cfgLL)
		or, okOr := s.run(cfgOracle)
		p99Goal := fmt.Sprintf("≤ %.1f×", goalP99Ratio)
		rateGoal := fmt.Sprintf("≥ %.2f", goalRateRatio)
		if !okLL || !okOr {
			why := "missing run"
			if s.Skipped != "" {
				why = s.Skipped
			}
			missing(title+": least_load p99 / oracle p99", p99Goal, why)
			missing(title+": least_load calls/s / oracle calls/s", rateGoal, why)
			continue
		}
		p99 := ll.P99Ms / or.P99Ms
		rate := ll.Rate / or.Rate
		rows = append(rows,
			goalRow{title + ": least_load p99 / oracle p99", fmt.Sprintf("%.2f× (%.1f ms / %.1f ms)", p99, ll.P99Ms, or.P99Ms), p99Goal, verdict(p99 <= goalP99Ratio)},
			goalRow{title + ": least_load calls/s / oracle calls/s", fmt.Sprintf("%.2f (%.0f / %.0f)", rate, ll.Rate, or.Rate), rateGoal, verdict(rate >= goalRateRatio)})
	}
	if s, ok := res.scenario("datapath"); ok {
		d, okD := s.run(cfgDirect)
		for _, cfg := range []string{cfgRR, cfgLL} {
			figure := "data path: " + configTitle[cfg] + " calls/s / direct round_robin"
			goal := fmt.Sprintf("≥ %.2f", goalDataPath)
			r, okR := s.run(cfg)
			if !okD || !okR {
				missing(figure, goal, "missing run")
				continue
			}
			ratio := r.Rate / d.Rate
			rows = append(rows, goalRow{figure, fmt.Sprintf("%.3f (%.0f / %.0f)", ratio, r.Rate, d.Rate), goal, verdict(ratio >= goalDataPath)})
		}
		rr, okRR := s.run(cfgRR)
		ll, okLL := s.run(cfgLL)
		figure := "equal backends: least_load calls/s / round_robin calls/s"
		goal := fmt.Sprintf("≥ %.2f (within 3 %%)", goalEqualRR)
		if okRR && okLL {
			ratio := ll.Rate / rr.Rate
			rows = append(rows, goalRow{figure, fmt.Sprintf("%.3f (%.0f / %.0f)", ratio, ll.Rate, rr.Rate), goal, verdict(ratio >= goalEqualRR)})
		} else {
			missing(figure, goal, "missing run")
		}
	} else {
		missing("data path: balanced calls/s / direct round_robin", fmt.Sprintf("≥ %.2f", goalDataPath), "missing scenario")
	}
	clientRows := []struct {
		figure, sub, unit, goal string
		bound                   float64
		format                  string
	}{
		{"LB memory per client on its own connection (10,000 clients)", subClients10k, unitKiB, fmt.Sprintf("≤ %g KiB", goalKiBPerClient), goalKiBPerClient, "%.1f KiB"},
		{"one change reaching 10,000 clients: p99", subClients10k, unitP99, fmt.Sprintf("≤ %g ms", goalChangeP99Ms), goalChangeP99Ms, "%.0f ms"},
		{"one change in each of 100 services (10,000 clients): p99", subServices, unitP99, fmt.Sprintf("≤ %g ms", goalServicesP99Ms), goalServicesP99Ms, "%.0f ms"},
	}
	for _, c := range clientRows {
		v, ok := metric(res.Clients, c.sub, c.unit)
		if !ok {
			why := "no `" + c.sub + "` " + c.unit + " in BenchmarkClientMemory's output"
			switch {
			case res.Quick:
				why = "not run by -quick"
			case len(res.Clients) == 0 && res.ClientsErr != "":
				why = oneLine(res.ClientsErr)
			}
			missing(c.figure, c.goal, why)
			continue
		}
		rows = append(rows, goalRow{c.figure, fmt.Sprintf(c.format, v), c.goal, verdict(v <= c.bound)})
	}
	if v, ok := metric(res.Collector, "", unitEndpoint); ok {
		rows = append(rows, goalRow{"load collection per endpoint (1,000 endpoints): RSS", fmt.Sprintf("%.1f KiB", v), fmt.Sprintf("≤ %g KiB", goalKiBPerEndpoint), verdict(v <= goalKiBPerEndpoint)})
	} else {
		why := "BenchmarkCollectorMemory did not report " + unitEndpoint
		if len(res.Collector) == 0 && res.CollectorErr != "" {
			why = oneLine(res.CollectorErr)
		}
		missing("load collection per endpoint (1,000 endpoints): RSS", fmt.Sprintf("≤ %g KiB", goalKiBPerEndpoint), why)
	}
	return rows
}

// renderMarkdown returns BENCHMARKS.md for res; plots are the plot files
// written, relative to the markdown's directory, by key ("latency-sleep",
// "propagation", "memory").
func renderMarkdown(res Results, plots map[string]string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Benchmarks\n\n")
	p("Generated by `%s` on %s (`make bench` runs `go run ./tools/bench -out docs`). Do not edit by hand: run `make bench` again. The figures are saved in `bench/results.json`; `go run ./tools/bench -render docs/bench/results.json` renders this page and its plots from them.\n\n",
		res.Command, res.Generated.Format("2006-01-02 15:04 UTC"))
	if res.Note != "" {
		p("> %s\n\n", res.Note)
	}
	if res.Quick {
		p("> **Quick run (`-quick`): short windows and 1,000 clients only. These figures are a smoke test, not for publication; `make bench` on a quiet machine regenerates this page.**\n\n")
	}
	m := res.Machine
	p("Machine: %s, %d cores, %.1f GiB memory; %s; %s (%s). Everything (Consul, backends, balancer, clients) runs on this one machine, on loopback.\n\n",
		orUnknown(m.CPU), m.Cores, m.MemoryGiB, orUnknown(m.Go), orUnknown(m.Kernel), m.OSArch)

	p("## Headline: the goals of issue 11\n\n")
	p("| figure | measured | goal | verdict |\n|---|---|---|---|\n")
	for _, r := range headline(res) {
		p("| %s | %s | %s | %s |\n", r.figure, r.measured, r.goal, r.verdict)
	}
	p("\nRatios are the headline: the machine's speed cancels out of them, not its noise.\n\n")

	t := res.Timing
	p("## How the load is made\n\n")
	p("Every backend is a `cmd/backend` process registered in a Consul dev agent, sized for 8 calls at once (`-capacity 8`: it reports application utilization = mean calls in flight / 8) and reporting ORCA load over a %v window (`-load-window`) at most every %v (`-orca-min-interval`). ", t.LoadWindow, t.ReportInterval)
	p("One client process (this command) runs %d closed-loop workers: each makes one `GetUserList` call at a time, back to back. All the configurations of a scenario are dialled at once and stay open; they are measured in %d interleaved round(s) (A B C D, A B C D), %v of calls per configuration in all (at most %d calls per worker per round), so that a change in the machine's load falls on all of them alike. A configuration's first round follows a %v warm-up (longer than the blackout), each later one a %v warm-up (the load window and one weight update, so that the weights follow its own traffic). calls/s is the successful calls over the measured time.\n\n",
		t.Workers, max(1, t.Rounds), t.Window, int((t.Window/time.Duration(max(1, t.Rounds))).Seconds()*maxCallRate), t.Warmup, t.Rewarm)
	p("| configuration | how the client balances |\n|---|---|\n")
	p("| %s | grpc-go's `grpclb` policy (round_robin child) fed by an `lbserver` process with `-policy round_robin` |\n", configTitle[cfgRR])
	p("| %s | the same, `-policy least_load` with its default settings |\n", configTitle[cfgLL])
	p("| %s | `weighted_round_robin` on the client, dialling every backend directly (their addresses from Consul through a manual resolver), `enableOobLoadReport: true` |\n", configTitle[cfgA58])
	p("| %s | client-side `round_robin` over the fast backends' addresses only: what a balancer that knew in advance could do |\n", configTitle[cfgOracle])
	p("| %s | client-side `round_robin` over every backend's address, no balancer (data path) |\n", configTitle[cfgDirect])
	p("| %s | grpc-go's xDS client (`xds:///<service>`, bootstrap naming the balancer) fed by the `-policy round_robin` lbserver above: one locality, `ROUND_ROBIN` |\n", configTitle[cfgXDSRR])
	p("| %s | the same, fed by the `-policy least_load` lbserver: one locality per endpoint weighted by the load weights |\n\n", configTitle[cfgXDSLL])
	p("Load-report timing, the same for Lookaside and A58 where they have the same knob:\n\n")
	p("| knob | value | Lookaside | grpc-go weighted_round_robin |\n|---|---|---|---|\n")
	p("| report interval | %v | `-load-report-interval` | `oobReportingPeriod` |\n", t.ReportInterval)
	p("| blackout | %v | `-load-blackout` | `blackoutPeriod` |\n", t.Blackout)
	p("| weight update period | %v | fixed (load weights are published at most once a second) | `weightUpdatePeriod` |\n\n", t.WeightUpdate)

	for _, s := range res.Scenarios {
		p("## %s\n\n", s.Title)
		if s.Note != "" {
			p("%s\n\n", s.Note)
		}
		p("Backends: %s.\n\n", s.Backends)
		if s.Skipped != "" {
			p("Not measured: %s.\n\n", s.Skipped)
			continue
		}
		anchor, anchorName := cfgOracle, "oracle"
		if s.Key == "datapath" {
			anchor, anchorName = cfgDirect, "direct"
		}
		a, okA := s.run(anchor)
		p("| configuration | calls/s | p50 ms | p90 ms | p99 ms | slow backend's share | calls/s / %s | p99 / %s | failed calls |\n|---|---|---|---|---|---|---|---|---|\n", anchorName, anchorName)
		for _, r := range s.Runs {
			if r.Err != "" || r.Calls == 0 {
				p("| %s | not measured: %s | | | | | | | |\n", configTitle[r.Config], oneLine(r.Err))
				continue
			}
			share := "–"
			if r.SlowShare >= 0 {
				share = fmt.Sprintf("%.1f %%", 100*r.SlowShare)
			}
			rate, p99 := "–", "–"
			if okA {
				rate = fmt.Sprintf("%.3f", r.Rate/a.Rate)
				p99 = fmt.Sprintf("%.2f×", r.P99Ms/a.P99Ms)
			}
			p("| %s | %.0f | %.2f | %.2f | %.2f | %s | %s | %s | %d |\n", configTitle[r.Config], r.Rate, r.P50Ms, r.P90Ms, r.P99Ms, share, rate, p99, r.Failures)
		}
		if ll, ok := s.run(cfgLL); ok && s.Key != "datapath" {
			if w, ok := s.run(cfgA58); ok {
				p("\nleast_load against grpc-go's weighted_round_robin: p99 %.2f×, calls/s %.3f.\n", ll.P99Ms/w.P99Ms, ll.Rate/w.Rate)
			}
		}
		var vs []string
		for _, pair := range xdsPairs {
			x, okX := s.run(pair.xds)
			g, okG := s.run(pair.grpclb)
			if okX && okG {
				vs = append(vs, fmt.Sprintf("%s p99 %.2f×, calls/s %.3f", pair.policy, x.P99Ms/g.P99Ms, x.Rate/g.Rate))
			}
		}
		if len(vs) > 0 {
			p("\nxDS clients against grpclb clients of the same lbserver: %s.\n", strings.Join(vs, "; "))
		}
		if f, ok := plots["latency-"+s.Key]; ok {
			p("\n![latency CDF, %s](%s)\n", s.Title, f)
		}
		p("\n")
	}

	p("## Clients: balancer memory and propagation\n\n")
	p("What a client costs the balancer, and how soon a change in Consul reaches every client.\n\n")
	if len(res.Propagation) > 0 {
		p("One Consul change reaching N clients (this command: the `lbserver` binary, N BalanceLoad streams each on a connection of its own, one instance added to a service of %d): the time from the registration until each stream's next list.\n\n", propInstances)
		p("| clients | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n")
		for _, pr := range res.Propagation {
			if pr.Err != "" {
				p("| %d | not measured: %s | | |\n", pr.Clients, oneLine(pr.Err))
				continue
			}
			p("| %d | %.1f | %.1f | %.1f |\n", pr.Clients, pr.P50Ms, pr.P99Ms, pr.MaxMs)
		}
		p("\n")
	}
	p("`BenchmarkClientMemory` (`go test -run '^$' -bench ClientMemory -benchtime 1x ./e2e`): the `lbserver` binary with N grpc-go clients, each on a connection of its own with one BalanceLoad stream, as every grpclb channel has; RSS per client once every stream has its list, and the time from one backend's deregistration until each stream's next list; `services=100`: 10,000 clients over 100 services, one change in each at once. `%s` is the anchor: the same streams multiplexed 100 per connection. `%s` is the same as `%s` with BalanceLoad on grpc-go's server (`-transport grpc`) instead of the balancer's own transport.\n\n", subMultiplexed, subGRPCTransport, subClients10k)
	if len(res.Clients) > 0 {
		units := benchUnits(res.Clients, []string{unitKiB, unitKiBRecon, unitP50, unitP99})
		p("| sub-benchmark | %s |\n|---|%s\n", strings.Join(units, " | "), strings.Repeat("---|", len(units)))
		for _, l := range res.Clients {
			var cells []string
			for _, u := range units {
				if v, ok := l.Metrics[u]; ok {
					cells = append(cells, strconv.FormatFloat(v, 'f', -1, 64))
				} else {
					cells = append(cells, "–")
				}
			}
			p("| `%s` | %s |\n", l.Name, strings.Join(cells, " | "))
		}
		p("\n")
	}
	renderChangeFloor(p, res)
	if res.ClientsErr != "" {
		p("Not all measured:\n\n```\n%s\n```\n\n", res.ClientsErr)
	}
	for _, k := range []string{"memory", "propagation"} {
		if f, ok := plots[k]; ok {
			p("![%s](%s)\n\n", k, f)
		}
	}

	renderXDS(p, res, plots)

	p("## Endpoints: load collection\n\n")
	p("`BenchmarkCollectorMemory` (`go test -run '^$' -bench CollectorMemory -benchtime 1x ./loadreport`): what collecting ORCA load reports costs the balancer per endpoint, at 1,000 endpoints. Without load reports (round_robin and every policy but least_load, unless a service sets its own `max_drop_share`) there is no collector: no connection, goroutine or memory per endpoint.\n\n")
	if len(res.Collector) > 0 {
		p("| per endpoint | with load reports | without |\n|---|---|---|\n")
		l := res.Collector[0]
		for _, u := range benchUnits(res.Collector, []string{unitEndpoint}) {
			p("| %s | %s | 0 |\n", u, strconv.FormatFloat(l.Metrics[u], 'f', -1, 64))
		}
		p("\n")
	}
	if res.CollectorErr != "" {
		p("Not measured:\n\n```\n%s\n```\n\n", res.CollectorErr)
	}

	p("## Reproduce\n\n")
	p("```sh\nmake bench            # the unit benchmarks, then %s\ngo run ./tools/bench -quick -out /tmp/bench   # a 2-minute smoke test\n```\n\n", "`go run ./tools/bench -out docs`")
	p("The command builds `cmd/lbserver` and `cmd/backend` (no race detector), starts a Consul dev agent (`scripts/consul.sh` builds it once), the backends and one `lbserver` per Lookaside configuration, all on loopback; it never fails on a time. Other work on the machine shows in the figures: publish only a run on a quiet machine.\n")
	return b.String()
}

// benchUnits returns the metric units of lines: first those of prefer that
// occur, then the others sorted, without ns/op.
// renderChangeFloor says, for the two propagation goals, how much CPU the
// change took in the balancer and in the clients (which share this
// machine's cores), and so the time no schedule of the two beats.
func renderChangeFloor(p func(string, ...any), res Results) {
	if res.Machine.Cores <= 0 {
		return
	}
	var rows []string
	for _, sub := range []string{subClients10k, subServices} {
		lb, okLB := metric(res.Clients, sub, unitCPU)
		cl, okCL := metric(res.Clients, sub, unitClientsCPU)
		p99, okP99 := metric(res.Clients, sub, unitP99)
		if !okLB || !okCL || !okP99 {
			continue
		}
		rows = append(rows, fmt.Sprintf("| `%s` | %.0f ms | %.0f ms | %.0f ms | %.0f ms |", sub, lb, cl, (lb+cl)/float64(res.Machine.Cores), p99))
	}
	if len(rows) == 0 {
		return
	}
	p("The clients run in the benchmark's process, on the same %d cores as the balancer: the last stream cannot have its list sooner than the CPU time both spend on the change over the cores (the floor).\n\n", res.Machine.Cores)
	p("| sub-benchmark | balancer CPU | clients' CPU | floor | p99 |\n|---|---|---|---|---|\n%s\n\n", strings.Join(rows, "\n"))
}

func benchUnits(lines []BenchLine, prefer []string) []string {
	seen := map[string]bool{}
	for _, l := range lines {
		for u := range l.Metrics {
			seen[u] = true
		}
	}
	var units []string
	for _, u := range prefer {
		if seen[u] {
			units = append(units, u)
			delete(seen, u)
		}
	}
	delete(seen, "ns/op")
	var rest []string
	for u := range seen {
		rest = append(rest, u)
	}
	slices.Sort(rest)
	return append(units, rest...)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// oneLine keeps the first line of an error for a table cell.
func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.ReplaceAll(s, "|", "/")
}

// writePlots draws the plots res has data for into dir and returns their
// paths relative to dir's parent, by key.
func writePlots(dir string, res Results) (map[string]string, error) {
	plots := map[string]string{}
	save := func(key string, c plot.Chart) error {
		if len(c.Series) == 0 {
			return nil
		}
		name := key + ".png"
		if err := c.Save(filepath.Join(dir, name)); err != nil {
			return err
		}
		plots[key] = "bench/" + name
		return nil
	}
	for _, s := range res.Scenarios {
		c := plot.Chart{
			Title:  "Latency CDF: " + s.Title,
			XLabel: "call latency, ms (log scale)", YLabel: "share of calls at most this long",
			LogX: true, YMin: 0, YMax: 1, Legend: plot.BottomRight,
		}
		for _, r := range s.Runs {
			if len(r.CDFMs) > 0 {
				c.Series = append(c.Series, plot.Series{Name: configTitle[r.Config], X: r.CDFMs, Y: r.CDFShare})
			}
		}
		if err := save("latency-"+s.Key, c); err != nil {
			return nil, err
		}
	}
	// Memory and propagation against the number of clients, from
	// BenchmarkClientMemory's and BenchmarkXDSClientMemory's
	// sub-benchmarks.
	mem := plot.Chart{Title: "Balancer RSS per client (grpclb) or ADS stream (xDS)", XLabel: "clients (log scale)", YLabel: "KiB per client", LogX: true, Legend: plot.BottomRight}
	prop := plot.Chart{Title: "One Consul change: time until each client's next list", XLabel: "clients (log scale)", YLabel: "ms", LogX: true, Legend: plot.TopLeft}
	type pts struct{ x, y []float64 }
	series := map[string]*pts{}
	var order []string
	add := func(name string, x, y float64) {
		if series[name] == nil {
			series[name] = &pts{}
			order = append(order, name)
		}
		series[name].x = append(series[name].x, x)
		series[name].y = append(series[name].y, y)
	}
	for _, l := range res.Clients {
		n, kind := clientsOf(l.Name)
		if n == 0 {
			continue
		}
		for _, u := range []struct{ unit, chart, label string }{
			{unitKiB, "mem", ""}, {unitKiBRecon, "mem", ", after all reconnected"},
			{unitP50, "prop", ", one deregistered: p50"}, {unitP99, "prop", ", one deregistered: p99"},
		} {
			if v, ok := l.Metrics[u.unit]; ok {
				add(u.chart+"|"+kind+u.label, float64(n), v)
			}
		}
	}
	xdsPlotPoints(res, add)
	for _, pr := range res.Propagation {
		if pr.Err == "" {
			add("prop|one instance added: p50", float64(pr.Clients), pr.P50Ms)
			add("prop|one instance added: p99", float64(pr.Clients), pr.P99Ms)
		}
	}
	for _, name := range order {
		chart, label, _ := strings.Cut(name, "|")
		s := plot.Series{Name: label, X: series[name].x, Y: series[name].y}
		if chart == "mem" {
			mem.Series = append(mem.Series, s)
		} else {
			prop.Series = append(prop.Series, s)
		}
	}
	// The goals, as flat lines across the measured range.
	goalLine := func(c *plot.Chart, name string, y float64) {
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, s := range c.Series {
			for _, x := range s.X {
				lo, hi = min(lo, x), max(hi, x)
			}
		}
		if len(c.Series) > 0 {
			c.Series = append(c.Series, plot.Series{Name: name, X: []float64{lo, hi}, Y: []float64{y, y}})
		}
	}
	goalLine(&mem, fmt.Sprintf("goal: %g KiB per client", goalKiBPerClient), goalKiBPerClient)
	goalLine(&prop, fmt.Sprintf("goal at 10,000 clients: p99 %g ms", goalChangeP99Ms), goalChangeP99Ms)
	if err := save("memory", mem); err != nil {
		return nil, err
	}
	if err := save("propagation", prop); err != nil {
		return nil, err
	}
	if err := save("propagation-xds", xdsPropagationChart(res)); err != nil {
		return nil, err
	}
	return plots, nil
}

// clientsOf reads a ClientMemory sub-benchmark name: how many clients, and
// what kind of run ("own connection", "100 services", "multiplexed 100
// per connection"); 0 when the name has no clients= or services=.
func clientsOf(name string) (n int, kind string) {
	kind = "own connection"
	kv := map[string]string{}
	for _, part := range strings.Split(name, ",") {
		k, v, _ := strings.Cut(part, "=")
		kv[k] = v
	}
	if v, ok := kv["clients"]; ok {
		n, _ = strconv.Atoi(v)
	}
	if v, ok := kv["services"]; ok {
		if n == 0 {
			n = 10000 // the contract: 10,000 clients over the services
		}
		kind = v + " services"
	}
	if v, ok := kv["per-conn"]; ok {
		kind = "multiplexed " + v + " per connection"
	}
	if v, ok := kv["transport"]; ok {
		kind += ", " + v + " transport"
	}
	return n, kind
}
