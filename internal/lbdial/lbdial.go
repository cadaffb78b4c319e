// Package lbdial dials a service through Lookaside balancers with grpc-go's
// grpclb policy, the way a user's program would when it knows the balancer
// addresses (a manual resolver carrying grpclb state). The demo and the
// end-to-end tests use it; clients that find balancers through DNS or Consul
// need none of it.
package lbdial

import (
	"encoding/json"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/grpclb" // registers the grpclb policy
	grpclbstate "google.golang.org/grpc/balancer/grpclb/state"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Options say how to dial.
type Options struct {
	// Target is the name the client sends to the balancer, as a dial
	// target's host and port ("user-srv:50051").
	Target string
	// Balancers are the balancers' addresses ("127.0.0.1:7000").
	Balancers []string
	// Fallback are backend addresses used while no balancer answers.
	Fallback []string
	// PickFirst selects grpclb's pick_first child policy instead of
	// round_robin.
	PickFirst bool
	// ServiceName, if set, is sent to the balancer instead of Target.
	ServiceName string
	// DialOptions are added after the defaults (insecure credentials).
	DialOptions []grpc.DialOption
}

var seq atomic.Uint64

// ServiceConfig returns the service config JSON that selects grpclb.
func ServiceConfig(pickFirst bool, serviceName string) string {
	cfg := map[string]any{}
	if pickFirst {
		cfg["childPolicy"] = []map[string]any{{"pick_first": map[string]any{}}}
	}
	if serviceName != "" {
		cfg["serviceName"] = serviceName
	}
	b, _ := json.Marshal(map[string]any{"loadBalancingConfig": []map[string]any{{"grpclb": cfg}}})
	return string(b)
}

// State returns the resolver state that points grpclb at balancers, with
// fallback as the backend addresses.
func State(balancers, fallback []string) resolver.State {
	st := resolver.State{}
	for _, a := range fallback {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	lbs := &grpclbstate.State{}
	for _, a := range balancers {
		lbs.BalancerAddresses = append(lbs.BalancerAddresses, resolver.Address{Addr: a, ServerName: "lookaside"})
	}
	return grpclbstate.Set(st, lbs)
}

// Dial returns a client connection to o.Target balanced by the balancers,
// and the manual resolver behind it, whose UpdateState changes the balancer
// and fallback addresses (pass State's result).
func Dial(o Options) (*grpc.ClientConn, *manual.Resolver, error) {
	r := manual.NewBuilderWithScheme(fmt.Sprintf("lookaside-%d", seq.Add(1)))
	r.InitialState(State(o.Balancers, o.Fallback))
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(ServiceConfig(o.PickFirst, o.ServiceName)),
	}, o.DialOptions...)
	cc, err := grpc.NewClient(r.Scheme()+":///"+o.Target, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("lbdial: %w", err)
	}
	return cc, r, nil
}
