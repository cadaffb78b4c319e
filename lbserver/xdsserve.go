package lbserver

import (
	"context"
	"maps"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/xds"
)

// The resource types whose NACKs are counted (Stats.XDSNACKs), by the
// short names metrics label them with.
var xdsTypes = [...]struct{ url, name string }{
	{xds.ListenerType, "listener"},
	{xds.RouteType, "route"},
	{xds.ClusterType, "cluster"},
	{xds.EndpointType, "endpoint"},
}

// countNACK counts a NACK of resource type url. Safe for concurrent use.
func (s *Server) countNACK(url, _ string) {
	for i, t := range xdsTypes {
		if t.url == url {
			s.counters.xdsNACKs[i].Add(1)
			return
		}
	}
}

// xdsNACKs returns the NACK counts by short type name.
func (s *Server) xdsNACKs() map[string]int64 {
	out := make(map[string]int64, len(xdsTypes))
	for i, t := range xdsTypes {
		out[t.name] = s.counters.xdsNACKs[i].Load()
	}
	return out
}

// xdsLoadInterval is how often xDS clients are asked for load reports:
// ClientStatsInterval (10 s by default), within the LRS bounds.
func (s *Server) xdsLoadInterval() time.Duration {
	d := s.cfg.ClientStatsInterval
	if d == 0 {
		d = 10 * time.Second
	}
	return min(max(d, xds.MinLoadInterval), xds.MaxLoadInterval)
}

// registerXDS registers the xDS face on gs: ADS from XDSFeed, with
// Clusters pointing clients at the LRS service, whose reports count as
// ClientStats do. Their streams end when the server closes, as BalanceLoad
// streams do.
func (s *Server) registerXDS(gs *grpc.Server) error {
	ads := xds.New(s.XDSFeed(), xds.Options{LRS: true, Logger: s.base, OnNACK: s.countNACK})
	lrs, err := xds.NewLRS(&xdsLoads{s: s, keys: map[uint64]map[clientstats.ClientKey]bool{}}, s.xdsLoadInterval())
	if err != nil {
		return err
	}
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, closingADS{ads, s})
	lrspb.RegisterLoadReportingServiceServer(gs, closingLRS{lrs, s})
	return nil
}

// closingADS is the ADS service counted among the server's streams and
// ended by Close.
type closingADS struct {
	*xds.Server
	s *Server
}

func (c closingADS) StreamAggregatedResources(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return c.s.untilClosed(stream.Context(), func(ctx context.Context) error {
		return c.Server.StreamAggregatedResources(adsStream{stream, ctx})
	})
}

type adsStream struct {
	discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	ctx context.Context
}

func (a adsStream) Context() context.Context { return a.ctx }

// closingLRS is the LRS service counted among the server's streams and
// ended by Close.
type closingLRS struct {
	*xds.LRSServer
	s *Server
}

func (c closingLRS) StreamLoadStats(stream lrspb.LoadReportingService_StreamLoadStatsServer) error {
	return c.s.untilClosed(stream.Context(), func(ctx context.Context) error {
		return c.LRSServer.StreamLoadStats(lrsStream{stream, ctx})
	})
}

type lrsStream struct {
	lrspb.LoadReportingService_StreamLoadStatsServer
	ctx context.Context
}

func (l lrsStream) Context() context.Context { return l.ctx }

// untilClosed runs serve, counted among the server's streams and within
// the stream limits (in total, per IP, per connection, and the rate per
// IP, as BalanceLoad streams), with a context that ends with ctx or when
// the server closes; a stream ended by the close returns Unavailable, so
// that its client goes to another replica. Blocks until serve returns.
func (s *Server) untilClosed(ctx context.Context, serve func(context.Context) error) error {
	if !s.enter() {
		return status.Error(codes.Unavailable, "lbserver: shutting down")
	}
	defer s.streams.Done()
	peer := peerOf(ctx)
	if lim, ok := s.slots.take(peer); !ok {
		s.refuse(lim, peer)
		return s.refusedStatus(lim)
	}
	defer s.slots.give(peer)
	if !s.rates.take(peer.Addr()) {
		s.refuse(limitStreamRatePerIP, peer)
		return s.refusedStatus(limitStreamRatePerIP)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.closingCtx, cancel) // no goroutine per stream
	defer stop()
	err := serve(ctx)
	select {
	case <-s.closing:
		return status.Error(codes.Unavailable, "lbserver: shutting down")
	default:
		return err
	}
}

