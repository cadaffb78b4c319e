package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// adversaryConsulBudget is the -consul-max-conns the suite gives the
// balancer; the balancer must never hold more connections to Consul.
const adversaryConsulBudget = 16

// TestAdversarySuite runs each attack of a hostile or buggy client against
// the real lbserver binary and a real Consul, one after another, while an
// honest user of the same balancer keeps calling and probing (see honest).
// After each attack: no honest call or probe failed and the honest first
// list came within 100 ms at p99. Throughout: the balancer's connections
// to Consul stay within its budget and its log stays small. After all:
// its memory is back within 2× of the baseline.
func TestAdversarySuite(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e")
	}
	if raceDetector {
		// The attackers and the honest user run in this process: under the
		// race detector they take the CPU the balancer needs, and the suite
		// would time them instead. make test runs it without.
		t.Skip("the adversary suite times what an honest client sees; make test runs it without -race")
	}
	svc := serviceName(t)
	startBackends(t, svc, 3)
	waitPassing(t, svc, 3)
	// Without the race detector: its shadow memory is never given back,
	// and its slowdown is not what a deployment sees. The rest of the
	// suite runs the binaries with it.
	lbBin, _ := buildCmdsWith(t)
	lbPort, dnsPort := freePort(t), freePort(t)
	lbAddr := fmt.Sprintf("127.0.0.1:%d", lbPort)
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	lbp := startProcess(t, lbBin, "-listen", lbAddr, "-consul", agent.HTTPAddr(),
		"-consul-max-conns", strconv.Itoa(adversaryConsulBudget),
		"-client-stats-interval", "1s", "-initial-request-timeout", "1s",
		"-rate-limit", svc+"=2000", "-log-level", "info",
		"-dns-listen", dnsAddr, "-dns-balancers", lbAddr)
	pid := lbp.cmd.Process.Pid

	// Consul connections, sampled all along.
	var maxConsul atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(t.Context())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampleCtx.Err() == nil {
			if n, err := tcpConnsTo(pid, agent.HTTPAddr()); err == nil && int64(n) > maxConsul.Load() {
				maxConsul.Store(int64(n))
			}
			select {
			case <-sampleCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	defer func() {
		stopSampling()
		<-sampled
		t.Logf("most connections to Consul at once: %d (budget %d)", maxConsul.Load(), adversaryConsulBudget)
		if maxConsul.Load() > adversaryConsulBudget {
			t.Errorf("the balancer held %d connections to Consul, budget %d", maxConsul.Load(), adversaryConsulBudget)
		}
	}()

	forgedTokenReports()
	warm := startHonest(t, lbAddr, svc)
	time.Sleep(2 * time.Second)
	warm.finish().check(t, 100*time.Millisecond)
	baseline, err := rssBytes(pid)
	if err != nil {
		t.Fatal(err)
	}
	logBase := lbp.logBytes()
	t.Logf("baseline: RSS %.1f MiB, log %d bytes", float64(baseline)/(1<<20), logBase)

	attacks := []struct {
		name string
		run  func(t *testing.T, lbAddr, svc string)
	}{
		{"DistinctNames", attackDistinctNames},
		{"CaseVariants", attackCaseVariants},
		{"StreamFlood", attackStreamFlood},
		{"NeverRead", attackNeverRead},
		{"Silent", attackSilent},
		{"ForgedClientStats", attackForgedClientStats},
		{"HugeNames", attackHugeNames},
		{"DNSFlood", func(t *testing.T, _, _ string) { attackDNSFlood(t, dnsAddr) }},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			logBefore := lbp.logBytes()
			h := startHonest(t, lbAddr, svc)
			a.run(t, lbAddr, svc)
			time.Sleep(time.Second) // effects that lag (rate measurement) show up
			h.finish().check(t, 100*time.Millisecond)
			rss, _ := rssBytes(pid)
			logged := lbp.logBytes() - logBefore
			t.Logf("after: RSS %.1f MiB, %d bytes logged", float64(rss)/(1<<20), logged)
			if logged > 64<<10 {
				t.Errorf("the attack made the balancer log %d bytes, want at most 64 KiB", logged)
			}
		})
	}

	// An idle Go process collects its heap at least every 2 minutes, and
	// only then gives back what the attack's peak made it keep: wait up to
	// that long.
	var rss int64
	attacked := time.Now()
	deadline := attacked.Add(150 * time.Second)
	for {
		rss, _ = rssBytes(pid)
		if rss <= 2*baseline || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("RSS %v after the attacks: %.1f MiB (baseline %.1f MiB)", time.Since(attacked).Round(time.Second), float64(rss)/(1<<20), float64(baseline)/(1<<20))
	if rss > 2*baseline {
		t.Errorf("RSS %.1f MiB 150 s after the attacks, more than twice the baseline %.1f MiB", float64(rss)/(1<<20), float64(baseline)/(1<<20))
	}
}

