package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lookaside-lb/lookaside/internal/plot"
)

// Names and metrics of BenchmarkXDSClientMemory's sub-benchmarks (the
// contract with its owner, docs in /e2e/xds_bench_test.go).
const (
	subXDSStreams10k = "streams=10000"
	unitKiBStream    = "KiB-RSS/stream"
	// unitCPU is the balancer's CPU time for one change, reported by
	// both client benchmarks.
	unitCPU = "balancer-cpu-ms/change"
)

// xdsPairs are the xDS configurations and the grpclb configuration of the
// same policy each is compared with.
var xdsPairs = []struct{ xds, grpclb, policy string }{
	{cfgXDSRR, cfgRR, "round_robin"},
	{cfgXDSLL, cfgLL, "least_load"},
}

// xdsMetricRows are the rows of the memory and fan-out table: the
// grpclb benchmark's unit and the xDS benchmark's for the same figure.
var xdsMetricRows = []struct{ label, grpclb, xds string }{
	{"balancer RSS per stream, KiB", unitKiB, unitKiBStream},
	{"goroutines per stream", "goroutines/client", "goroutines/stream"},
	{"heap in use per stream, KiB", "KiB-heap/client", "KiB-heap/stream"},
	{"goroutine stacks per stream, KiB", "KiB-stack/client", "KiB-stack/stream"},
	{"one change: p50 ms until each stream has it", unitP50, unitP50},
	{"one change: p99 ms until each stream has it", unitP99, unitP99},
	{"balancer CPU ms for the change", unitCPU, unitCPU},
}

// xdsKind names an xDS sub-benchmark's kind of stream for plots: how
// many streams, and "xDS ADS stream" or "xDS ADS + LRS streams"; 0 when
// the name has no streams=.
func xdsKind(name string) (n int, kind string) {
	kind = "xDS: ADS stream, own connection"
	for _, part := range strings.Split(name, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "streams":
			n, _ = strconv.Atoi(v)
		case "lrs":
			kind = "xDS: ADS + LRS streams, own connection"
		}
	}
	return n, kind
}

// renderXDS writes the xDS section of the report: xDS clients next to
// grpclb clients on the slow-backend scenarios, then the xDS streams'
// memory and fan-out next to grpclb clients'.
// plots are the plot files written, by key, as renderMarkdown has them.
func renderXDS(p func(format string, args ...any), res Results, plots map[string]string) {
	p("## xDS clients\n\n")
	p("The same `lbserver` processes serve grpc-go's xDS client (`xds:///<service>`, see [xds.md](xds.md)): the xDS configurations dial the lbserver of the grpclb configuration with the same policy, through `grpc.NewClient(\"xds:///\"+service)` with the bootstrap `lbserver xds-bootstrap` prints, given to that connection alone (grpc-go's `xds.NewXDSResolverWithConfigForTesting`, as `xds/xdstest` does; `GRPC_XDS_BOOTSTRAP` would be the whole process's). They are measured in the same interleaved rounds as the others. ")
	p("An xDS client balances by itself: under `round_robin` it gets one locality and round-robins over the endpoints; under `least_load` one locality per endpoint, weighted by the balancer's load weights (at most one update a second), and grpc-go draws each call's locality at random by weight, where a grpclb client follows the list the balancer made for it.\n\n")
	p("| scenario | configuration | calls/s | p50 ms | p99 ms | slow backend's share | calls/s / oracle | p99 / oracle | xDS / grpclb, same policy: p99, calls/s |\n|---|---|---|---|---|---|---|---|---|\n")
	shown := false
	for _, key := range []string{"sleep", "cpu"} {
		s, ok := res.scenario(key)
		if !ok || s.Skipped != "" {
			continue
		}
		or, okOr := s.run(cfgOracle)
		for _, pair := range xdsPairs {
			for _, cfg := range []string{pair.grpclb, pair.xds} {
				r, ok := s.run(cfg)
				if !ok {
					if cfg == pair.xds {
						why := "not run"
						for _, x := range s.Runs {
							if x.Config == cfg {
								why = oneLine(x.Err)
							}
						}
						if why == "not run" && res.Quick {
							why = "not run by -quick"
						}
						p("| %s | %s | not measured: %s | | | | | | |\n", s.Title, configTitle[cfg], why)
					}
					continue
				}
				shown = true
				share, rate, p99, vs := "–", "–", "–", "–"
				if r.SlowShare >= 0 {
					share = fmt.Sprintf("%.1f %%", 100*r.SlowShare)
				}
				if okOr {
					rate = fmt.Sprintf("%.3f", r.Rate/or.Rate)
					p99 = fmt.Sprintf("%.2f×", r.P99Ms/or.P99Ms)
				}
				if g, ok := s.run(pair.grpclb); ok && cfg == pair.xds {
					vs = fmt.Sprintf("%.2f×, %.3f", r.P99Ms/g.P99Ms, r.Rate/g.Rate)
				}
				p("| %s | %s | %.0f | %.2f | %.2f | %s | %s | %s | %s |\n", s.Title, configTitle[cfg], r.Rate, r.P50Ms, r.P99Ms, share, rate, p99, vs)
			}
		}
	}
	if !shown {
		p("| – | not measured | | | | | | | |\n")
	}
	p("\n")

	p("### 10,000 xDS streams: balancer memory and fan-out\n\n")
	p("`BenchmarkXDSClientMemory` (`go test -run '^$' -bench XDSClientMemory -benchtime 1x ./e2e`) is `BenchmarkClientMemory` for xDS: the `lbserver` binary with N ADS streams, each on a connection of its own, subscribed to one service of three instances as grpc-go subscribes (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment, each response ACKed); RSS per stream once every stream has its first ClusterLoadAssignment, and the time from one instance's deregistration until each stream has the ClusterLoadAssignment without it. `streams=10000,lrs` also opens an LRS stream next to each ADS stream, as a grpc-go channel holds (the figures stay per ADS stream). The grpclb columns are `BenchmarkClientMemory`'s clients on their own connections, one service.\n\n")
	p("What these figures are not: each xDS stream is a bare ADS client in the benchmark's process, not a grpc-go xDS client (10,000 of those in one process would measure the clients, not the balancer); the times end when a stream has received the new assignment, not when a client has applied it (the grpclb times likewise end at the stream's next list); the LRS streams send their first request only (these clients make no calls, so they report nothing); and unlike the grpclb benchmark there is no reconnected wave.\n\n")
	type col struct {
		title string
		line  BenchLine
		xds   bool
	}
	var cols []col
	for _, l := range res.Clients {
		if n, kind := clientsOf(l.Name); n > 0 && kind == "own connection" && !strings.Contains(l.Name, "services=") {
			cols = append(cols, col{"grpclb `" + l.Name + "`", l, false})
		}
	}
	for _, l := range res.XDSClients {
		cols = append(cols, col{"xDS `" + l.Name + "`", l, true})
	}
	if len(cols) > 0 {
		p("| per stream |")
		for _, c := range cols {
			p(" %s |", c.title)
		}
		p("\n|---|%s\n", strings.Repeat("---|", len(cols)))
		for _, row := range xdsMetricRows {
			p("| %s |", row.label)
			for _, c := range cols {
				unit := row.grpclb
				if c.xds {
					unit = row.xds
				}
				if v, ok := c.line.Metrics[unit]; ok {
					p(" %s |", strconv.FormatFloat(v, 'f', -1, 64))
				} else {
					p(" – |")
				}
			}
			p("\n")
		}
		p("\n")
	}
	g, okG := metric(res.Clients, subClients10k, unitKiB)
	x, okX := metric(res.XDSClients, subXDSStreams10k, unitKiBStream)
	g99, okG99 := metric(res.Clients, subClients10k, unitP99)
	x99, okX99 := metric(res.XDSClients, subXDSStreams10k, unitP99)
	switch {
	case okG && okX && okG99 && okX99 && g > 0 && g99 > 0:
		p("At 10,000: an xDS stream costs the balancer %.1f KiB of RSS, %.2f× a grpclb client's %.1f KiB; one change reaches every xDS stream in p99 %.0f ms, %.2f× the grpclb clients' %.0f ms", x, x/g, g, x99, x99/g99, g99)
		gc, okGC := metric(res.Clients, subClients10k, unitCPU)
		xc, okXC := metric(res.XDSClients, subXDSStreams10k, unitCPU)
		if okGC && okXC && gc > 0 {
			p(", and takes the balancer %.0f ms of CPU time, %.2f× the grpclb clients' %.0f ms (a figure that depends less on what else the machine runs)", xc, xc/gc, gc)
		}
		p(".\n\n")
	case res.Quick:
		p("10,000 streams: not run by -quick.\n\n")
	}
	if f, ok := plots["propagation-xds"]; ok {
		p("![one change: xDS streams and grpclb clients](%s)\n\n", f)
	}
	if res.XDSClientsErr != "" {
		p("Not all measured:\n\n```\n%s\n```\n\n", res.XDSClientsErr)
	}
}

