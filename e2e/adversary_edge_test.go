package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// The edge tests run attacks on the stream edge against an in-process
// balancer on a real Consul, while the honest user (startHonest) keeps
// calling and probing, and assert on the balancer's own counters what the
// binary-level suite (TestAdversarySuite) cannot see: which limit refused,
// how many watches started.

// edgeLB starts an in-process balancer with tweak and reports whether its
// source is a discovery.Directory. Each edge test isolates one defence:
// the rate of new streams per IP is off unless tweak turns it on
// (TestEdgeStreamRate), as it would refuse most of the other attacks'
// streams before the defence under test sees them.
func edgeLB(t *testing.T, tweak func(*lbserver.Config)) (l *lb, dir bool) {
	t.Helper()
	l = startLB(t, func(c *lbserver.Config) {
		_, dir = c.Source.(discovery.Directory)
		c.InitialRequestTimeout = time.Second
		c.MaxStreamRatePerIP = 0
		if tweak != nil {
			tweak(c)
		}
	})
	return l, dir
}

// TestEdgeStreamsOnOneConnection: 500 streams on one connection; the
// first MaxStreamsPerConn are served, the rest refused with
// ResourceExhausted naming the limit, and the honest user sees nothing.
func TestEdgeStreamsOnOneConnection(t *testing.T) {
	svc := serviceName(t)
	startBackends(t, svc, 2)
	l, _ := edgeLB(t, func(c *lbserver.Config) { c.MaxStreamsPerConn = 50 })
	h := startHonest(t, l.addr, svc)
	conn := attackerConns(t, l.addr, "127.0.0.11", 1)[0]
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var got tally
	parallel(500, 100, func(int) {
		got.add(firstAnswer(ctx, conn, svc+":50051"))
	})
	// The accepted streams stay open until ctx ends; those refused ended.
	time.Sleep(time.Second) // the honest user goes on with the attack's streams held
	h.finish().check(t, inProcessP99)
	t.Logf("500 streams on one connection: %v; refused %+v", got.get(), l.server().Stats().Refused)
	if got.get()["list"] != 50 || got.get()[codes.ResourceExhausted.String()] != 450 {
		t.Errorf("500 streams on one connection with max-streams-per-conn 50: %v; want 50 lists and 450 ResourceExhausted", got.get())
	}
	if r := l.server().Stats().Refused; r.StreamsPerConn != 450 {
		t.Errorf("Stats().Refused = %+v, want StreamsPerConn 450", r)
	}
}

// TestEdgeOneIPFlood: 3,000 streams from one IP on 30 connections, held
// open; MaxStreamsPerIP (200) of them are served, the others refused at
// once.
func TestEdgeOneIPFlood(t *testing.T) {
	svc := serviceName(t)
	startBackends(t, svc, 2)
	l, _ := edgeLB(t, func(c *lbserver.Config) { c.MaxStreamsPerIP = 200 })
	got, _ := floodFromOneIP(t, l, svc, "127.0.0.12")
	if got["list"] != 200 || got[codes.ResourceExhausted.String()] != 2800 {
		t.Errorf("3000 streams from one IP with max-streams-per-ip 200: %v; want 200 lists and 2800 ResourceExhausted", got)
	}
}

// floodFromOneIP opens 3,000 streams for svc from ip on 30 connections,
// held open, while the honest user works, and checks what the honest user
// saw. It returns the streams' first answers and how long they took.
func floodFromOneIP(t *testing.T, l *lb, svc, ip string) (map[string]int, time.Duration) {
	t.Helper()
	h := startHonest(t, l.addr, svc)
	conns := attackerConns(t, l.addr, ip, 30)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var got tally
	start := time.Now()
	parallel(3000, 100, func(i int) {
		got.add(firstAnswer(ctx, conns[i%len(conns)], svc+":50051"))
	})
	took := time.Since(start)
	time.Sleep(time.Second) // the honest user goes on with the attack's streams held
	h.finish().check(t, inProcessP99)
	t.Logf("3000 streams from one IP answered in %v: %v; refused %+v", took, got.get(), l.server().Stats().Refused)
	return got.get(), took
}

// TestEdgeStreamRate: 3,000 streams from one IP on 30 connections, held
// open, with the default rate of new streams per IP (100/s, burst 200):
// at most the burst plus the rate over the attack's time are served, all
// the others are refused with ResourceExhausted, counted as refused by
// the rate, and the honest user sees nothing.
func TestEdgeStreamRate(t *testing.T) {
	svc := serviceName(t)
	startBackends(t, svc, 2)
	def := lbserver.DefaultConfig()
	l, _ := edgeLB(t, func(c *lbserver.Config) {
		c.MaxStreamRatePerIP, c.StreamBurstPerIP = def.MaxStreamRatePerIP, def.StreamBurstPerIP
	})
	got, took := floodFromOneIP(t, l, svc, "127.0.0.17")
	refused := l.server().Stats().Refused
	lists, exhausted := got["list"], got[codes.ResourceExhausted.String()]
	if most := def.StreamBurstPerIP + int(def.MaxStreamRatePerIP*took.Seconds()) + 1; lists < def.StreamBurstPerIP || lists > most || lists+exhausted != 3000 {
		t.Errorf("3000 streams from one IP at %v/s, burst %d, in %v: %v; want %d to %d lists, the rest ResourceExhausted",
			def.MaxStreamRatePerIP, def.StreamBurstPerIP, took, got, def.StreamBurstPerIP, most)
	}
	if refused.StreamRatePerIP != int64(exhausted) {
		t.Errorf("Stats().Refused = %+v, want all %d refusals by the rate", refused, exhausted)
	}
}

