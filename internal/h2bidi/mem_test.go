package h2bidi

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/lookaside-lb/lookaside/internal/tlsfiles/tlstest"
)

// The memory benchmark's server runs in a process of its own (this test
// binary, started again with memServerEnv set), so that what it measures
// is the server's memory alone, while the clients are real grpc-go
// clients (a ClientConn each, as grpclb clients dial their balancer) in
// the benchmark's process.

const memServerEnv = "H2BIDI_MEM_SERVER"

// memServerMain serves BalanceLoad on loopback with the transport kind
// names ("h2bidi", or "grpc" for grpc.Server with a receive goroutine per
// stream as the balancer had), prints its address, then answers each
// line of stdin with "heap stack goroutines" after a GC, until stdin
// closes.
func memServerMain(kind string) {
	var ok bool
	if os.Getenv("H2BIDI_MEM_PROFILE") != "" {
		runtime.MemProfileRate = 1
	}
	var lis net.Listener
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var creds credentials.TransportCredentials
	if kind, ok = strings.CutSuffix(kind, "-tls"); ok {
		cert, err := tls.LoadX509KeyPair(os.Getenv(memServerEnv+"_CERT"), os.Getenv(memServerEnv+"_KEY"))
		if err != nil {
			panic(err)
		}
		creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})
	}
	// The handler a balancer has: the first request is answered with a
	// list, then it waits for requests, its stream's end or a change.
	change := make(chan struct{})
	switch kind {
	case "h2bidi":
		srv, err := New(Config[req]{Method: method, Unmarshal: unmarshalReq, Creds: creds, Handler: func(st *Stream[req]) error {
			for {
				select {
				case <-st.Ready():
					for {
						r, ok, err := st.Next()
						if err == io.EOF {
							<-st.Context().Done()
							return nil
						}
						if err != nil {
							return err
						}
						if !ok {
							break
						}
						if r.GetInitialRequest() != nil {
							if err := st.Send(respFor("backend")); err != nil {
								return err
							}
						}
					}
				case <-change:
				case <-st.Context().Done():
					return st.Context().Err()
				}
			}
		}})
		if err != nil {
			panic(err)
		}
		go srv.Serve(lis)
	case "grpc":
		var opts []grpc.ServerOption
		if creds != nil {
			opts = append(opts, grpc.Creds(creds))
		}
		gs := grpc.NewServer(opts...)
		lbpb.RegisterLoadBalancerServer(gs, grpcLB{change: change})
		go gs.Serve(lis)
	default:
		panic("unknown kind " + kind)
	}
	fmt.Println(lis.Addr())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		// A few collections, as a running server has between changes: each
		// may halve a goroutine's stack that uses little of it.
		for range 4 {
			runtime.GC()
		}
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if p := os.Getenv("H2BIDI_MEM_PROFILE"); p != "" {
			if f, err := os.Create(p); err == nil {
				pprof.WriteHeapProfile(f)
				f.Close()
			}
			fmt.Fprintln(os.Stderr, "heap", ms.HeapInuse, "stack", ms.StackInuse)
		}
		fmt.Println(ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine())
	}
}

// grpcLB is the same handler on grpc.Server, with the receive loop on a
// goroutine of its own as internal/recvloop runs it.
type grpcLB struct {
	lbpb.UnimplementedLoadBalancerServer
	change chan struct{}
}

func (g grpcLB) BalanceLoad(s lbpb.LoadBalancer_BalanceLoadServer) error {
	msgs := make(chan *lbpb.LoadBalanceRequest)
	errs := make(chan error, 1)
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case msgs <- m:
			case <-s.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case r := <-msgs:
			if r.GetInitialRequest() != nil {
				if err := s.SendMsg(&lbpb.LoadBalanceResponse{LoadBalanceResponseType: &lbpb.LoadBalanceResponse_ServerList{
					ServerList: &lbpb.ServerList{Servers: []*lbpb.Server{{LoadBalanceToken: "backend"}}},
				}}); err != nil {
					return err
				}
			}
		case err := <-errs:
			if err == io.EOF {
				<-s.Context().Done()
				return nil
			}
			return err
		case <-g.change:
		}
	}
}

// BenchmarkConnMemory opens 1,000 BalanceLoad streams, each on a
// ClientConn of its own, to a server in another process, and reports the
// server's bytes (HeapInuse+StackInuse after a GC, less the same before
// the clients) and goroutines per connection; "grpc" is grpc.Server with
// the same handler, for comparison. It runs once whatever b.N.
func BenchmarkConnMemory(b *testing.B) {
	for _, kind := range []string{"h2bidi", "grpc", "h2bidi-tls", "grpc-tls"} {
		b.Run(kind, func(b *testing.B) { benchConnMemory(b, kind, 1000) })
	}
}

func benchConnMemory(b *testing.B, kind string, n int) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), memServerEnv+"="+kind)
	dialCreds := insecure.NewCredentials()
	if strings.HasSuffix(kind, "-tls") {
		ca := tlstest.NewCA(b, "bench ca")
		files := tlstest.WriteFiles(b, b.TempDir(), ca.Issue(b, tlstest.Options{CommonName: "server", Names: []string{"127.0.0.1"}}))
		cmd.Env = append(cmd.Env, memServerEnv+"_CERT="+files.Cert, memServerEnv+"_KEY="+files.Key)
		dialCreds = credentials.NewTLS(&tls.Config{RootCAs: ca.Pool()})
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { in.Close(); cmd.Wait() }()
	out := bufio.NewScanner(outp)
	if !out.Scan() {
		b.Fatal("the server printed no address")
	}
	addr := strings.TrimSpace(out.Text())
	measure := func() (heap, stack, goroutines float64) {
		fmt.Fprintln(in, "mem")
		if !out.Scan() {
			b.Fatal("the server did not answer")
		}
		fmt.Sscan(out.Text(), &heap, &stack, &goroutines)
		return heap, stack, goroutines
	}
	// Warm up with one client so that one-time costs are in the base.
	warm := openStreams(b, addr, dialCreds, 1)
	baseH, baseS, baseG := measure()
	streams := openStreams(b, addr, dialCreds, n)
	h, s, g := measure()
	per := func(v, base float64) float64 { return (v - base) / float64(n) }
	b.ReportMetric(per(h+s, baseH+baseS), "server-B/conn")
	b.ReportMetric(per(h, baseH), "server-heap-B/conn")
	b.ReportMetric(per(s, baseS), "server-stack-B/conn")
	b.ReportMetric(per(g, baseG), "server-goroutines/conn")
	for _, c := range append(streams, warm...) {
		c()
	}
	for range b.N {
	}
}

// openStreams opens n BalanceLoad streams, each on its own ClientConn,
// waits for each one's first response, and returns their closers.
func openStreams(b *testing.B, addr string, creds credentials.TransportCredentials, n int) []func() {
	var closers []func()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			b.Fatal(err)
		}
		sctx, scancel := context.WithCancel(context.Background())
		closers = append(closers, func() { scancel(); cc.Close() })
		s, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(sctx)
		if err == nil {
			err = s.Send(initial(fmt.Sprintf("svc-%d", i)))
		}
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil || ctx.Err() != nil {
			b.Fatalf("stream %d: %v", i, err)
		}
	}
	return closers
}
