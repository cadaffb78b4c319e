// Command demo shows Lookaside end to end on one machine: it starts a Consul
// dev agent (built from source by scripts/consul.sh), three example
// backends that register in it with gRPC health checks, the balancer
// watching Consul, and a grpc-go client dialing with the grpclb policy;
// then it makes calls and prints how they were spread. Everything runs on
// loopback and is stopped before it exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/policy"
	_ "github.com/lookaside-lb/lookaside/policy/all"
	"github.com/lookaside-lb/lookaside/policy/leastconn"
	"github.com/lookaside-lb/lookaside/policy/sourcehash"
	"github.com/lookaside-lb/lookaside/policy/weightedrandom"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"github.com/lookaside-lb/lookaside/replica"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		}
		os.Exit(2)
	}
}

type options struct {
	policy    string
	calls     int
	backends  int
	weights   string
	clients   int
	pickFirst bool
	verbose   bool
	serve     bool
}

// weighted reports whether a policy balances by Consul weight.
func weighted(policyName string) bool {
	return policyName == weightedroundrobin.Name || policyName == weightedrandom.Name ||
		policyName == sourcehash.Name || policyName == leastconn.Name
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.policy, "policy", "round_robin", "balancing policy: "+strings.Join(policy.Names(), ", "))
	fs.IntVar(&o.calls, "calls", 300, "calls to make in all, spread over the clients (1 to 100000)")
	fs.IntVar(&o.backends, "backends", 3, "backends to start (1 to 20)")
	fs.StringVar(&o.weights, "weights", "", "comma-separated Consul weights of the backends (default 1,2,3,… for weighted policies, else all 1)")
	fs.IntVar(&o.clients, "clients", 1, "grpc-go clients, each with its own balancer stream (1 to 200)")
	fs.BoolVar(&o.pickFirst, "pick-first", false, "use grpclb's pick_first child policy in the clients")
	fs.BoolVar(&o.verbose, "v", false, "show the components' logs")
	fs.BoolVar(&o.serve, "serve", false, "after the calls, keep everything running until Ctrl-C, so that the status page can be opened")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := policy.Build(o.policy, policy.DefaultOptions()); err != nil {
		return err
	}
	if o.calls < 1 || o.calls > 100000 || o.backends < 1 || o.backends > 20 || o.clients < 1 || o.clients > 200 {
		return fmt.Errorf("-calls must be in [1, 100000], -backends in [1, 20] and -clients in [1, 200]")
	}
	weights, err := parseWeights(o.weights, o.backends, o.policy)
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	if !o.serve {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
	}
	child := "round_robin"
	if o.pickFirst {
		child = "pick_first"
	}
	fmt.Fprintf(stdout, "Lookaside demo: policy %s, %d backends, %d client(s) with grpclb child %s, %d calls\n\n",
		o.policy, o.backends, o.clients, child, o.calls)

	agent, err := consultest.Run(ctx, consultest.Options{})
	if err != nil {
		return fmt.Errorf("starting Consul: %w", err)
	}
	defer agent.Stop()
	fmt.Fprintf(stdout, "  consul    %s (dev agent)\n", agent.HTTPAddr())

	const service = "user-srv"
	weightOf := map[string]int{}
	var ids []string
	for i := range o.backends {
		cfg := backend.DefaultConfig()
		cfg.Service = service
		cfg.Consul = agent.Client()
		cfg.Weight = weights[i]
		cfg.CheckInterval = time.Second
		cfg.DrainDelay = 200 * time.Millisecond
		cfg.Logger = log
		b, err := backend.New(cfg)
		if err != nil {
			return err
		}
		bctx, bcancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- b.Serve(bctx) }()
		defer func() { bcancel(); <-done }()
		select {
		case <-b.Ready():
		case err := <-done:
			return fmt.Errorf("backend %s: %w", b.ID(), err)
		case <-ctx.Done():
			return ctx.Err()
		}
		ids = append(ids, b.ID())
		weightOf[b.ID()] = weights[i]
		fmt.Fprintf(stdout, "  backend   %s registered as %s, weight %d\n", b.Addr(), b.ID(), weights[i])
	}
	if err := waitPassing(ctx, agent, service, o.backends); err != nil {
		return err
	}

	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Consul.Address = agent.HTTPAddr()
	cfg.Balancer.Policy = o.policy
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = config.Duration(5 * time.Second)
	lctx, lcancel := context.WithCancel(context.Background())
	rep, lb, ldone, err := replica.Start(lctx, cfg, replica.Options{Logger: log})
	if err != nil {
		lcancel()
		return fmt.Errorf("balancer: %w", err)
	}
	defer func() { lcancel(); <-ldone }()
	srv := rep.Server()
	fmt.Fprintf(stdout, "  balancer  %s (grpclb, watching Consul)\n", lb.Balancer)
	fmt.Fprintf(stdout, "  admin     http://%s/ (status page; /metrics)\n", lb.Admin)

	target := service + ":50051"
	fmt.Fprintf(stdout, "  clients   dial %q with grpclb\n\n", target)
	// Every client keeps its balancer stream open while the others start,
	// as real clients do; then each makes its share of the calls.
	var clients []*demoClient
	defer func() {
		for _, c := range clients {
			c.cc.Close()
		}
	}()
	for i := range o.clients {
		c, err := newClient(ctx, lb.Balancer.String(), target, o.pickFirst)
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		clients = append(clients, c)
	}
	counts := map[string]int{}
	tokens := 0
	start := time.Now()
	for i, c := range clients {
		n := o.calls / o.clients
		if i < o.calls%o.clients {
			n++
		}
		for j := range n {
			r, err := call(ctx, c.user)
			if err != nil {
				return fmt.Errorf("client %d, call %d: %w", i, j, err)
			}
			counts[r.BackendId]++
			if r.LbToken != "" {
				tokens++
			}
		}
	}
	elapsed := time.Since(start)

	sort.Strings(ids)
	total := 0
	for _, w := range weightOf {
		total += w
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "backend\tweight\tcalls\tshare\ttarget\n")
	for _, id := range ids {
		target := 1 / float64(o.backends)
		if weighted(o.policy) {
			target = float64(weightOf[id]) / float64(total)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%5.1f%%\t%5.1f%%\n", id, weightOf[id], counts[id], 100*float64(counts[id])/float64(o.calls), 100*target)
	}
	tw.Flush()
	if o.clients == 1 && (o.pickFirst || o.policy == sourcehash.Name) {
		fmt.Fprintf(stdout, "\n(one client stays on one backend here; the target is the share over many clients: try -clients 100)\n")
	}
	fmt.Fprintf(stdout, "\n%d calls in %v, %d carried an lb-token; balancer: %d streams, %d lists sent\n",
		o.calls, elapsed.Round(time.Millisecond), tokens, srv.Stats().StreamsStarted, srv.Stats().ListsSent)
	if o.serve {
		fmt.Fprintf(stdout, "\nServing until Ctrl-C: open http://%s/ to see the status page.\n", lb.Admin)
		<-ctx.Done()
	}
	return nil
}

