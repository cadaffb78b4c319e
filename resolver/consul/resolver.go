package consul

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	grpclbstate "google.golang.org/grpc/balancer/grpclb/state"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/lookaside-lb/lookaside/internal/clock"
	"github.com/lookaside-lb/lookaside/internal/consulwatch"
)

// listKind says which list a watch loop keeps.
type listKind int

const (
	instanceList listKind = iota // the target service's instances
	balancerList                 // the Lookaside replicas
)

func (k listKind) String() string {
	if k == balancerList {
		return "balancers"
	}
	return "instances"
}

// result is what a watch loop sends to the resolver's run loop: a new list,
// or the error of a failed fetch.
type result struct {
	kind  listKind
	addrs []resolver.Address // read-only once sent
	err   error
}

// consulResolver is one channel's resolver. It runs three goroutines, all
// started by start and ended by Close: one watch loop per list and the run
// loop, which alone talks to the channel.
type consulResolver struct {
	// Read-only after Build.
	cc         resolver.ClientConn
	target     Target
	health     healthClient
	closeConns func()
	sc         *serviceconfig.ParseResult // nil: no service config in the state
	tune       tuning
	log        *slog.Logger
	monitor    *consulwatch.Monitor // shared by the two watch loops
	lbSeed     uint64               // orders the balancer addresses of this resolver
	instances  *watcher
	balancers  *watcher // nil with the LB off
	results    chan result
	ctx        context.Context
	cancel     context.CancelFunc

	wg        sync.WaitGroup
	closeOnce sync.Once
}

var _ resolver.Resolver = (*consulResolver)(nil)

func (r *consulResolver) start() {
	loops := []func(){func() { r.instances.run(r.ctx) }, r.run}
	if r.balancers != nil {
		loops = append(loops, func() { r.balancers.run(r.ctx) })
	}
	r.wg.Add(len(loops))
	for _, loop := range loops {
		go func() {
			defer r.wg.Done()
			loop()
		}()
	}
}

// ResolveNow does nothing: both lists are watched all the time, and
// re-resolution after a rejected state has its own backoff. Safe for
// concurrent use.
func (r *consulResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the watch loops and the run loop, waits for them, and closes
// its connections to Consul. It blocks until a request in flight has
// seen its context cancelled (promptly). Safe to call more than once.
func (r *consulResolver) Close() {
	r.closeOnce.Do(func() {
		r.cancel()
		r.wg.Wait()
		r.closeConns()
	})
}

// run merges the two lists into states and sends them to the channel until
// ctx is done. It owns every field it uses below; nothing else calls the
// channel.
func (r *consulResolver) run() {
	var (
		instances, balancers []resolver.Address
		haveInstances        bool               // the instance loop has answered
		haveBalancers        bool               // the balancer loop has answered
		balancersFailed      bool               // the balancer loop failed before any answer
		accepted             bool               // the channel accepted the last state sent
		sentInst, sentBal    []resolver.Address // the lists of that state
		rejections           int                // consecutive rejected states
		retry                *time.Timer
		retryC               <-chan time.Time
	)
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-retryC:
			// Re-resolve: both loops fetch afresh and send what they get,
			// changed or not, which sends a state again.
			retryC = nil
			r.instances.kick()
			if r.balancers != nil {
				r.balancers.kick()
			}
			continue
		case res := <-r.results:
			switch {
			case res.kind == instanceList && res.err == nil:
				instances, haveInstances = res.addrs, true
			case res.kind == instanceList:
				if !haveInstances {
					// Nothing to keep: tell the channel why, so RPCs fail
					// with the cause rather than wait.
					r.cc.ReportError(res.err)
				}
				continue
			case res.err == nil:
				balancers, haveBalancers = res.addrs, true
			case haveBalancers || balancersFailed:
				continue // keep the last list of balancers
			default:
				// No balancer list yet: do not hold the instances back.
				balancersFailed = true
			}
		}
		if !haveInstances || (r.balancers != nil && !haveBalancers && !balancersFailed) {
			continue // the first state waits for both loops
		}
		if accepted && slices.Equal(instances, sentInst) && slices.Equal(balancers, sentBal) {
			continue
		}
		err := r.cc.UpdateState(r.state(instances, balancers))
		sentInst, sentBal = instances, balancers
		if err == nil {
			if !accepted && rejections > 0 {
				r.log.Info("the channel accepted the state", "instances", len(instances), "balancers", len(balancers))
			}
			accepted, rejections, retryC = true, 0, nil
			continue
		}
		// The channel rejected the state (an empty address list, say):
		// report it and re-resolve after a backoff.
		accepted = false
		delay := backoff(r.tune.backoffBase, r.target.MaxBackoff, rejections)
		rejections++
		r.log.Warn("the channel rejected the state; re-resolving",
			"error", err, "instances", len(instances), "balancers", len(balancers), "rejections", rejections, "retry_in", delay)
		r.cc.ReportError(fmt.Errorf("consul: the channel rejected %d instances of %q and %d balancers: %w",
			len(instances), r.target.Service, len(balancers), err))
		if retry == nil {
			retry = time.NewTimer(delay)
		} else {
			retry.Reset(delay)
		}
		retryC = retry.C
	}
}

// state builds the resolver state from the two lists.
func (r *consulResolver) state(instances, balancers []resolver.Address) resolver.State {
	st := resolver.State{Addresses: instances, ServiceConfig: r.sc}
	if r.balancers != nil {
		st = grpclbstate.Set(st, &grpclbstate.State{BalancerAddresses: balancers})
	}
	return st
}

// backoff returns the delay after failures earlier consecutive failures:
// base doubled that many times, capped at max, times a random factor in
// [0.8, 1.2).
func backoff(base, max time.Duration, failures int) time.Duration {
	return clock.Backoff(base, max, failures, clock.RandFloat())
}