// xdsPlotPoints adds the xDS sub-benchmarks' memory per stream to the
// memory plot through add (chart "mem", series label).
func xdsPlotPoints(res Results, add func(name string, x, y float64)) {
	for _, l := range res.XDSClients {
		if n, kind := xdsKind(l.Name); n > 0 {
			if v, ok := l.Metrics[unitKiBStream]; ok {
				add("mem|"+kind, float64(n), v)
			}
		}
	}
}

// xdsPropagationChart plots one change's time until each stream has it,
// p50 and p99, for the xDS streams and for the grpclb clients on their
// own connections (one service); it has no series without xDS figures.
func xdsPropagationChart(res Results) plot.Chart {
	c := plot.Chart{Title: "One Consul change: xDS streams and grpclb clients", XLabel: "streams (log scale)", YLabel: "ms until each stream has it", LogX: true, Legend: plot.TopLeft}
	if len(res.XDSClients) == 0 {
		return c
	}
	series := func(name string, lines []BenchLine, keep func(string) (int, bool), unit string) {
		var s plot.Series
		s.Name = name
		for _, l := range lines {
			n, ok := keep(l.Name)
			if v, has := l.Metrics[unit]; ok && has {
				s.X = append(s.X, float64(n))
				s.Y = append(s.Y, v)
			}
		}
		if len(s.X) > 0 {
			c.Series = append(c.Series, s)
		}
	}
	grpclb := func(name string) (int, bool) {
		n, kind := clientsOf(name)
		return n, n > 0 && kind == "own connection" && !strings.Contains(name, "services=")
	}
	ads := func(name string) (int, bool) {
		n, kind := xdsKind(name)
		return n, n > 0 && !strings.Contains(kind, "LRS")
	}
	withLRS := func(name string) (int, bool) {
		n, kind := xdsKind(name)
		return n, n > 0 && strings.Contains(kind, "LRS")
	}
	for _, u := range []struct{ unit, label string }{{unitP50, "p50"}, {unitP99, "p99"}} {
		series("grpclb client, own connection: "+u.label, res.Clients, grpclb, u.unit)
		series("xDS ADS stream, own connection: "+u.label, res.XDSClients, ads, u.unit)
		series("xDS ADS + LRS streams: "+u.label, res.XDSClients, withLRS, u.unit)
	}
	return c
}
