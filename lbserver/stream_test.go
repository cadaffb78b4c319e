package lbserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
	"github.com/lookaside-lb/lookaside/policy"
)

// countingSeeds gives each stream its own seed, 0, 1, 2, …, so that
// round_robin rotates their lists.
func countingSeeds(s *Server) {
	var n atomic.Uint64
	s.seed = func() uint64 { return n.Add(1) - 1 }
}

// currentPlan returns the plan the server's service name balances with.
func currentPlan(t *testing.T, s *Server, name string) *plan {
	t.Helper()
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	svc := s.reg.services[name]
	if svc == nil {
		t.Fatalf("service %q not watched", name)
	}
	return svc.cur.Load()
}

// TestListsEncodedOnce: streams that get the same list from a plan share
// one list, encoded once; what each client decodes is exactly the list
// the policy chose for it, also for a client whose messages are
// compressed (its responses are compressed, so it gets the list encoded
// for it alone).
func TestListsEncodedOnce(t *testing.T) {
	src := newFakeSource(snap("enc", ep("a", "10.0.0.1:1"), ep("b", "10.0.0.2:2"), ep("c", "10.0.0.3:3")))
	cfg := testConfig(src)
	cfg.LoadReports = false
	s, addr := serveAt(t, cfg, countingSeeds)
	c := dialFrom(t, addr, "127.0.0.1")
	gz := dialFrom(t, addr, "127.0.0.1", grpc.WithDefaultCallOptions(grpc.UseCompressor(gzip.Name)))

	got := map[string]int{} // list → streams that got it
	// The compressed stream comes first: it must not encode the list
	// it gets for the streams after it.
	got[strings.Join(recvList(t, openOK(t, gz, "enc")), ",")]++
	p := currentPlan(t, s, "enc")
	p.lists.mu.Lock()
	for _, l := range p.lists.lists {
		if l.msg != nil || l.framed != nil {
			t.Errorf("the compressed stream encoded list %v for other streams", addrs(l.resp.GetServerList()))
		}
	}
	p.lists.mu.Unlock()
	for range 11 {
		got[strings.Join(recvList(t, openOK(t, c, "enc")), ",")]++
	}
	if p2 := currentPlan(t, s, "enc"); p2 != p {
		t.Fatal("the plan changed")
	}
	pr := p.prepare()
	// What round_robin chooses for seeds 0-11 (the streams have no
	// previous list; Assigned changes nothing in round_robin's choice).
	want := map[string]int{}
	for seed := range 12 {
		entries := pr.List(policy.StreamInput{Client: policy.Client{Seed: uint64(seed)}, Assigned: make([]int, 3)})
		var l []string
		for _, e := range entries {
			l = append(l, p.snap.Endpoints[e.Index].Addr.String())
		}
		want[strings.Join(l, ",")]++
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("lists the clients decoded (list: streams) %v, want %v", got, want)
	}
	p.lists.mu.Lock()
	defer p.lists.mu.Unlock()
	if len(p.lists.lists) != len(want) {
		t.Errorf("the plan holds %d lists, want one per distinct list (%d)", len(p.lists.lists), len(want))
	}
	for _, l := range p.lists.lists {
		// The balancer's own transport shares framed bytes; grpc's, a
		// PreparedMsg.
		if encoded := l.msg != nil || l.framed != nil; !encoded {
			t.Errorf("list %v was not encoded once for its streams", addrs(l.resp.GetServerList()))
		}
		if !l.cached {
			t.Errorf("list %v in the cache is not marked cached", addrs(l.resp.GetServerList()))
		}
	}
}