// attackerConns dials n connections to the balancer from the loopback
// address ip, so that limits per client IP see the attacker apart from
// the honest user on 127.0.0.1.
func attackerConns(t *testing.T, lbAddr, ip string, n int, opts ...grpc.DialOption) []lbpb.LoadBalancerClient {
	t.Helper()
	var out []lbpb.LoadBalancerClient
	for range n {
		cc, err := grpc.NewClient(lbAddr, append([]grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()), fromIP(ip)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		out = append(out, lbpb.NewLoadBalancerClient(cc))
	}
	return out
}

// spreadConns dials n connections to the balancer, the i-th from the
// loopback address prefix+(i+1) (prefix like "127.0.2."): an attacker
// with many addresses, each under the rate of new streams per IP.
func spreadConns(t *testing.T, lbAddr, prefix string, n int) []lbpb.LoadBalancerClient {
	t.Helper()
	var out []lbpb.LoadBalancerClient
	for i := range n {
		out = append(out, attackerConns(t, lbAddr, prefix+strconv.Itoa(i+1), 1)...)
	}
	return out
}

// initial is the first message of a stream naming name.
func initial(name string) *lbpb.LoadBalanceRequest {
	return &lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
		InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: name}}}
}

// firstAnswer opens a stream naming name and returns its first answer
// after the initial response: "list", "fallback", or the status code of
// the stream's end.
func firstAnswer(ctx context.Context, c lbpb.LoadBalancerClient, name string) string {
	stream, err := c.BalanceLoad(ctx)
	if err != nil {
		return status.Code(err).String()
	}
	if err := stream.Send(initial(name)); err != nil {
		_, err = stream.Recv()
		return status.Code(err).String()
	}
	for {
		resp, err := stream.Recv()
		switch {
		case err != nil:
			return status.Code(err).String()
		case resp.GetFallbackResponse() != nil:
			return "fallback"
		case resp.GetServerList() != nil:
			return "list"
		}
	}
}

// parallel runs f(i) for i in [0, n) on at most width goroutines.
func parallel(n, width int, f func(i int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range width {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				f(i)
			}
		})
	}
	wg.Wait()
}

// tally counts answers by kind.
type tally struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *tally) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[k]++
}

func (c *tally) get() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// attackDistinctNames: 2,000 streams each naming a service that does not
// exist, from 20 addresses (100 each, within the burst of new streams per
// IP: one address alone would mostly be refused by that rate). Each is
// answered with fallback at once, without a watch.
func attackDistinctNames(t *testing.T, lbAddr, _ string) {
	conns := spreadConns(t, lbAddr, "127.0.2.", 20)
	var got tally
	start := time.Now()
	parallel(2000, 100, func(i int) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got.add(firstAnswer(ctx, conns[i%len(conns)], fmt.Sprintf("nx-%d-%x:443", i, rand.Uint64())))
	})
	t.Logf("2000 unknown names answered in %v: %v", time.Since(start), got.get())
	if n := got.get()["fallback"]; n != 2000 {
		t.Errorf("%d of 2000 unknown names got fallback: %v", n, got.get())
	}
}