// xdsLoads is the LoadSink of the LRS service: each LRS stream's report
// for a watched service counts as a ClientStats of a client stream (one
// per LRS stream and service), so that xDS clients' calls feed the rate
// limits, metrics and status page as grpclb clients' do. A cluster counts
// for the service its name maps to (byService); reports for services not
// watched count for nothing. Safe for concurrent use.
type xdsLoads struct {
	s    *Server
	mu   sync.Mutex
	keys map[uint64]map[clientstats.ClientKey]bool // guarded by mu: LRS stream → the keys it reported under
}

// lrsStreamBit sets LRS streams' ClientKey.Stream apart from BalanceLoad
// streams' numbers.
const lrsStreamBit = 1 << 63

// Load implements xds.LoadSink.
func (l *xdsLoads) Load(id uint64, peer netip.AddrPort, loads []xds.ClusterLoad) {
	now := time.Now()
	for svc, cl := range l.byService(loads) {
		key := clientstats.ClientKey{Service: svc, Stream: id | lrsStreamBit, Peer: peer.String()}
		l.mu.Lock()
		m := l.keys[id]
		if m == nil {
			m = map[clientstats.ClientKey]bool{}
			l.keys[id] = m
		}
		m[key] = true
		l.mu.Unlock()
		res := l.s.clientStats.Add(key, clientStatsOf(cl), now)
		if res.Verdict != clientstats.Accepted {
			l.s.counters.badClientStats.Add(1)
		}
	}
}

// byService returns loads by the watched service their cluster's name
// maps to (a cluster is named after the name the client dialled), those
// of clusters that map to the same service added up, so that each
// service gets one report per LRS report. Loads whose names map to no
// watched service are left out.
func (l *xdsLoads) byService(loads []xds.ClusterLoad) map[string]xds.ClusterLoad {
	names := l.s.live().names
	out := make(map[string]xds.ClusterLoad, len(loads))
	for _, cl := range loads {
		svc, err := names.Map(cl.Cluster)
		if err != nil || !l.s.reg.has(svc) {
			continue
		}
		if sum, ok := out[svc]; ok {
			sum.Issued = sat64(sum.Issued, cl.Issued)
			sum.Succeeded = sat64(sum.Succeeded, cl.Succeeded)
			sum.Errored = sat64(sum.Errored, cl.Errored)
			sum.InProgress = sat64(sum.InProgress, cl.InProgress)
			sum.TotalDropped = sat64(sum.TotalDropped, cl.TotalDropped)
			dropped := maps.Clone(sum.Dropped)
			for cat, n := range cl.Dropped {
				if dropped == nil {
					dropped = map[string]uint64{}
				}
				dropped[cat] = sat64(dropped[cat], n)
			}
			sum.Dropped = dropped
			cl = sum
		}
		out[svc] = cl
	}
	return out
}

// Forget implements xds.LoadSink.
func (l *xdsLoads) Forget(id uint64) {
	l.mu.Lock()
	m := l.keys[id]
	delete(l.keys, id)
	l.mu.Unlock()
	for key := range m {
		l.s.clientStats.Forget(key)
	}
}

// clientStatsOf converts one xDS load report to the ClientStats a grpclb
// client would have sent for the same calls. A grpclb client counts a
// dropped call as started and finished (and under its drop token), an xDS
// client only as dropped: drops are added to started and finished, so that
// the offered rate a rate limit measures includes them as it does for
// grpclb clients.
func clientStatsOf(cl xds.ClusterLoad) *lbpb.ClientStats {
	done := sat64(cl.Succeeded, cl.Errored)
	cs := &lbpb.ClientStats{
		NumCallsStarted:               int64c(sat64(cl.Issued, cl.TotalDropped)),
		NumCallsFinished:              int64c(sat64(done, cl.TotalDropped)),
		NumCallsFinishedKnownReceived: int64c(done),
	}
	for _, cat := range slices.Sorted(maps.Keys(cl.Dropped)) {
		cs.CallsFinishedWithDrop = append(cs.CallsFinishedWithDrop, &lbpb.ClientStatsPerToken{LoadBalanceToken: cat, NumCalls: int64c(cl.Dropped[cat])})
	}
	return cs
}

func sat64(a, b uint64) uint64 {
	if a+b < a {
		return math.MaxUint64
	}
	return a + b
}

func int64c(v uint64) int64 { return int64(min(v, math.MaxInt64)) }
