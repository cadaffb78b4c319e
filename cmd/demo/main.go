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
	"net"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/policy"
	_ "github.com/lookaside-lb/lookaside/policy/roundrobin"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
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
	pickFirst bool
	verbose   bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.policy, "policy", "round_robin", "balancing policy")
	fs.IntVar(&o.calls, "calls", 300, "calls the client makes (1 to 100000)")
	fs.IntVar(&o.backends, "backends", 3, "backends to start (1 to 20)")
	fs.BoolVar(&o.pickFirst, "pick-first", false, "use grpclb's pick_first child policy in the client")
	fs.BoolVar(&o.verbose, "v", false, "show the components' logs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := policy.Build(o.policy, policy.DefaultOptions()); err != nil {
		return err
	}
	if o.calls < 1 || o.calls > 100000 || o.backends < 1 || o.backends > 20 {
		return fmt.Errorf("-calls must be in [1, 100000] and -backends in [1, 20]")
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	fmt.Fprintf(stdout, "Lookaside demo: policy %s, %d backends, %d calls\n\n", o.policy, o.backends, o.calls)

	agent, err := consultest.Run(ctx, consultest.Options{})
	if err != nil {
		return fmt.Errorf("starting Consul: %w", err)
	}
	defer agent.Stop()
	fmt.Fprintf(stdout, "  consul    %s (dev agent)\n", agent.HTTPAddr())

	const service = "user-srv"
	var ids []string
	for range o.backends {
		cfg := backend.DefaultConfig()
		cfg.Service = service
		cfg.Consul = agent.Client()
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
		fmt.Fprintf(stdout, "  backend   %s registered as %s\n", b.Addr(), b.ID())
	}
	if err := waitPassing(ctx, agent, service, o.backends); err != nil {
		return err
	}

	ccfg := consul.DefaultConfig()
	ccfg.Client = agent.Client().Health()
	ccfg.Logger = log
	src, err := consul.New(ccfg)
	if err != nil {
		return err
	}
	lcfg := lbserver.DefaultConfig()
	lcfg.Source = src
	lcfg.Policy = o.policy
	lcfg.Logger = log
	srv, err := lbserver.New(lcfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	lctx, lcancel := context.WithCancel(context.Background())
	ldone := make(chan error, 1)
	go func() { ldone <- lbserver.Serve(lctx, lis, srv, lbserver.ServeOptions{ShutdownTimeout: 5 * time.Second}) }()
	defer func() { lcancel(); <-ldone }()
	fmt.Fprintf(stdout, "  balancer  %s (grpclb, watching Consul)\n", lis.Addr())

	target := service + ":50051"
	cc, _, err := lbdial.Dial(lbdial.Options{Target: target, Balancers: []string{lis.Addr().String()}, PickFirst: o.pickFirst})
	if err != nil {
		return err
	}
	defer cc.Close()
	child := "round_robin"
	if o.pickFirst {
		child = "pick_first"
	}
	fmt.Fprintf(stdout, "  client    dials %q with grpclb (child policy %s)\n\n", target, child)
	client := userpb.NewUserClient(cc)

	// Warm up: the client connects to each backend as the list arrives.
	warm := map[string]bool{}
	for deadline := time.Now().Add(10 * time.Second); len(warm) < o.backends && !o.pickFirst && time.Now().Before(deadline); {
		if r, err := call(ctx, client); err == nil {
			warm[r.BackendId] = true
		}
	}

	counts := map[string]int{}
	tokens := 0
	start := time.Now()
	for i := range o.calls {
		r, err := call(ctx, client)
		if err != nil {
			return fmt.Errorf("call %d: %w", i, err)
		}
		counts[r.BackendId]++
		if r.LbToken != "" {
			tokens++
		}
	}
	elapsed := time.Since(start)

	sort.Strings(ids)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "backend\tcalls\tshare\ttarget\t\n")
	for _, id := range ids {
		fmt.Fprintf(tw, "%s\t%d\t%.1f%%\t%.1f%%\t\n", id, counts[id], 100*float64(counts[id])/float64(o.calls), 100/float64(o.backends))
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\n%d calls in %v, %d carried an lb-token; balancer stats: %+v\n", o.calls, elapsed.Round(time.Millisecond), tokens, srv.Stats())
	return nil
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
