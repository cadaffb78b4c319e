package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"
)

// Bounds of BenchmarkClientMemory: how long opening the clients, their
// first lists and the change's propagation may take, and how many
// connections are opened at once.
const (
	clientsOpenLimit  = 3 * time.Minute
	clientsPropLimit  = 30 * time.Second
	clientsDialers    = 32
	clientsSettleTime = 2 * time.Second
)

// BenchmarkClientMemory measures what clients on their own connections
// cost the lbserver binary (built without the race detector, a process of
// its own, limits raised by flags to let the clients in): for N clients,
// each a grpc-go ClientConn with one raw BalanceLoad stream for the same
// service (as every grpclb channel has a connection of its own to its
// balancer), it reports the balancer's RSS per client, (RSS with N
// clients − RSS with one) / N, once every stream has its first list.
// Then it deregisters one of the three backends and reports, over the
// streams, the p50 and p99 of the time until each stream's next list (the
// one without that backend). Run it with -benchtime 1x (make bench); it
// skips when the open-file limit cannot fit the clients.
func BenchmarkClientMemory(b *testing.B) {
	lbBin, _ := buildCmdsWith(b)
	for _, n := range []int{1000, 10000} {
		b.Run("clients="+strconv.Itoa(n), func(b *testing.B) {
			if err := raiseNofile(uint64(n) + 1000); err != nil {
				b.Skipf("%d clients: %v", n, err)
			}
			benchClients(b, lbBin, n)
		})
	}
}

// raiseNofile raises this process's open-file limit to at least want, up
// to the hard limit; it fails if the hard limit is lower than want.
// lbserver, started later, inherits the limit.
func raiseNofile(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Max < want {
		return fmt.Errorf("open-file hard limit %d, need %d", lim.Max, want)
	}
	if lim.Cur < want {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raising the open-file limit to %d: %w", lim.Max, err)
		}
	}
	return nil
}

// benchStream is one client of BenchmarkClientMemory: a connection of its
// own with one BalanceLoad stream.
type benchStream struct {
	cc     *grpc.ClientConn
	first  chan struct{} // closed at the first list with backends
	change atomic.Int64  // UnixNano of the first list with 2 backends; 0 until then
	err    atomic.Pointer[error]
}

