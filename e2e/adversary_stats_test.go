package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/lbserver"
)

// countingHandler counts log records at INFO and above, and drops them.
type countingHandler struct{ n *atomic.Int64 }

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// heapAlloc returns the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestAdversaryForgedClientStats: against a service rate-limited to 1,000
// calls/s that an honest user calls at about 200/s, one address
// (127.0.0.9) opens 51 BalanceLoad streams: one reports 2^40 calls started
// every 50 ms, the others flood reports carrying 300,000 distinct drop
// tokens in all. The honest user's calls all succeed and a list observer
// on the honest address sees no drop entry; the offered rate the balancer
// measures stays within the honest rate plus the stated bound for one
// address (0.5 × limit × (5 s + 1 s) / 5 s = 600 calls/s); the drop tokens
// are not kept; the heap, the log and the per-stream state return to
// their size before.
func TestAdversaryForgedClientStats(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	const limit = 1000.0
	svc := serviceName(t)
	startBackends(t, svc, 3)
	waitPassing(t, svc, 3)
	var logged atomic.Int64
	l := startLB(t, func(c *lbserver.Config) {
		c.Services = map[string]lbserver.ServiceSettings{svc: {RateLimit: limit}}
		c.Logger = slog.New(countingHandler{&logged})
	})
	srv := l.server()

	h := startHonest(t, l.addr, svc)
	// The observer: an honest stream whose lists must never carry a drop.
	obsCtx, stopObs := context.WithCancel(t.Context())
	defer stopObs()
	var obsLists, obsDrops atomic.Int64
	obsDone := make(chan struct{})
	{
		lbc := attackerConns(t, l.addr, "127.0.0.1", 1)[0]
		stream, err := lbc.BalanceLoad(obsCtx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(initial(svc + ":50051")); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(obsDone)
			for {
				resp, err := stream.Recv()
				if err != nil {
					return
				}
				if sl := resp.GetServerList(); sl != nil {
					obsLists.Add(1)
					for _, s := range sl.GetServers() {
						if s.GetDrop() {
							obsDrops.Add(1)
						}
					}
				}
			}
		}()
	}
	time.Sleep(3 * time.Second) // the honest rate is measured
	_, clientsBefore, _ := srv.ClientStats().Len()
	heapBefore := heapAlloc()
	logBefore := logged.Load()
	// The forged reports are built before the attack (and after the heap
	// is measured), so that building them does not take from the
	// balancer's share of the test process's CPU.
	forged := make([][]*lbpb.ClientStats, 50) // 50 streams × 6 reports × 1,000 distinct tokens
	for i := range forged {
		for j := range 6 {
			cs := &lbpb.ClientStats{NumCallsStarted: 100_000, NumCallsFinished: 100_000}
			for k := range 1000 {
				cs.CallsFinishedWithDrop = append(cs.CallsFinishedWithDrop, &lbpb.ClientStatsPerToken{
					LoadBalanceToken: fmt.Sprintf("forged-%d-%d-%d", i, j, k), NumCalls: 1 << 30})
			}
			forged[i] = append(forged[i], cs)
		}
	}
	offeredBefore, at0 := srv.ClientStats().Service(svc).Offered, time.Now()

	// The attack: 5 connections from one address, 51 streams, 12 s.
	conns := attackerConns(t, l.addr, "127.0.0.9", 5)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Second)
	defer cancel()
	var sent atomic.Int64
	stream := func(c lbpb.LoadBalancerClient, msgs func(send func(*lbpb.ClientStats) bool)) {
		s, err := c.BalanceLoad(ctx)
		if err != nil {
			return
		}
		if s.Send(initial(svc+":50051")) != nil {
			return
		}
		go func() { // read, so that flow control never holds the balancer
			for {
				if _, err := s.Recv(); err != nil {
					return
				}
			}
		}()
		msgs(func(cs *lbpb.ClientStats) bool {
			if s.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: cs}}) != nil {
				return false
			}
			sent.Add(1)
			return true
		})
		s.CloseSend()
	}
	var maxOffered float64 // calls/s over each 5 s, sampled every second
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		stream(conns[0], func(send func(*lbpb.ClientStats) bool) {
			for ctx.Err() == nil {
				if !send(&lbpb.ClientStats{NumCallsStarted: 1 << 40, NumCallsFinished: 1 << 40, NumCallsFinishedKnownReceived: 1 << 40}) {
					return
				}
				select {
				case <-tick.C:
				case <-ctx.Done():
				}
			}
		})
	})
	for i := range 50 {
		wg.Go(func() {
			stream(conns[i%len(conns)], func(send func(*lbpb.ClientStats) bool) {
				plain := &lbpb.ClientStats{NumCallsStarted: 100_000, NumCallsFinished: 100_000}
				for j := range 200 {
					cs := plain
					if j < len(forged[i]) {
						cs = forged[i][j]
					}
					if !send(cs) {
						return
					}
				}
				<-ctx.Done() // stay, so the address keeps its streams
			})
		})
	}
	var heapPeak uint64
	samples := []int64{offeredBefore}
	for ctx.Err() == nil {
		time.Sleep(time.Second)
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		heapPeak = max(heapPeak, m.HeapAlloc)
		samples = append(samples, srv.ClientStats().Service(svc).Offered)
		if n := len(samples); n > 5 {
			maxOffered = max(maxOffered, float64(samples[n-1]-samples[n-6])/5)
		}
	}
	wg.Wait()
	attack := time.Since(at0)
	offered := float64(srv.ClientStats().Service(svc).Offered-offeredBefore) / attack.Seconds()
	time.Sleep(2 * time.Second) // streams end, their state goes
	stopObs()
	<-obsDone
	r := h.finish()
	r.check(t, inProcessP99)

	stats := srv.Stats()
	cs := srv.ClientStats().Service(svc)
	_, clientsAfter, addrsAfter := srv.ClientStats().Len()
	heapAfter := heapAlloc()
	logLines := logged.Load() - logBefore
	t.Logf("attack: %d reports sent in %v by 51 streams from one address; %d counted as bad", sent.Load(), attack.Round(time.Millisecond), stats.BadClientStats)
	t.Logf("offered rate measured: %.0f calls/s over the attack, at most %.0f over 5 s (honest user: %d calls)", offered, maxOffered, r.Calls)
	t.Logf("observer: %d lists, %d drop entries; drop tokens kept: %v", obsLists.Load(), obsDrops.Load(), cs.Dropped)
	t.Logf("heap: %.1f MiB before, peak %.1f MiB (with the forged reports), %.1f MiB after; %d log lines at INFO+ during the attack; %d streams, %d addresses left",
		float64(heapBefore)/(1<<20), float64(heapPeak)/(1<<20), float64(heapAfter)/(1<<20), logLines, clientsAfter, addrsAfter)

	if obsDrops.Load() > 0 {
		t.Errorf("the honest observer's lists carried %d drop entries", obsDrops.Load())
	}
	if obsLists.Load() == 0 {
		t.Error("the observer saw no list")
	}
	// Honest about 200/s, forging address at most 600/s.
	if bound := 200 + 600.0 + 50; maxOffered > bound {
		t.Errorf("measured offered rate reached %.0f calls/s, want at most %.0f", maxOffered, bound)
	}
	if len(cs.Dropped) > 3 {
		t.Errorf("%d drop tokens kept: %v", len(cs.Dropped), cs.Dropped)
	}
	if stats.BadClientStats == 0 {
		t.Error("no report counted as bad")
	}
	if logLines > 100 {
		t.Errorf("%d log lines at INFO and above during the attack, want at most 100", logLines)
	}
	if clientsAfter > clientsBefore {
		t.Errorf("%d client streams known after the attack, %d before", clientsAfter, clientsBefore)
	}
	if heapAfter > heapBefore+16<<20 {
		t.Errorf("heap grew from %.1f to %.1f MiB", float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))
	}
}
