package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"
)

// Bounds of the propagation measurement.
const (
	propOpenTimeout   = 60 * time.Second // every stream has its first list
	propChangeTimeout = 20 * time.Second // every stream has the next one
	propInstances     = 3
	propDialers       = 16
)

// Propagation is the time from one Consul change until each of Clients
// BalanceLoad streams, each on a connection of its own, got its next list.
type Propagation struct {
	Clients int
	P50Ms   float64
	P99Ms   float64
	MaxMs   float64
	// Err, if set, says why there are no figures.
	Err string
}

// runPropagation measures, for each count, one change (an instance added
// to a service of propInstances) reaching count streams of an lbserver
// process. The instances are registered with the agent directly, with a
// passing TTL check: nobody dials them. It blocks until done.
func (b *bench) runPropagation(ctx context.Context, counts []int) []Propagation {
	svc := "bench-propagation"
	agent := b.client.Agent()
	register := func(i int) error {
		id := svc + "-" + strconv.Itoa(i)
		return agent.ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: svc, Address: "127.0.0.1", Port: 20000 + i,
			Check: &api.AgentServiceCheck{CheckID: id + "-ttl", TTL: "10m", Status: api.HealthPassing},
		})
	}
	deregister := func(i int) { agent.ServiceDeregister(svc + "-" + strconv.Itoa(i)) }
	var out []Propagation
	fail := func(err error) []Propagation {
		for _, n := range counts[len(out):] {
			out = append(out, Propagation{Clients: n, Err: err.Error()})
		}
		return out
	}
	for i := range propInstances {
		if err := register(i); err != nil {
			return fail(err)
		}
		defer deregister(i)
	}
	if _, err := b.waitPassing(ctx, svc, propInstances); err != nil {
		return fail(err)
	}
	slack := strconv.Itoa(2*slices.Max(counts) + 100)
	p, err := start(ctx, b.bins.lbserver, "-listen", "127.0.0.1:0", "-consul", b.consul, "-policy", "round_robin",
		"-max-conns", slack, "-max-conns-per-ip", slack, "-max-streams", slack, "-max-streams-per-ip", slack,
		"-max-stream-rate-per-ip", "0", "-shutdown-timeout", "3s", "-log-level", "warn")
	if err != nil {
		return fail(err)
	}
	defer p.stop()
	for k, n := range counts {
		b.logf("propagation: %d clients", n)
		extra := propInstances + k
		pr := b.propagateOnce(ctx, p.addr, svc, n, propInstances, func() error { return register(extra) })
		deregister(extra)
		if pr.Err != "" {
			b.logf("propagation: %d clients: %s", n, pr.Err)
		} else {
			b.logf("propagation: %d clients: p50 %.1f ms, p99 %.1f ms, max %.1f ms", n, pr.P50Ms, pr.P99Ms, pr.MaxMs)
		}
		out = append(out, pr)
		// Let the removal reach every stream before the next round opens.
		if _, err := b.waitPassing(ctx, svc, propInstances); err != nil {
			return fail(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return out
}

// propStream is one client of the propagation measurement.
type propStream struct {
	cc     *grpc.ClientConn
	stream lbpb.LoadBalancer_BalanceLoadClient
	first  chan struct{} // closed at the first list of have entries
	next   chan time.Time
}

// propagateOnce opens n streams, waits until each has a list of have
// entries, makes the change and returns how long each took to get a list
// of another length.
func (b *bench) propagateOnce(ctx context.Context, lbAddr, svc string, n, have int, change func() error) Propagation {
	pr := Propagation{Clients: n}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	streams := make([]*propStream, n)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		for _, s := range streams {
			if s != nil {
				s.cc.Close()
			}
		}
		wg.Wait()
	}()
	// Open the streams, propDialers at a time.
	sem := make(chan struct{}, propDialers)
	var mu sync.Mutex
	var openErr error
	for i := range streams {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s, err := openPropStream(ctx, lbAddr, svc)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				openErr = errors.Join(openErr, err)
				return
			}
			streams[i] = s
		})
	}
	for range propDialers {
		sem <- struct{}{}
	}
	if openErr != nil {
		pr.Err = fmt.Sprintf("opening %d streams: %v", n, openErr)
		return pr
	}
	// One receiver per stream: it signals the first list of have
	// entries, then the time of the first list of another length.
	for _, s := range streams {
		wg.Go(func() {
			seenFirst := false
			for {
				m, err := s.stream.Recv()
				if err != nil {
					return
				}
				l := m.GetServerList()
				if l == nil {
					continue
				}
				switch {
				case !seenFirst && len(l.Servers) == have:
					seenFirst = true
					close(s.first)
				case seenFirst && len(l.Servers) != have:
					s.next <- time.Now()
					return
				}
			}
		})
	}
	deadline := time.After(propOpenTimeout)
	for _, s := range streams {
		select {
		case <-s.first:
		case <-deadline:
			pr.Err = fmt.Sprintf("not every stream got its first list within %v", propOpenTimeout)
			return pr
		case <-ctx.Done():
			pr.Err = ctx.Err().Error()
			return pr
		}
	}
	time.Sleep(time.Second) // settle: no list is on its way
	start := time.Now()
	if err := change(); err != nil {
		pr.Err = err.Error()
		return pr
	}
	var took []time.Duration
	deadline = time.After(propChangeTimeout)
	for _, s := range streams {
		select {
		case at := <-s.next:
			took = append(took, at.Sub(start))
		case <-deadline:
			pr.Err = fmt.Sprintf("%d of %d streams got the change within %v", len(took), n, propChangeTimeout)
			return pr
		}
	}
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	pct := func(p float64) time.Duration { return took[min(len(took)-1, int(p*float64(len(took))))] }
	pr.P50Ms, pr.P99Ms, pr.MaxMs = ms(pct(0.5)), ms(pct(0.99)), ms(took[len(took)-1])
	return pr
}

// openPropStream dials lbAddr on a connection of its own and starts a
// BalanceLoad stream for svc.
func openPropStream(ctx context.Context, lbAddr, svc string) (*propStream, error) {
	cc, err := grpc.NewClient(lbAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	st, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err == nil {
		err = st.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
			InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: svc + ":50051"}}})
	}
	if err != nil {
		cc.Close()
		return nil, err
	}
	return &propStream{cc: cc, stream: st, first: make(chan struct{}), next: make(chan time.Time, 1)}, nil
}
