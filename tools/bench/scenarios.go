package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/weightedroundrobin" // registers A58's weighted_round_robin
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	grpcxds "google.golang.org/grpc/xds" // registers the xds:/// resolver and the xDS balancers

	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/internal/loadgen"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"github.com/lookaside-lb/lookaside/xds"
)

// Bounds of the steps around a measurement.
const (
	passingTimeout = 30 * time.Second
	seenTimeout    = 20 * time.Second
	callTimeout    = 5 * time.Second
	// maxCallRate bounds a worker's calls: window × maxCallRate at most.
	maxCallRate = 5000
	// cdfPoints is how many points of each latency distribution are kept.
	cdfPoints = 200
)

// backendSpec is one backend of a scenario: its extra flags, and whether
// it is the slow one.
type backendSpec struct {
	args []string
	slow bool
}

// scenarioSpec is what runScenario runs.
type scenarioSpec struct {
	key, title, note string
	backends         []backendSpec
	configs          []string
	// needFlag is a backend flag the scenario needs ("" for none).
	needFlag string
}

// describe says which backends a scenario runs, for the report.
func (s scenarioSpec) describe() string {
	groups := map[string]int{}
	var order []string
	for _, b := range s.backends {
		k := strings.Join(b.args, " ")
		if b.slow {
			k += " (the slow one)"
		}
		if groups[k] == 0 {
			order = append(order, k)
		}
		groups[k]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d × `%s`", groups[k], k))
	}
	return strings.Join(parts, ", ")
}

// bench holds what every scenario shares.
type bench struct {
	bins   binaries
	consul string // the agent's HTTP address
	client *api.Client
	timing Timing
	logf   func(format string, args ...any)
}

// backendArgs are the flags every backend gets: registered in Consul,
// reporting every ReportInterval over LoadWindow, sized for 8 calls at once
// (utilization = calls in flight / 8).
func (b *bench) backendArgs(svc string) []string {
	return []string{"-consul", b.consul, "-service", svc, "-listen", "127.0.0.1:0",
		"-check-interval", "1s", "-drain-delay", "100ms", "-shutdown-timeout", "3s", "-log-level", "warn",
		"-orca-min-interval", b.timing.ReportInterval.String(), "-load-window", b.timing.LoadWindow.String(),
		"-capacity", "8"}
}

// runScenario starts the scenario's backends, opens every configuration
// on them, measures the configurations in interleaved rounds, and stops it
// all. It blocks; a failure of one configuration is recorded in its Run
// and the others still run.
func (b *bench) runScenario(ctx context.Context, spec scenarioSpec) Scenario {
	sc := Scenario{Key: spec.key, Title: spec.title, Note: spec.note, Backends: spec.describe()}
	if spec.needFlag != "" && !b.bins.hasBackendFlag(spec.needFlag) {
		sc.Skipped = fmt.Sprintf("cmd/backend has no -%s flag in this checkout", spec.needFlag)
		b.logf("%s: skipped: %s", spec.key, sc.Skipped)
		return sc
	}
	svc := "bench-" + spec.key
	var procs []*process
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	slowID := ""
	for _, bs := range spec.backends {
		p, err := start(ctx, b.bins.backend, append(b.backendArgs(svc), bs.args...)...)
		if err != nil {
			sc.Skipped = "starting a backend: " + err.Error()
			return sc
		}
		procs = append(procs, p)
		if bs.slow {
			slowID = p.name
		}
	}
	addrs, err := b.waitPassing(ctx, svc, len(spec.backends))
	if err != nil {
		sc.Skipped = err.Error()
		return sc
	}
	var all, fast []string
	for _, p := range procs {
		all = append(all, addrs[p.name])
		if p.name != slowID {
			fast = append(fast, addrs[p.name])
		}
	}
	// Dial every configuration first and keep it open, then measure
	// them in interleaved rounds (A B C D, A B C D), so that a change in
	// the machine's load during the run falls on all of them alike.
	// One lbserver per policy, shared by the grpclb and the xDS
	// configurations of that policy (a replica serves both on one port).
	lbs := &lbservers{b: b, procs: map[string]*process{}}
	defer lbs.stop()
	type active struct {
		cfg  string
		call loadgen.Call
		stop func()
		res  loadgen.Result
		err  string
	}
	var cfgs []*active
	defer func() {
		for _, a := range cfgs {
			if a.stop != nil {
				a.stop()
			}
		}
	}()
	for _, cfg := range spec.configs {
		a := &active{cfg: cfg, res: loadgen.Result{Calls: map[string]int{}, Failures: map[codes.Code]int{}}}
		cfgs = append(cfgs, a)
		call, stop, err := b.open(ctx, lbs, svc, cfg, all, fast)
		if err != nil {
			a.err = err.Error()
			b.logf("%s: %s: %s", spec.key, cfg, a.err)
			continue
		}
		a.call, a.stop = call, stop
	}
	t := b.timing
	rounds := max(1, t.Rounds)
	perRound := t.Window / time.Duration(rounds)
	bound := func(d time.Duration) int { return max(1, int(d.Seconds()*maxCallRate)) }
	for r := range rounds {
		for _, a := range cfgs {
			if a.call == nil || ctx.Err() != nil {
				continue
			}
			warm := t.Rewarm
			if r == 0 {
				warm = t.Warmup
			}
			b.logf("%s: %s: round %d of %d: warm-up %v, then %v measured", spec.key, a.cfg, r+1, rounds, warm, perRound)
			loadgen.ClosedLoop(ctx, t.Workers, warm, bound(warm), a.call)
			a.res.Add(loadgen.ClosedLoop(ctx, t.Workers, perRound, bound(perRound), a.call))
		}
	}
	for _, a := range cfgs {
		r := Run{Config: a.cfg, SlowShare: -1, Err: a.err}
		if ctx.Err() != nil && r.Err == "" {
			r.Err = ctx.Err().Error()
		}
		if r.Err == "" {
			r = summarize(a.cfg, a.res, slowID)
		}
		if r.Err != "" {
			b.logf("%s: %s: %s", spec.key, a.cfg, r.Err)
		} else {
			share := ""
			if r.SlowShare >= 0 {
				share = fmt.Sprintf(", slow backend %.1f%% of calls", 100*r.SlowShare)
			}
			b.logf("%s: %s: %.0f calls/s, p50 %.2f ms, p90 %.2f ms, p99 %.2f ms%s",
				spec.key, a.cfg, r.Rate, r.P50Ms, r.P90Ms, r.P99Ms, share)
		}
		sc.Runs = append(sc.Runs, r)
	}
	return sc
}