type demoClient struct {
	cc   *grpc.ClientConn
	user userpb.UserClient
}

// newClient dials through the balancer and waits until the client has its
// list (calls carry a token) and, for round_robin, until it has connected
// to the backends.
func newClient(ctx context.Context, lb, target string, pickFirst bool) (*demoClient, error) {
	cc, _, err := lbdial.Dial(lbdial.Options{Target: target, Balancers: []string{lb}, PickFirst: pickFirst})
	if err != nil {
		return nil, err
	}
	c := &demoClient{cc: cc, user: userpb.NewUserClient(cc)}
	deadline := time.Now().Add(10 * time.Second)
	for seen := map[string]bool{}; time.Now().Before(deadline); {
		r, err := call(ctx, c.user)
		if err != nil {
			cc.Close()
			return nil, err
		}
		if r.LbToken == "" {
			continue
		}
		if seen[r.BackendId] || pickFirst {
			break
		}
		seen[r.BackendId] = true
	}
	return c, nil
}

func parseWeights(spec string, n int, policyName string) ([]int, error) {
	out := make([]int, n)
	if spec == "" {
		for i := range out {
			out[i] = 1
			if weighted(policyName) {
				out[i] = i + 1
			}
		}
		return out, nil
	}
	parts := strings.Split(spec, ",")
	if len(parts) != n {
		return nil, fmt.Errorf("-weights has %d values for %d backends", len(parts), n)
	}
	for i, p := range parts {
		w, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || w < 1 || w > 1000 {
			return nil, fmt.Errorf("-weights: %q is not a whole number from 1 to 1000", p)
		}
		out[i] = w
	}
	return out, nil
}

func call(ctx context.Context, c userpb.UserClient) (*userpb.UserListResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 5})
}

func waitPassing(ctx context.Context, agent *consultest.Agent, service string, n int) error {
	for {
		entries, _, err := agent.Client().Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil && len(entries) == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d passing backends: %w", n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
