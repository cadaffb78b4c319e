// Command consul-resolver is a client that dials a Consul service the way
// programs using github.com/mbobakov/grpc-consul-resolver do, with that
// import replaced by Lookaside's resolver, and shows who balanced its calls.
//
// Run Consul, a few backends tagged srv, and a balancer that registers
// itself in Consul (as service "lookaside"), then this program:
//
//	consul agent -dev &
//	go run ./cmd/backend -consul 127.0.0.1:8500 -service user-srv -tags srv &   # two or three times
//	go run ./cmd/lbserver -listen 127.0.0.1:7000 -consul 127.0.0.1:8500 -register &
//	go run ./examples/consul-resolver
//
// Each call reports the backend that served it and the lb-token it
// received: a token means the call followed a Lookaside list; none means
// the channel balanced by itself, over the instances the resolver found
// (add "&lb=off" to the target, or stop the balancer, to see it).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	_ "github.com/lookaside-lb/lookaside/resolver/consul" // was: _ "github.com/mbobakov/grpc-consul-resolver"
)

func main() {
	target := flag.String("target", "consul://127.0.0.1:8500/user-srv?wait=14s&tag=srv", "dial target (see resolver/consul for the parameters)")
	calls := flag.Int("calls", 30, "number of calls")
	every := flag.Duration("every", 100*time.Millisecond, "pause between calls")
	flag.Parse()
	if err := run(*target, *calls, *every); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(target string, calls int, every time.Duration) error {
	// The program's own policy: what the channel uses when Lookaside is
	// off. The resolver's service config (grpclb) takes precedence.
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
	if err != nil {
		return err
	}
	defer cc.Close()
	client := userpb.NewUserClient(cc)

	type count struct{ calls, balanced int }
	perBackend := map[string]*count{}
	for i := range calls {
		if i > 0 {
			time.Sleep(every)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := client.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 2})
		cancel()
		if err != nil {
			return fmt.Errorf("call %d: %w", i+1, err)
		}
		c := perBackend[r.BackendId]
		if c == nil {
			c = &count{}
			perBackend[r.BackendId] = c
		}
		c.calls++
		if r.LbToken != "" {
			c.balanced++
		}
	}

	fmt.Printf("%d calls to %s\n\n", calls, target)
	fmt.Printf("%30s  %5s  %s\n", "backend", "calls", "with an lb-token (balanced by Lookaside)")
	ids := make([]string, 0, len(perBackend))
	for id := range perBackend {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		c := perBackend[id]
		fmt.Printf("%30s  %5d  %d\n", id, c.calls, c.balanced)
	}
	return nil
}