// TestPlanListKeys: lists are shared by their entries; a drop with
// another token than the plan's is never shared; a plan keeps at most
// maxCachedLists lists and makes the others per stream.
func TestPlanListKeys(t *testing.T) {
	var eps []discovery.Endpoint
	for i := range 20 {
		eps = append(eps, ep(fmt.Sprintf("e%02d", i), fmt.Sprintf("10.0.0.%d:80", i+1)))
	}
	p := newPlan(discovery.Snapshot{Service: "k", Endpoints: eps}, "round_robin", nil, nil)
	p.dropToken = "drop-x"
	a := p.list([]policy.Entry{{Index: 1}, {Index: 0}, {Drop: true, DropToken: "drop-x"}})
	if b := p.list([]policy.Entry{{Index: 1}, {Index: 0}, {Drop: true, DropToken: "drop-x"}}); b != a {
		t.Error("the same entries made two lists")
	}
	if got := addrs(a.resp.GetServerList()); strings.Join(got, ",") != "10.0.0.2:80,10.0.0.1:80,drop:drop-x" {
		t.Errorf("list %v", got)
	}
	if strings.Join(a.ids, ",") != "e01,e00" {
		t.Errorf("ids %v, want [e01 e00]", a.ids)
	}
	for _, other := range [][]policy.Entry{
		{{Index: 0}, {Index: 1}, {Drop: true, DropToken: "drop-x"}},
		{{Index: 1}, {Index: 0}},
		{{Index: 1}, {Index: 0}, {Index: 2}},
	} {
		if p.list(other) == a {
			t.Errorf("entries %v share the list of other entries", other)
		}
	}
	if l := p.list([]policy.Entry{{Index: 1}, {Drop: true, DropToken: "drop-y"}}); l.cached || p.list([]policy.Entry{{Index: 1}, {Drop: true, DropToken: "drop-y"}}) == l {
		t.Error("a drop with a token other than the plan's was shared")
	}
	// Fill the cache: the lists past the bound are made per stream.
	for i := 0; len(p.lists.lists) < maxCachedLists; i++ {
		p.list([]policy.Entry{{Index: i % 20}, {Index: (i / 20) % 20}, {Index: i / 400}})
	}
	l := p.list([]policy.Entry{{Index: 19}, {Index: 19}, {Index: 19}, {Index: 19}})
	if l.cached || len(p.lists.lists) != maxCachedLists {
		t.Errorf("past the bound: list cached %v, %d lists kept, want uncached and %d", l.cached, len(p.lists.lists), maxCachedLists)
	}
	if got := l.message(&streamState{shared: true}); got != l.resp {
		t.Errorf("an uncached list sends %T, want its response", got)
	}
}

// TestEncodedListDecodes: the message encoded once decodes to exactly
// the list's response.
func TestEncodedListDecodes(t *testing.T) {
	p := newPlan(snap("d", ep("a", "10.0.0.1:1"), ep("b", "[2001:db8::1]:2")), "round_robin", nil, nil)
	p.dropToken = "drop-t"
	l := p.list([]policy.Entry{{Index: 1}, {Drop: true, DropToken: "drop-t"}, {Index: 0}})
	b, err := proto.Marshal(l.resp)
	if err != nil {
		t.Fatal(err)
	}
	var back lbpb.LoadBalanceResponse
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(addrs(back.GetServerList()), ","); got != "[2001:db8::1]:2,drop:drop-t,10.0.0.1:1" {
		t.Errorf("decoded %v", got)
	}
}

// fakeTransportStream is what grpc.ServerTransportStreamFromContext
// returns, with the encoding shareable reads.
type fakeTransportStream struct {
	grpc.ServerTransportStream
	recv, send, sub string
}

func (f fakeTransportStream) RecvCompress() string   { return f.recv }
func (f fakeTransportStream) SendCompress() string   { return f.send }
func (f fakeTransportStream) ContentSubtype() string { return f.sub }