// TestEdgeUnknownNamesNoWatch: 1,000 streams and 200 DNS-style lookups
// for random names get a fallback (no endpoints) without starting a
// single watch, when the source knows which services exist.
func TestEdgeUnknownNamesNoWatch(t *testing.T) {
	svc := serviceName(t)
	startBackends(t, svc, 2)
	l, dir := edgeLB(t, nil)
	if !dir {
		t.Skip("the Consul source is not a discovery.Directory yet")
	}
	h := startHonest(t, l.addr, svc)
	before := l.server().Stats()
	conns := attackerConns(t, l.addr, "127.0.0.13", 10)
	var got tally
	start := time.Now()
	parallel(1000, 100, func(i int) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got.add(firstAnswer(ctx, conns[i%len(conns)], fmt.Sprintf("nx-%d-%x:443", i, rand.Uint64())))
	})
	took := time.Since(start)
	for i := range 200 {
		if snap, ok := l.server().Endpoints(t.Context(), fmt.Sprintf("nx-dns-%d", i)); !ok || len(snap.Endpoints) != 0 {
			t.Fatalf("Endpoints of an unknown name = %v, %v; want none, ok", snap, ok)
		}
	}
	time.Sleep(time.Second) // the honest user goes on with the attack's streams held
	h.finish().check(t, inProcessP99)
	after := l.server().Stats()
	t.Logf("1000 unknown names answered in %v: %v; watches started %d", took, got.get(), after.WatchesStarted-before.WatchesStarted)
	if got.get()["fallback"] != 1000 {
		t.Errorf("1000 unknown names: %v; want 1000 fallbacks", got.get())
	}
	if n := after.WatchesStarted - before.WatchesStarted; n != 0 {
		t.Errorf("unknown names started %d watches, want 0", n)
	}
}

// TestEdgeCaseVariantsOneWatch: 32 case variants of the honest service's
// name all get its list from the one watch the honest user started.
func TestEdgeCaseVariantsOneWatch(t *testing.T) {
	svc := serviceName(t)
	startBackends(t, svc, 2)
	l, _ := edgeLB(t, nil)
	h := startHonest(t, l.addr, svc)
	before := l.server().Stats()
	conns := attackerConns(t, l.addr, "127.0.0.14", 4)
	var got tally
	parallel(32, 32, func(i int) {
		b := []byte(svc)
		k := 0
		for j := range b {
			if b[j] < 'a' || b[j] > 'z' {
				continue
			}
			if i>>k&1 == 1 {
				b[j] = strings.ToUpper(string(b[j]))[0]
			}
			k++
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got.add(firstAnswer(ctx, conns[i%len(conns)], string(b)+":50051"))
	})
	time.Sleep(time.Second) // the honest user goes on with the attack's streams held
	h.finish().check(t, inProcessP99)
	after := l.server().Stats()
	if got.get()["list"] != 32 {
		t.Errorf("32 case variants: %v; want 32 lists", got.get())
	}
	if n := after.WatchesStarted - before.WatchesStarted; n != 0 || after.ServicesWatched != 1 {
		t.Errorf("case variants started %d watches (%d services watched); want 0 more, 1 watched", n, after.ServicesWatched)
	}
}

// TestEdgeSilentAndHugeNames: streams that never name a service end after
// InitialRequestTimeout, streams naming 1 MiB names end at once with
// ResourceExhausted (MaxRequestSize) and those naming 60 KB names with
// InvalidArgument (MaxNameLength), and the balancer's log stays small.
func TestEdgeSilentAndHugeNames(t *testing.T) {
	svc := serviceName(t)
	startBackends(t, svc, 2)
	var logs edgeLog
	l, _ := edgeLB(t, func(c *lbserver.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	h := startHonest(t, l.addr, svc)
	silent := attackerConns(t, l.addr, "127.0.0.15", 10)
	huge := attackerConns(t, l.addr, "127.0.0.16", 5)
	var got tally
	var wg sync.WaitGroup
	wg.Go(func() {
		parallel(500, 100, func(i int) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			stream, err := silent[i%len(silent)].BalanceLoad(ctx)
			if err == nil {
				_, err = stream.Recv()
			}
			got.add("silent " + status.Code(err).String())
		})
	})
	name, long := strings.Repeat("a", 1<<20), strings.Repeat("b", 60_000)
	parallel(100, 10, func(i int) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if i%2 == 0 {
			got.add("huge " + firstAnswer(ctx, huge[i%len(huge)], name))
		} else {
			got.add("long " + firstAnswer(ctx, huge[i%len(huge)], long))
		}
	})
	wg.Wait()
	time.Sleep(time.Second) // the honest user goes on with the attack's streams held
	h.finish().check(t, inProcessP99)
	t.Logf("silent and huge names: %v; %d bytes logged", got.get(), logs.len())
	// A huge name still arriving after InitialRequestTimeout (1 s here)
	// ends with DeadlineExceeded instead: refused too.
	huges := got.get()["huge "+codes.ResourceExhausted.String()] + got.get()["huge "+codes.DeadlineExceeded.String()]
	if got.get()["silent "+codes.DeadlineExceeded.String()] != 500 || huges != 50 || got.get()["long "+codes.InvalidArgument.String()] != 50 {
		t.Errorf("got %v; want 500 silent DeadlineExceeded, 50 huge ResourceExhausted (or DeadlineExceeded) and 50 long InvalidArgument", got.get())
	}
	if logs.len() > 16<<10 {
		t.Errorf("the attack logged %d bytes, want at most 16 KiB", logs.len())
	}
}

// edgeLog counts the bytes a logger writes. Safe for concurrent use.
type edgeLog struct {
	mu sync.Mutex
	n  int
}

func (b *edgeLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += len(p)
	return len(p), nil
}

func (b *edgeLog) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}