// attackCaseVariants: 32 case variants of the honest service's name each
// get its list (they are the same service).
func attackCaseVariants(t *testing.T, lbAddr, svc string) {
	conns := attackerConns(t, lbAddr, "127.0.0.2", 4)
	var got tally
	parallel(32, 32, func(i int) {
		b := []byte(svc)
		for j := range b {
			if i>>(j%5)&1 == 1 {
				b[j] = strings.ToUpper(string(b[j]))[0]
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got.add(firstAnswer(ctx, conns[i%len(conns)], string(b)+":50051"))
	})
	if n := got.get()["list"]; n != 32 {
		t.Errorf("%d of 32 case variants got a list: %v", n, got.get())
	}
}

// attackStreamFlood: 5,000 streams from one IP on 50 connections, held
// open for 2 s. Limits refuse the excess with ResourceExhausted: the rate
// of new streams per IP (100/s, burst 200) before the 1,000 streams an IP
// may hold.
func attackStreamFlood(t *testing.T, lbAddr, svc string) {
	conns := attackerConns(t, lbAddr, "127.0.0.3", 50)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var got tally
	var open sync.WaitGroup
	hold := make(chan struct{})
	start := time.Now()
	parallel(5000, 200, func(i int) {
		stream, err := conns[i%len(conns)].BalanceLoad(ctx)
		if err == nil {
			// A Send on a stream the balancer already refused fails with
			// io.EOF; Recv then returns the stream's status.
			stream.Send(initial(svc + ":50051"))
			_, err = stream.Recv()
		}
		if err != nil {
			got.add(status.Code(err).String())
			if status.Code(err) != codes.ResourceExhausted {
				t.Logf("stream %d: %v", i, err)
			}
			return
		}
		got.add("accepted")
		open.Go(func() {
			select {
			case <-hold:
			case <-ctx.Done():
			}
		})
	})
	took := time.Since(start)
	time.Sleep(2 * time.Second)
	close(hold)
	open.Wait()
	cancel()
	t.Logf("5000 streams from one IP in %v: %v", took, got.get())
	// The default -max-stream-rate-per-ip and -stream-burst-per-ip.
	if most := 200 + int(100*took.Seconds()) + 1; got.get()["accepted"] > most {
		t.Errorf("%d of 5000 streams from one IP accepted in %v, want at most %d (burst 200 + 100/s)", got.get()["accepted"], took, most)
	}
	if n := got.get()["accepted"] + got.get()[codes.ResourceExhausted.String()]; n != 5000 {
		t.Errorf("streams neither accepted nor refused with ResourceExhausted: %v", got.get())
	}
}

// attackNeverRead: 300 streams send their initial request and never read
// an answer, with the smallest flow-control window grpc allows.
func attackNeverRead(t *testing.T, lbAddr, svc string) {
	conns := attackerConns(t, lbAddr, "127.0.0.4", 10, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	parallel(300, 50, func(i int) {
		if stream, err := conns[i%len(conns)].BalanceLoad(ctx); err == nil {
			stream.Send(initial(svc + ":50051"))
		}
	})
	time.Sleep(2 * time.Second)
}

// attackSilent: 1,000 streams that never send their initial request, from
// 10 addresses (within the burst of new streams per IP), end with
// DeadlineExceeded after -initial-request-timeout (1 s here).
func attackSilent(t *testing.T, lbAddr, _ string) {
	conns := spreadConns(t, lbAddr, "127.0.5.", 10)
	var got tally
	start := time.Now()
	parallel(1000, 200, func(i int) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		stream, err := conns[i%len(conns)].BalanceLoad(ctx)
		if err == nil {
			_, err = stream.Recv()
		}
		got.add(status.Code(err).String())
	})
	t.Logf("1000 silent streams ended within %v: %v", time.Since(start), got.get())
	if n := got.get()[codes.DeadlineExceeded.String()]; n != 1000 {
		t.Errorf("%d of 1000 silent streams ended with DeadlineExceeded: %v", n, got.get())
	}
}

// attackForgedClientStats: on the honest service, which is rate limited
// to 2,000 calls/s (the honest user makes about 200), one stream reports
// 2^40 calls started, 20 streams flood 500 reports each, and 100,000
// unique drop tokens arrive. No honest call may be dropped.
func attackForgedClientStats(t *testing.T, lbAddr, svc string) {
	conns := attackerConns(t, lbAddr, "127.0.0.6", 5)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	report := func(c lbpb.LoadBalancerClient, msgs func(send func(*lbpb.ClientStats) error) error) error {
		stream, err := c.BalanceLoad(ctx)
		if err != nil {
			return err
		}
		if err := stream.Send(initial(svc + ":50051")); err != nil {
			return err
		}
		go func() { // read what the balancer sends, so flow control never blocks it
			for {
				if _, err := stream.Recv(); err != nil {
					return
				}
			}
		}()
		err = msgs(func(cs *lbpb.ClientStats) error {
			return stream.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: cs}})
		})
		return errors.Join(err, stream.CloseSend())
	}
	var errs tally
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := report(conns[0], func(send func(*lbpb.ClientStats) error) error {
			return send(&lbpb.ClientStats{NumCallsStarted: 1 << 40, NumCallsFinished: 1 << 40})
		}); err != nil {
			errs.add(err.Error())
		}
	})
	tokens := forgedTokenReports()
	for i := range 20 {
		wg.Go(func() {
			if err := report(conns[i%len(conns)], func(send func(*lbpb.ClientStats) error) error {
				for j := range 500 {
					cs := &lbpb.ClientStats{NumCallsStarted: 100_000, NumCallsFinished: 100_000}
					if j < len(tokens[i]) {
						cs = tokens[i][j]
					}
					if err := send(cs); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				errs.add(err.Error())
			}
		})
	}
	wg.Wait()
	time.Sleep(3 * time.Second) // the rate is measured every second
	t.Logf("forger stream errors: %v", errs.get())
}

// forgedTokenReports are the reports of attackForgedClientStats that carry
// unique drop tokens: 5 for each of its 20 streams, 1,000 tokens each. They
// are built once, before the honest user starts, so that building them does
// not count as the balancer's slowness.
var forgedTokenReports = sync.OnceValue(func() [][]*lbpb.ClientStats {
	out := make([][]*lbpb.ClientStats, 20)
	for i := range out {
		for j := range 5 {
			cs := &lbpb.ClientStats{NumCallsStarted: 100_000, NumCallsFinished: 100_000}
			for k := range 1000 {
				cs.CallsFinishedWithDrop = append(cs.CallsFinishedWithDrop, &lbpb.ClientStatsPerToken{
					LoadBalanceToken: fmt.Sprintf("forged-%d-%d-%d", i, j, k), NumCalls: 1})
			}
			out[i] = append(out[i], cs)
		}
	}
	return out
})

// attackHugeNames: 50 streams naming 1 MiB names are refused, and the
// names are not logged whole.
func attackHugeNames(t *testing.T, lbAddr, _ string) {
	conns := attackerConns(t, lbAddr, "127.0.0.7", 5)
	var got tally
	name := strings.Repeat("a", 1<<20)
	parallel(50, 10, func(i int) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got.add(firstAnswer(ctx, conns[i%len(conns)], name))
	})
	// Refused unread by the request size limit (ResourceExhausted), or by
	// name validation (InvalidArgument).
	if n := got.get()[codes.ResourceExhausted.String()] + got.get()[codes.InvalidArgument.String()]; n != 50 {
		t.Errorf("%d of 50 huge names were refused: %v", n, got.get())
	}
}