func TestShareable(t *testing.T) {
	for _, tc := range []struct {
		name string
		ts   grpc.ServerTransportStream
		want bool
	}{
		{"plain", fakeTransportStream{}, true},
		{"proto subtype, identity", fakeTransportStream{recv: "identity", send: "identity", sub: "proto"}, true},
		{"client compresses", fakeTransportStream{recv: "gzip"}, false},
		{"server compresses", fakeTransportStream{send: "gzip"}, false},
		{"other codec", fakeTransportStream{sub: "json"}, false},
		{"grpc does not tell", struct{ grpc.ServerTransportStream }{}, false},
		{"no transport stream", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.MD{})
			if tc.ts != nil {
				ctx = grpc.NewContextWithServerTransportStream(ctx, tc.ts)
			}
			if got := shareable(ctx); got != tc.want {
				t.Errorf("shareable = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestListChangesInOrder: every stream ends with the last plan's list
// and never gets an older list after a newer one, however fast plans
// change.
func TestListChangesInOrder(t *testing.T) {
	const streams, changes = 20, 40
	mk := func(port int) discovery.Snapshot {
		return snap("ord", ep("a", fmt.Sprintf("10.0.0.1:%d", port)), ep("b", fmt.Sprintf("10.0.0.2:%d", port)))
	}
	src := newFakeSource(mk(1000))
	cfg := testConfig(src)
	cfg.LoadReports = false
	_, addr := serveAt(t, cfg, countingSeeds)
	c := dialFrom(t, addr, "127.0.0.1")
	var ss []lbStream
	for range streams {
		st := openOK(t, c, "ord")
		recvList(t, st)
		ss = append(ss, st)
	}
	for port := 1001; port <= 1000+changes; port++ {
		src.Push(mk(port))
	}
	for i, st := range ss {
		last := 1000
		for last != 1000+changes {
			l := recvList(t, st)
			var port int
			for _, a := range l {
				_, p, _ := strings.Cut(a, ":")
				fmt.Sscan(p, &port)
				if port != 0 {
					break
				}
			}
			if port <= last {
				t.Fatalf("stream %d: list of port %d after port %d", i, port, last)
			}
			last = port
		}
	}
}

// lbserverGoroutines counts the goroutines running lbserver code whose
// stack names fn.
func lbserverGoroutines(fn string) int {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// TestGoroutinesPerStream: an open stream with its list costs lbserver
// no goroutine at rest on the balancer's own transport (it parks; its
// connection's reader hands it the client's messages), and two on grpc's,
// the handler and its receive loop; a send's goroutine ends with the
// send.
func TestGoroutinesPerStream(t *testing.T) {
	const streams = 40
	src := newFakeSource(snap("gor", ep("a", "10.0.0.1:1")))
	cfg := testConfig(src)
	perStream := 0
	if cfg.Transport == TransportGRPC {
		perStream = 2
	}
	cfg.LoadReports = false
	_, addr := serveAt(t, cfg)
	c := dialFrom(t, addr, "127.0.0.1")
	// One stream first, so that the connection and the watch are there.
	recvList(t, openOK(t, c, "gor"))
	// The handlers, resumed or not, and the receive loops they start
	// (created by recvloop.Start).
	count := func() int {
		return streamGoroutines() + lbserverGoroutines("recvloop.Start")
	}
	// The first stream parks just after the client got its list.
	waitUntil(t, "the first stream at rest", func() bool { return count() == perStream })
	before, total := count(), runtime.NumGoroutine()
	for range streams {
		recvList(t, openOK(t, c, "gor"))
	}
	// The last sends' goroutines end just after the client got the list.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := count() - before
		if got == perStream*streams {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d streams: %d more lbserver goroutines, want %d (%d per stream, transport %s)", streams, got, perStream*streams, perStream, cfg.Transport)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A send's goroutine ends just after its Send returned, which can be
	// after the client got the list.
	for got := lbserverGoroutines("lbserver.(*streamState).send"); got != 0; got = lbserverGoroutines("lbserver.(*streamState).send") {
		if time.Now().After(deadline) {
			t.Fatalf("%d send goroutines with no send pending", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The process's count also has the client's: grpc-go watches each
	// client stream's context in a goroutine.
	if d := runtime.NumGoroutine() - total; d > (perStream+1)*streams {
		t.Errorf("%d streams added %d goroutines, want at most %d (%d in lbserver, 1 in the client per stream)", streams, d, (perStream+1)*streams, perStream)
	}
}

// streamGoroutines counts the goroutines of stream handlers: those in
// BalanceLoad, and those of parked streams resumed.
func streamGoroutines() int {
	return lbserverGoroutines("lbserver.(*Server).BalanceLoad") + lbserverGoroutines("lbserver.(*streamState).resumed")
}

// TestParkedStreams: streams at rest on the own transport hold no
// goroutine, and each thing a stream waits for still reaches it: a new
// plan (every stream gets the new list, and parks again), a request
// (ClientStats are counted), the client's end, a reconfiguration that
// maps the stream's name elsewhere, and the server's close.
func TestParkedStreams(t *testing.T) {
	const streams = 30
	src := newFakeSource(snap("parked", ep("a", "10.0.0.1:1")), snap("other", ep("o", "10.0.0.9:1")))
	cfg := testConfig(src)
	if cfg.Transport == TransportGRPC {
		t.Skip("streams park on the own transport only")
	}
	cfg.LoadReports = false
	s, addr := serveAt(t, cfg)
	c := dialFrom(t, addr, "127.0.0.1")
	var ss []lbStream
	for range streams {
		st := openOK(t, c, "parked")
		if got := recvList(t, st); len(got) != 1 {
			t.Fatalf("first list %v", got)
		}
		ss = append(ss, st)
	}
	atRest := func(what string) {
		t.Helper()
		waitUntil(t, what, func() bool { return streamGoroutines() == 0 })
	}
	atRest("every stream parked")

	// A new plan wakes them all; each sends the new list and parks again.
	src.Push(snap("parked", ep("a", "10.0.0.1:1"), ep("b", "10.0.0.2:1")))
	for i, st := range ss {
		if got := recvList(t, st); len(got) != 2 {
			t.Fatalf("stream %d: list %v after the change, want 2 entries", i, got)
		}
	}
	atRest("every stream parked again after the change")

	// A request wakes its stream.
	before := s.ClientStats().Service("parked").KnownReceived
	if err := ss[0].Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{
		ClientStats: &lbpb.ClientStats{NumCallsStarted: 5, NumCallsFinished: 5, NumCallsFinishedKnownReceived: 5}}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the parked stream's ClientStats counted", func() bool {
		return s.ClientStats().Service("parked").KnownReceived > before
	})
	atRest("the stream parked after its request")

	// The client's end (a half-close) ends its parked stream.
	active := s.Stats().StreamsActive
	if err := ss[1].CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := recvUntilEnd(t, ss[1]); err != io.EOF {
		t.Fatalf("half-closed stream ended with %v, want OK", err)
	}
	waitUntil(t, "the half-closed stream's end", func() bool { return s.Stats().StreamsActive == active-1 })

	// A reconfiguration that maps the name elsewhere moves the parked
	// streams: they get the other service's list.
	set := s.Settings()
	set.Aliases = map[string]string{"parked": "other"}
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	for i, st := range ss[2:] {
		if got := recvList(t, st); len(got) != 1 || got[0] != "10.0.0.9:1" {
			t.Fatalf("stream %d: list %v after the alias, want the other service's", i+2, got)
		}
	}
	atRest("the moved streams parked")

	// Close ends every parked stream, cleanly.
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with parked streams open")
	}
	for i, st := range ss[2:] {
		if err := recvUntilEnd(t, st); err != io.EOF {
			t.Errorf("stream %d ended with %v at the close, want OK", i+2, err)
		}
	}
}

// TestStreamLogAttributes: the stream's logger, made at its first use,
// names the stream, its peer and its service.
func TestStreamLogAttributes(t *testing.T) {
	src := newFakeSource(snap("logged", ep("a", "10.0.0.1:1")))
	cfg := testConfig(src)
	cfg.LoadReports = false
	var logs syncbuf.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, addr := serveAt(t, cfg)
	recvList(t, openOK(t, dialFrom(t, addr, "127.0.0.1"), "logged"))
	waitUntil(t, "the stream's debug line for its list", func() bool { return strings.Contains(logs.String(), `msg="sent list"`) })
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, `msg="sent list"`) {
			continue
		}
		for _, want := range []string{"stream=", "peer=127.0.0.1:", `service="\"logged\""`, "entries=1"} {
			if !strings.Contains(line, want) {
				t.Errorf("line %q lacks %s", line, want)
			}
		}
	}
}
