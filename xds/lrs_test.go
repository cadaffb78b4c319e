package xds_test

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/lookaside-lb/lookaside/xds"
	"github.com/lookaside-lb/lookaside/xds/xdstest"
)

// sink sums what clients report, per cluster.
type sink struct {
	mu       sync.Mutex
	issued   map[string]uint64 // guarded by mu
	dropped  map[string]uint64 // guarded by mu: by category
	byLoc    map[string]uint64 // guarded by mu
	streams  map[uint64]bool   // guarded by mu: open streams
	peers    map[netip.Addr]bool
	forgoten int
}

func newSink() *sink {
	return &sink{issued: map[string]uint64{}, dropped: map[string]uint64{}, byLoc: map[string]uint64{},
		streams: map[uint64]bool{}, peers: map[netip.Addr]bool{}}
}

func (s *sink) Load(id uint64, peer netip.AddrPort, loads []xds.ClusterLoad) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[id] = true
	s.peers[peer.Addr()] = true
	for _, l := range loads {
		s.issued[l.Cluster] += l.Issued
		for c, n := range l.Dropped {
			s.dropped[c] += n
		}
		for z, n := range l.Localities {
			s.byLoc[z] += n
		}
	}
}

func (s *sink) Forget(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, id)
	s.forgoten++
}

func (s *sink) get(cluster string) (issued, dropped uint64, byLoc map[string]uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byLoc = map[string]uint64{}
	for k, v := range s.byLoc {
		byLoc[k] = v
	}
	return s.issued[cluster], s.dropped["drop-overload"], byLoc
}

func TestLRSReportsArrive(t *testing.T) {
	bs := xdstest.HealthBackends(t, 2)
	feed := newFeed()
	feed.set(xds.Assignment{Cluster: "user-srv", Shape: xds.ShapeWeighted, Endpoints: endpoints(bs, 1, 3),
		Drops: []xds.Drop{{Category: "drop-overload", Share: 0.1}}})
	snk := newSink()
	lrs, err := xds.NewLRS(snk, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	xds.New(feed, xds.Options{LRS: true}).Register(gs)
	lrs.Register(gs)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	c := xdsClient(t, lis.Addr().String(), "user-srv")
	const n = 400
	got := spread(t, c, n)
	served := uint64(got[bs[0].String()] + got[bs[1].String()])
	var issued, dropped uint64
	var byLoc map[string]uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		issued, dropped, byLoc = snk.get("user-srv")
		if issued+dropped >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if issued != served || issued+dropped != n {
		t.Fatalf("LRS: %d issued and %d dropped reported; the client made %d calls, %d served (%v)", issued, dropped, n, served, got)
	}
	if byLoc["b0"] != uint64(got[bs[0].String()]) || byLoc["b1"] != uint64(got[bs[1].String()]) {
		t.Errorf("LRS per locality %v, calls per backend %v", byLoc, got)
	}
}

func TestNewLRSRejectsIntervals(t *testing.T) {
	for _, d := range []time.Duration{0, xds.MinLoadInterval - 1, xds.MaxLoadInterval + 1} {
		if _, err := xds.NewLRS(newSink(), d); err == nil {
			t.Errorf("interval %v accepted", d)
		}
	}
}
