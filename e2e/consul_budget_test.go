package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/internal/consultest"
)

// TestConsulBudgetThousandServices watches 1,000 registered services
// through one Source against a Consul agent with its default limits (200
// HTTP connections per client IP): every service gets its first snapshot,
// a health change of 100 of them reaches publish within 1 s at p99, and
// this process never holds more than MaxConns connections to Consul.
func TestConsulBudgetThousandServices(t *testing.T) {
	const (
		services = 1000
		changed  = 100
		maxConns = consul.DefaultMaxConns
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, err := consultest.Run(ctx, consultest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()

	// One bounded client for everything this test sends, so that every
	// connection of the process to this agent is counted against maxConns.
	c, err := consul.NewClient(consul.ClientConfig{Address: a.HTTPAddr(), MaxConns: maxConns})
	if err != nil {
		t.Fatal(err)
	}
	var (
		peak    atomic.Int64
		sampled atomic.Int64
	)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for sampleCtx.Err() == nil {
			n, err := tcpConnsTo(os.Getpid(), a.HTTPAddr())
			if err == nil {
				sampled.Add(1)
				if int64(n) > peak.Load() {
					peak.Store(int64(n))
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() {
		stopSampling()
		sampler.Wait()
	}()

	name := func(i int) string { return fmt.Sprintf("budget-%04d", i) }
	start := time.Now()
	runParallel(t, services, 8, func(i int) error {
		return c.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: name(i), Name: name(i), Address: "127.0.0.1", Port: 10000 + i,
			Check: &api.AgentServiceCheck{CheckID: name(i) + "-ttl", TTL: "10m", Status: api.HealthPassing},
		})
	})
	t.Logf("registered %d services in %v", services, time.Since(start))

	cfg := consul.DefaultConfig()
	cfg.Client = consul.API(c)
	cfg.Logger = quietLogger()
	src, err := consul.New(cfg)
	if err != nil {
		t.Fatal(err)
	}

	type watchState struct {
		mu    sync.Mutex
		snaps []discovery.Snapshot // guarded by mu
		times []time.Time          // guarded by mu
	}
	states := make([]*watchState, services)
	watchCtx, stopWatches := context.WithCancel(ctx)
	var watches sync.WaitGroup
	defer func() {
		stopWatches()
		watches.Wait()
	}()
	start = time.Now()
	for i := range services {
		st := &watchState{}
		states[i] = st
		watches.Add(1)
		go func() {
			defer watches.Done()
			src.Watch(watchCtx, name(i), func(s discovery.Snapshot) {
				st.mu.Lock()
				st.snaps = append(st.snaps, s)
				st.times = append(st.times, time.Now())
				st.mu.Unlock()
			})
		}()
	}
	latest := func(i int) (discovery.Snapshot, time.Time, bool) {
		st := states[i]
		st.mu.Lock()
		defer st.mu.Unlock()
		if len(st.snaps) == 0 {
			return discovery.Snapshot{}, time.Time{}, false
		}
		return st.snaps[len(st.snaps)-1], st.times[len(st.times)-1], true
	}
	waitFor(t, time.Minute, "every service's first snapshot", func() bool {
		for i := range services {
			if s, _, ok := latest(i); !ok || len(s.Endpoints) != 1 {
				return false
			}
		}
		return true
	})
	t.Logf("all %d first snapshots, each with its instance, in %v", services, time.Since(start))

	// A health change of a subset: each must reach publish within 1 s at
	// p99.
	time.Sleep(500 * time.Millisecond) // let the first fetches settle
	sent := make([]time.Time, changed)
	for k := range changed {
		i := k * (services / changed)
		sent[k] = time.Now()
		if err := c.Agent().UpdateTTL(name(i)+"-ttl", "down", api.HealthCritical); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var delays []time.Duration
	waitFor(t, 30*time.Second, "every change published", func() bool {
		delays = delays[:0]
		for k := range changed {
			s, at, _ := latest(k * (services / changed))
			if len(s.Endpoints) != 0 {
				return false
			}
			delays = append(delays, at.Sub(sent[k]))
		}
		return true
	})
	slices.Sort(delays)
	p50, p99, worst := delays[len(delays)/2], delays[len(delays)*99/100-1], delays[len(delays)-1]
	t.Logf("health change to publish over %d services: p50 %v, p99 %v, max %v", changed, p50, p99, worst)
	if p99 > time.Second {
		t.Errorf("p99 change to publish %v, want at most 1s", p99)
	}
	// Services that did not change published nothing more.
	extra := 0
	for i := range services {
		if i%(services/changed) == 0 {
			continue
		}
		st := states[i]
		st.mu.Lock()
		if len(st.snaps) > 1 {
			extra++
		}
		st.mu.Unlock()
	}
	if extra > 0 {
		t.Errorf("%d unchanged services published again", extra)
	}

	stopSampling()
	sampler.Wait()
	t.Logf("connections to Consul from this process: peak %d over %d samples (MaxConns %d)", peak.Load(), sampled.Load(), maxConns)
	if peak.Load() > maxConns {
		t.Errorf("peak of %d connections to Consul, want at most %d", peak.Load(), maxConns)
	}
	if sampled.Load() < 10 {
		t.Errorf("only %d connection samples", sampled.Load())
	}

	// What one answer of the health-state long poll weighs.
	resp, err := http.Get("http://" + a.HTTPAddr() + "/v1/health/state/any")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one /v1/health/state/any answer for %d services: %d bytes", services, len(body))
}

// runParallel runs f(0..n-1) on workers goroutines and fails the test on the
// first error.
func runParallel(t *testing.T, n, workers int, f func(i int) error) {
	t.Helper()
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Value
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := first.Load(); err != nil {
		t.Fatal(err)
	}
}
