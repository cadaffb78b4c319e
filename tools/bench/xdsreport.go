package main

import (
	"fmt"
	"strconv"
	"strings"
)

// Names and metrics of BenchmarkXDSClientMemory's sub-benchmarks (the
// contract with its owner, docs in /e2e/xds_bench_test.go).
const (
	subXDSStreams10k = "streams=10000"
	unitKiBStream    = "KiB-RSS/stream"
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
	{"balancer CPU ms for the change", "balancer-cpu-ms/change", "balancer-cpu-ms/change"},
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
func renderXDS(p func(format string, args ...any), res Results) {
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
		p("At 10,000: an xDS stream costs the balancer %.1f KiB of RSS, %.2f× a grpclb client's %.1f KiB; one change reaches every xDS stream in p99 %.0f ms, %.2f× the grpclb clients' %.0f ms.\n\n", x, x/g, g, x99, x99/g99, g99)
	case res.Quick:
		p("10,000 streams: not run by -quick.\n\n")
	}
	if res.XDSClientsErr != "" {
		p("Not all measured:\n\n```\n%s\n```\n\n", res.XDSClientsErr)
	}
}

// xdsPlotPoints adds the xDS sub-benchmarks' figures to the memory and
// propagation plots through add (chart "mem" or "prop", series label).
func xdsPlotPoints(res Results, add func(name string, x, y float64)) {
	for _, l := range res.XDSClients {
		n, kind := xdsKind(l.Name)
		if n == 0 {
			continue
		}
		for _, u := range []struct{ unit, chart, label string }{
			{unitKiBStream, "mem", ""},
			{unitP50, "prop", ", one deregistered: p50"}, {unitP99, "prop", ", one deregistered: p99"},
		} {
			if v, ok := l.Metrics[u.unit]; ok {
				add(u.chart+"|"+kind+u.label, float64(n), v)
			}
		}
	}
}