// waitPassing waits until Consul reports n passing instances of svc and
// returns their addresses by service ID.
func (b *bench) waitPassing(ctx context.Context, svc string, n int) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, passingTimeout)
	defer cancel()
	for {
		entries, _, err := b.client.Health().Service(svc, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil && len(entries) == n {
			addrs := map[string]string{}
			for _, e := range entries {
				addrs[e.Service.ID] = fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)
			}
			return addrs, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %d passing instances of %s: %w (last: %d, %v)", n, svc, ctx.Err(), len(entries), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lbservers are the lbserver processes of one scenario, one per policy,
// started on first use. Used by the scenario's goroutine only.
type lbservers struct {
	b     *bench
	procs map[string]*process // by policy
}

// get returns the lbserver of policy, starting it if need be.
func (l *lbservers) get(ctx context.Context, policy string) (*process, error) {
	if p := l.procs[policy]; p != nil {
		return p, nil
	}
	p, err := start(ctx, l.b.bins.lbserver, "-listen", "127.0.0.1:0", "-consul", l.b.consul, "-policy", policy,
		"-load-report-interval", l.b.timing.ReportInterval.String(), "-load-blackout", l.b.timing.Blackout.String(),
		"-client-stats-interval", "1s", "-shutdown-timeout", "3s", "-log-level", "warn")
	if err != nil {
		return nil, err
	}
	l.procs[policy] = p
	return p, nil
}

// stop stops every lbserver started.
func (l *lbservers) stop() {
	for _, p := range l.procs {
		p.stop()
	}
}

// open readies one configuration: for the Lookaside ones it starts the
// lbserver of its policy unless lbs has it already, it dials, and it
// waits until every backend the configuration should use has answered.
// It returns the call to load it with and a function that closes the
// connection.
func (b *bench) open(ctx context.Context, lbs *lbservers, svc, cfg string, all, fast []string) (loadgen.Call, func(), error) {
	cc, stop, want, err := b.dial(ctx, lbs, svc, cfg, all, fast)
	if err != nil {
		return nil, nil, err
	}
	c := userpb.NewUserClient(cc)
	call := func(ctx context.Context) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		r, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 2})
		if err != nil {
			return "", err
		}
		return r.BackendId, nil
	}
	if err := waitSeen(ctx, call, want); err != nil {
		stop()
		return nil, nil, err
	}
	return call, stop, nil
}