func benchClients(b *testing.B, lbBin string, n int) {
	svc := serviceName(b)
	bs := startBackends(b, svc, 3)
	slack := strconv.Itoa(n + 100)
	lbp := startProcess(b, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(),
		"-max-conns", slack, "-max-conns-per-ip", slack,
		"-max-streams", slack, "-max-streams-per-ip", slack,
		"-max-stream-rate-per-ip", "0", "-log-level", "warn")
	pid := lbp.cmd.Process.Pid

	ctx, cancel := context.WithTimeout(context.Background(), clientsOpenLimit+clientsPropLimit+time.Minute)
	var wg sync.WaitGroup
	var streams []*benchStream
	b.Cleanup(func() {
		cancel()
		for _, s := range streams {
			if s.cc != nil {
				s.cc.Close()
			}
		}
		wg.Wait()
	})
	open := func(s *benchStream) error {
		cc, err := grpc.NewClient(lbp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		s.cc = cc
		stream, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
			InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: svc + ":50051"}}}); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.recv(stream)
		}()
		return nil
	}
	// waitFirsts waits until every stream in ss has its first list.
	waitFirsts := func(ss []*benchStream, deadline time.Time) error {
		for i, s := range ss {
			select {
			case <-s.first:
			case <-time.After(time.Until(deadline)):
				return fmt.Errorf("stream %d of %d: no first list by the deadline", i, len(ss))
			}
			if p := s.err.Load(); p != nil {
				return fmt.Errorf("stream %d of %d: %w", i, len(ss), *p)
			}
		}
		return nil
	}

	// The baseline: one client, so the service is watched already.
	warm := &benchStream{first: make(chan struct{})}
	streams = append(streams, warm)
	if err := open(warm); err != nil {
		b.Fatal(err)
	}
	if err := waitFirsts(streams, time.Now().Add(20*time.Second)); err != nil {
		b.Fatal(err)
	}
	time.Sleep(clientsSettleTime)
	rss0, err := rssBytes(pid)
	if err != nil {
		b.Fatal(err)
	}

	b.ResetTimer()
	// wave opens n clients, at most clientsDialers at once, and waits
	// until each has its first list.
	wave := func() ([]*benchStream, time.Duration) {
		start := time.Now()
		deadline := start.Add(clientsOpenLimit)
		clients := make([]*benchStream, n)
		for i := range clients {
			clients[i] = &benchStream{first: make(chan struct{})}
		}
		streams = append(streams, clients...)
		next := atomic.Int64{}
		var dialErr atomic.Pointer[error]
		var dialers sync.WaitGroup
		for range clientsDialers {
			dialers.Add(1)
			go func() {
				defer dialers.Done()
				for time.Now().Before(deadline) && dialErr.Load() == nil {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					if err := open(clients[i]); err != nil {
						err = fmt.Errorf("client %d: %w", i, err)
						dialErr.CompareAndSwap(nil, &err)
					}
				}
			}()
		}
		dialers.Wait()
		if p := dialErr.Load(); p != nil {
			b.Fatal(*p)
		}
		if err := waitFirsts(clients, deadline); err != nil {
			logs := lbp.logs()
			b.Fatalf("%v\nlbserver's log (last 2000 bytes):\n%s", err, logs[max(0, len(logs)-2000):])
		}
		return clients, time.Since(start)
	}
	clients, opened := wave()
	time.Sleep(clientsSettleTime)
	rssN, err := rssBytes(pid)
	if err != nil {
		b.Fatal(err)
	}
	// Every client reconnects (as -max-stream-age makes them do): the
	// balancer now reuses the memory the first connections freed, which
	// the Go runtime zeroes, so it is resident; the steady state.
	for _, s := range clients {
		s.cc.Close()
	}
	time.Sleep(clientsSettleTime)
	clients, _ = wave()
	time.Sleep(clientsSettleTime)
	rssR, err := rssBytes(pid)
	if err != nil {
		b.Fatal(err)
	}

	// Propagation: one backend leaves; every stream's next list.
	changed := time.Now()
	if err := bs[0].Deregister(); err != nil {
		b.Fatal(err)
	}
	waitFor(b, clientsPropLimit, "every stream's list without the deregistered backend", func() bool {
		for _, s := range clients {
			if s.change.Load() == 0 {
				return false
			}
		}
		return true
	})
	b.StopTimer()
	lat := make([]time.Duration, n)
	for i, s := range clients {
		lat[i] = time.Unix(0, s.change.Load()).Sub(changed)
	}
	slices.Sort(lat)
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }

	perClient := float64(rssN-rss0) / float64(n)
	perClientR := float64(rssR-rss0) / float64(n)
	b.ReportMetric(perClient/1024, "KiB-RSS/client")
	b.ReportMetric(perClientR/1024, "KiB-RSS/client-reconnected")
	b.ReportMetric(float64(pct(0.5).Microseconds())/1000, "p50-change-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-change-ms")
	b.Logf("%d clients: RSS %.1f MiB → %.1f MiB, %.1f KiB per client (after all reconnected: %.1f MiB, %.1f KiB per client); all first lists in %v; one backend deregistered → next list p50 %v, p99 %v, max %v",
		n, float64(rss0)/(1<<20), float64(rssN)/(1<<20), perClient/1024, float64(rssR)/(1<<20), perClientR/1024, opened.Round(time.Millisecond),
		pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
}

// recv reads stream until it ends: it closes s.first at the first list
// with backends and records when a list with two backends (after one of
// the three left) arrives. An error before the first list is kept in
// s.err.
func (s *benchStream) recv(stream lbpb.LoadBalancer_BalanceLoadClient) {
	firstDone := false
	defer func() {
		if !firstDone {
			close(s.first)
		}
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			if !firstDone {
				s.err.Store(&err)
			}
			return
		}
		if resp.GetFallbackResponse() != nil && !firstDone {
			err := errors.New("fallback instead of a list")
			s.err.Store(&err)
			return
		}
		sl := resp.GetServerList()
		if sl == nil {
			continue
		}
		backends := map[string]bool{}
		for _, srv := range sl.GetServers() {
			if !srv.GetDrop() {
				backends[fmt.Sprintf("%x:%d", srv.GetIpAddress(), srv.GetPort())] = true
			}
		}
		switch {
		case len(backends) == 0:
		case !firstDone:
			firstDone = true
			close(s.first)
		case len(backends) == 2 && s.change.Load() == 0:
			s.change.Store(time.Now().UnixNano())
		}
	}
}