// attackDNSFlood: 5,000 UDP queries for random names and ANY from one
// source, in at most 10 s. The answers are bounded in size: the suite
// reports the amplification (bytes answered per byte asked).
func attackDNSFlood(t *testing.T, dnsAddr string) {
	conn, err := net.ListenPacket("udp", "127.0.0.8:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to, err := net.ResolveUDPAddr("udp", dnsAddr)
	if err != nil {
		t.Fatal(err)
	}
	var in, out, answers atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			conn.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			in.Add(int64(n))
			answers.Add(1)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 5000 && time.Now().Before(deadline); i++ {
		m := new(dns.Msg)
		qtype := dns.TypeSRV
		name := fmt.Sprintf("_grpclb._tcp.nx-%d-%x.lb.internal.", i, rand.Uint32())
		if i%10 == 0 {
			qtype, name = dns.TypeANY, "lb.internal."
		}
		m.SetQuestion(name, qtype)
		m.SetEdns0(4096, false)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
		out.Add(int64(len(b)))
		if i%100 == 99 {
			time.Sleep(10 * time.Millisecond) // keep the flood from only filling socket buffers
		}
	}
	<-done
	t.Logf("DNS flood: %d queries (%d bytes), %d answers (%d bytes): amplification ×%.2f",
		5000, out.Load(), answers.Load(), in.Load(), float64(in.Load())/float64(out.Load()))
	if in.Load() > out.Load() {
		t.Errorf("the responder answered %d bytes to %d bytes of questions from one source", in.Load(), out.Load())
	}
}
