package xds_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/xds"
)

// oneFeed serves one assignment under every name; set replaces it and
// notifies every subscription. Cheaper than fakeFeed, so that a benchmark
// measures the server rather than the feed.
type oneFeed struct {
	cur    atomic.Pointer[xds.Assignment]
	mu     sync.Mutex
	notify map[*oneSub]func() // guarded by mu
}

type oneSub struct{ f *oneFeed }

func newOneFeed(a xds.Assignment) *oneFeed {
	f := &oneFeed{notify: map[*oneSub]func(){}}
	f.cur.Store(&a)
	return f
}

func (f *oneFeed) set(a xds.Assignment) {
	f.cur.Store(&a)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fn := range f.notify {
		fn()
	}
}

func (f *oneFeed) Subscribe(_ string, notify func()) (xds.Subscription, error) {
	s := &oneSub{f: f}
	f.mu.Lock()
	f.notify[s] = notify
	f.mu.Unlock()
	return s, nil
}

func (s *oneSub) Assignment() (xds.Assignment, bool) { return *s.f.cur.Load(), true }

func (s *oneSub) Close() {
	s.f.mu.Lock()
	delete(s.f.notify, s)
	s.f.mu.Unlock()
}

// memStream is an ADS stream in memory, played by a client that ACKs
// every response. Send marshals the response, as grpc would, and hands
// it to onSend.
type memStream struct {
	grpc.ServerStream // nil: only Context, Send and Recv are used
	ctx               context.Context
	reqs              chan *discoverypb.DiscoveryRequest
	onSend            func(*discoverypb.DiscoveryResponse)
}

func newMemStream(ctx context.Context, onSend func(*discoverypb.DiscoveryResponse)) *memStream {
	return &memStream{ctx: ctx, reqs: make(chan *discoverypb.DiscoveryRequest, 16), onSend: onSend}
}

func (m *memStream) Context() context.Context { return m.ctx }

func (m *memStream) Recv() (*discoverypb.DiscoveryRequest, error) {
	select {
	case r := <-m.reqs:
		return r, nil
	case <-m.ctx.Done():
		return nil, m.ctx.Err()
	}
}

// Send runs on the handler's goroutine only.
func (m *memStream) Send(r *discoverypb.DiscoveryResponse) error {
	if _, err := proto.Marshal(r); err != nil {
		return err
	}
	m.reqs <- request(r.TypeUrl, r.VersionInfo, r.Nonce, "svc")
	m.onSend(r)
	return nil
}

// BenchmarkFanOut measures what one change of a service's endpoints costs
// the server per subscribed ADS stream: 1,000 in-memory streams each
// subscribed to the service's Listener, Route, Cluster and endpoints, one
// endpoint leaving or coming back per op, until every stream has sent its
// new ClusterLoadAssignment (and marshalled it, as grpc would). Reports
// ns/sub and allocs/sub, and sends/sub (responses per stream per change:
// 1 when only the endpoints go out).
func BenchmarkFanOut(b *testing.B) {
	const streams = 1000
	eps := make([]xds.Endpoint, 10)
	for i := range eps {
		eps[i] = xds.Endpoint{ID: fmt.Sprintf("b%d", i), Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080), Weight: 1}
	}
	full := xds.Assignment{Cluster: "svc", Endpoints: eps, Drops: []xds.Drop{{Category: "drop-overload", Share: 0.1}}}
	less := full
	less.Endpoints = eps[1:]
	feed := newOneFeed(full)
	srv := xds.New(feed, xds.Options{LRS: true})

	ctx, cancel := context.WithCancel(context.Background())
	var handlers sync.WaitGroup
	var eds, all atomic.Int64
	done := make(chan struct{}, 1)
	var want atomic.Int64
	onSend := func(r *discoverypb.DiscoveryResponse) {
		all.Add(1)
		if r.TypeUrl == xds.EndpointType && eds.Add(1) == want.Load() {
			done <- struct{}{}
		}
	}
	wait := func(n int64) {
		select {
		case <-done:
		case <-time.After(time.Minute):
			b.Fatalf("%d of %d endpoint responses after a minute", eds.Load(), n)
		}
	}
	want.Store(streams)
	ss := make([]*memStream, streams)
	for i := range ss {
		ss[i] = newMemStream(ctx, onSend)
		for _, url := range []string{xds.ListenerType, xds.RouteType, xds.ClusterType, xds.EndpointType} {
			ss[i].reqs <- request(url, "", "", "svc")
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			srv.StreamAggregatedResources(ss[i])
		}()
	}
	wait(streams)
	defer func() {
		cancel()
		handlers.Wait()
	}()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	sentBefore := all.Load()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		want.Add(streams)
		if i%2 == 0 {
			feed.set(less)
		} else {
			feed.set(full)
		}
		wait(want.Load())
	}
	elapsed := time.Since(start)
	b.StopTimer()
	runtime.ReadMemStats(&after)
	subs := float64(b.N) * streams
	b.ReportMetric(float64(elapsed.Nanoseconds())/subs, "ns/sub")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/subs, "allocs/sub")
	b.ReportMetric(float64(all.Load()-sentBefore)/subs, "sends/sub")
}
