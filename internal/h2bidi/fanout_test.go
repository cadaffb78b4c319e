package h2bidi

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// broadcast hands each change to every stream's handler.
type broadcast struct {
	mu  sync.Mutex
	gen int
	ch  chan struct{} // closed at the next change
}

func newBroadcast() *broadcast { return &broadcast{ch: make(chan struct{})} }

func (b *broadcast) next() {
	b.mu.Lock()
	b.gen++
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}

func (b *broadcast) current() (int, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gen, b.ch
}

func genList(gen int) *lbpb.LoadBalanceResponse {
	servers := make([]*lbpb.Server, 10)
	for i := range servers {
		servers[i] = &lbpb.Server{IpAddress: []byte{10, 0, 0, byte(i)}, Port: 8080, LoadBalanceToken: strconv.Itoa(gen)}
	}
	return &lbpb.LoadBalanceResponse{LoadBalanceResponseType: &lbpb.LoadBalanceResponse_ServerList{ServerList: &lbpb.ServerList{Servers: servers}}}
}

// BenchmarkFanOut measures how long one change takes to reach every one
// of 1,000 BalanceLoad clients (each on a ClientConn of its own, in this
// process, so the figures compare transports rather than predict a
// deployment): p50, p99 and max over the clients and b.N changes.
func BenchmarkFanOut(b *testing.B) {
	for _, kind := range []string{"h2bidi", "grpc"} {
		b.Run(kind, func(b *testing.B) { benchFanOut(b, kind, 1000) })
	}
}

func benchFanOut(b *testing.B, kind string, n int) {
	bc := newBroadcast()
	var lists sync.Map // gen → the change's list, framed
	frameOf := func(gen int) []byte {
		if v, ok := lists.Load(gen); ok {
			return v.([]byte)
		}
		p, _ := proto.Marshal(genList(gen))
		v, _ := lists.LoadOrStore(gen, Frame(p))
		return v.([]byte)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	switch kind {
	case "h2bidi":
		srv, err := New(Config[req]{Method: method, Unmarshal: unmarshalReq, Handler: func(st *Stream[req]) error {
			gen, changed := bc.current()
			if err := st.Send(frameOf(gen)); err != nil {
				return err
			}
			for {
				select {
				case <-st.Ready():
					for {
						_, ok, err := st.Next()
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
					}
				case <-changed:
					gen, changed = bc.current()
					if err := st.Send(frameOf(gen)); err != nil {
						return err
					}
				}
			}
		}})
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(lis)
		defer srv.Stop()
	case "grpc":
		gs := grpc.NewServer()
		lbpb.RegisterLoadBalancerServer(gs, fanOutLB{bc: bc})
		go gs.Serve(lis)
		defer gs.Stop()
	}

	type got struct {
		gen int
		at  time.Time
	}
	recvd := make(chan got, n)
	ctx, cancel := context.WithCancel(context.Background())
	var clients sync.WaitGroup
	defer func() { cancel(); clients.Wait() }()
	for i := range n {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		s, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
		if err == nil {
			err = s.Send(initial(fmt.Sprint("svc-", i)))
		}
		if err == nil {
			_, err = s.Recv() // the initial list
		}
		if err != nil {
			b.Fatalf("client %d: %v", i, err)
		}
		clients.Add(1)
		go func() {
			defer clients.Done()
			for {
				resp, err := s.Recv()
				if err != nil {
					return
				}
				gen, _ := strconv.Atoi(resp.GetServerList().GetServers()[0].GetLoadBalanceToken())
				recvd <- got{gen, time.Now()}
			}
		}()
	}
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		bc.next()
		gen, _ := bc.current()
		timeout := time.After(time.Minute)
		for k := 0; k < n; {
			select {
			case g := <-recvd:
				if g.gen == gen {
					lat = append(lat, g.at.Sub(start))
					k++
				}
			case <-timeout:
				b.Fatalf("change %d reached %d of %d clients in a minute", gen, k, n)
			}
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
}

// fanOutLB is the same handler on grpc.Server, with the receive loop on a
// goroutine of its own.
type fanOutLB struct {
	lbpb.UnimplementedLoadBalancerServer
	bc *broadcast
}

func (f fanOutLB) BalanceLoad(s lbpb.LoadBalancer_BalanceLoadServer) error {
	errs := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				errs <- err
				return
			}
		}
	}()
	gen, changed := f.bc.current()
	if err := s.Send(genList(gen)); err != nil {
		return err
	}
	for {
		select {
		case err := <-errs:
			if err == io.EOF {
				<-s.Context().Done()
				return nil
			}
			return err
		case <-changed:
			gen, changed = f.bc.current()
			if err := s.Send(genList(gen)); err != nil {
				return err
			}
		}
	}
}