// summarize turns the measured calls of configuration cfg into its Run.
func summarize(cfg string, res loadgen.Result, slowID string) Run {
	run := Run{Config: cfg, SlowShare: -1}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	run.Calls = res.Total()
	for _, n := range res.Failures {
		run.Failures += n
	}
	run.Seconds = res.Elapsed.Seconds()
	run.Rate = res.Rate()
	run.MeanMs = ms(res.Mean())
	run.P50Ms, run.P90Ms, run.P99Ms = ms(res.Percentile(0.5)), ms(res.Percentile(0.9)), ms(res.Percentile(0.99))
	if slowID != "" {
		run.SlowShare = res.Share(slowID)
	}
	lat, share := res.CDF(cdfPoints)
	for i := range lat {
		run.CDFMs = append(run.CDFMs, ms(lat[i]))
		run.CDFShare = append(run.CDFShare, share[i])
	}
	if run.Calls == 0 {
		run.Err = fmt.Sprintf("no call succeeded (failures by code: %v)", res.Failures)
	}
	return run
}

var schemes atomic.Uint64

// lookasidePolicy is the lbserver -policy of each Lookaside configuration.
var lookasidePolicy = map[string]string{
	cfgRR: "round_robin", cfgLL: "least_load",
	cfgXDSRR: "round_robin", cfgXDSLL: "least_load",
}

// dial returns a connection for configuration cfg, a function that closes
// it, and how many distinct backends its calls should reach. The
// Lookaside configurations get their lbserver from lbs.
func (b *bench) dial(ctx context.Context, lbs *lbservers, svc, cfg string, all, fast []string) (*grpc.ClientConn, func(), int, error) {
	switch cfg {
	case cfgRR, cfgLL:
		p, err := lbs.get(ctx, lookasidePolicy[cfg])
		if err != nil {
			return nil, nil, 0, err
		}
		cc, _, err := lbdial.Dial(lbdial.Options{Target: svc + ":50051", Balancers: []string{p.addr}})
		if err != nil {
			return nil, nil, 0, err
		}
		return cc, func() { cc.Close() }, len(all), nil
	case cfgXDSRR, cfgXDSLL:
		// What a user's grpc-go client does for xds:///svc, with the
		// bootstrap `lbserver xds-bootstrap` prints, given to this
		// connection alone (GRPC_XDS_BOOTSTRAP would be the process's).
		p, err := lbs.get(ctx, lookasidePolicy[cfg])
		if err != nil {
			return nil, nil, 0, err
		}
		boot, err := xds.Bootstrap(xds.BootstrapOptions{Server: p.addr, NodeID: "bench-" + cfg})
		if err != nil {
			return nil, nil, 0, err
		}
		rb, err := grpcxds.NewXDSResolverWithConfigForTesting(boot)
		if err != nil {
			return nil, nil, 0, err
		}
		cc, err := grpc.NewClient("xds:///"+svc, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, 0, err
		}
		return cc, func() { cc.Close() }, len(all), nil
	case cfgA58:
		// gRFC A58 with out-of-band ORCA, the same report timing as the
		// balancer's: reports every ReportInterval, a blackout, weights
		// recomputed every WeightUpdate.
		sc := fmt.Sprintf(`{"loadBalancingConfig":[{"weighted_round_robin":{"enableOobLoadReport":true,"oobReportingPeriod":"%gs","blackoutPeriod":"%gs","weightUpdatePeriod":"%gs"}}]}`,
			b.timing.ReportInterval.Seconds(), b.timing.Blackout.Seconds(), b.timing.WeightUpdate.Seconds())
		return directDial(svc, all, sc)
	case cfgOracle:
		return directDial(svc, fast, `{"loadBalancingConfig":[{"round_robin":{}}]}`)
	case cfgDirect:
		return directDial(svc, all, `{"loadBalancingConfig":[{"round_robin":{}}]}`)
	}
	return nil, nil, 0, fmt.Errorf("unknown configuration %q", cfg)
}

// directDial dials addrs with no balancer, through a manual resolver,
// balanced on the client by the service config sc.
func directDial(svc string, addrs []string, sc string) (*grpc.ClientConn, func(), int, error) {
	r := manual.NewBuilderWithScheme(fmt.Sprintf("bench-%d", schemes.Add(1)))
	st := resolver.State{}
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(st)
	cc, err := grpc.NewClient(r.Scheme()+":///"+svc, grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		return nil, nil, 0, err
	}
	return cc, func() { cc.Close() }, len(addrs), nil
}

// waitSeen calls until want distinct backends have answered, bounded by
// seenTimeout.
func waitSeen(ctx context.Context, call loadgen.Call, want int) error {
	ctx, cancel := context.WithTimeout(ctx, seenTimeout)
	defer cancel()
	seen := map[string]bool{}
	var last error
	for len(seen) < want {
		id, err := call(ctx)
		if err == nil {
			seen[id] = true
			continue
		}
		last = err
		if ctx.Err() != nil {
			ids := slices.Sorted(maps.Keys(seen))
			return fmt.Errorf("only %d of %d backends answered within %v (%v); last error: %w", len(seen), want, seenTimeout, ids, errors.Join(last, ctx.Err()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
