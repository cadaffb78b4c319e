package xds

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	lrspb "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/lookaside-lb/lookaside/internal/recvloop"
)

// Bounds of one load report: a report beyond them ends its stream with
// InvalidArgument.
const (
	// MaxReportClusters bounds the clusters of one LoadStatsRequest.
	MaxReportClusters = 1000
	// MaxReportLocalities bounds the localities of one cluster's stats.
	MaxReportLocalities = MaxEndpoints
	// MaxDropCategories bounds the drop categories of one cluster's stats.
	MaxDropCategories = 16
	// MinLoadInterval and MaxLoadInterval bound LRSOptions.Interval.
	MinLoadInterval = 100 * time.Millisecond
	MaxLoadInterval = 10 * time.Minute
)

// ClusterLoad is one client's report for one cluster: calls since its
// previous report, summed over the cluster's localities.
type ClusterLoad struct {
	Cluster string
	// Interval is the span the client says the counts cover.
	Interval time.Duration
	// Issued calls were started; Succeeded and Errored finished;
	// InProgress are running at the report.
	Issued, Succeeded, Errored, InProgress uint64
	// Dropped counts the calls the client dropped, by category (at most
	// MaxDropCategories), and TotalDropped all of them.
	Dropped      map[string]uint64
	TotalDropped uint64
	// Localities counts issued calls by locality sub-zone: the endpoint
	// ID under ShapeWeighted ("" for the one locality of other shapes).
	Localities map[string]uint64
}

// LoadSink receives what xDS clients report over LRS. Implementations
// must be safe for concurrent use and must not block; they should distrust
// the counts as they distrust grpclb ClientStats.
type LoadSink interface {
	// Load takes the loads of one report on LRS stream id (unique in the
	// process) from the client at peer.
	Load(id uint64, peer netip.AddrPort, loads []ClusterLoad)
	// Forget is called once stream id has ended.
	Forget(id uint64)
}

// LRSServer is the Load Reporting Service gRPC's xDS clients send their
// call counts to when a Cluster names an lrs_server (Options.LRS). It asks
// every client for all its clusters at a fixed interval. Safe for
// concurrent use.
type LRSServer struct {
	lrspb.UnimplementedLoadReportingServiceServer

	sink     LoadSink
	interval time.Duration
}

// streamIDs numbers LRS streams across servers.
var streamIDs atomic.Uint64

// NewLRS returns an LRS server that asks for reports every interval (in
// [MinLoadInterval, MaxLoadInterval]) and hands them to sink.
func NewLRS(sink LoadSink, interval time.Duration) (*LRSServer, error) {
	if interval < MinLoadInterval || interval > MaxLoadInterval {
		return nil, fmt.Errorf("xds: load report interval %v is not in [%v, %v]", interval, MinLoadInterval, MaxLoadInterval)
	}
	return &LRSServer{sink: sink, interval: interval}, nil
}

// Register registers s as the LRS service of gs.
func (s *LRSServer) Register(gs grpc.ServiceRegistrar) {
	lrspb.RegisterLoadReportingServiceServer(gs, s)
}

// StreamLoadStats answers the client's first request with the report
// interval and all clusters, then hands every report to the sink until the
// client ends the stream. It runs on the stream's goroutine only.
func (s *LRSServer) StreamLoadStats(stream lrspb.LoadReportingService_StreamLoadStatsServer) error {
	first, err := stream.Recv()
	if err != nil {
		return recvEnd(err)
	}
	id := streamIDs.Add(1)
	defer s.sink.Forget(id)
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	peer := peerOf(ctx)
	if err := stream.Send(&lrspb.LoadStatsResponse{
		SendAllClusters:       true,
		LoadReportingInterval: durationpb.New(s.interval),
	}); err != nil {
		return err
	}
	// Reports are received on their own goroutine, which ends with the
	// stream, so that the handler returns as soon as ctx ends (the stream
	// given may have a context that ends before the client's stream does).
	reqs, recvErr := recvloop.Start(ctx, stream.Recv)
	for req := first; ; {
		loads, err := Loads(req)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if len(loads) > 0 {
			s.sink.Load(id, peer, loads)
		}
		select {
		case req = <-reqs:
		case err := <-recvErr:
			return recvEnd(err)
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// Loads validates one LoadStatsRequest against the bounds and returns its
// clusters' loads. Clusters without a name are skipped.
func Loads(req *lrspb.LoadStatsRequest) ([]ClusterLoad, error) {
	cs := req.GetClusterStats()
	if len(cs) > MaxReportClusters {
		return nil, fmt.Errorf("xds: load report with %d clusters, at most %d", len(cs), MaxReportClusters)
	}
	var out []ClusterLoad
	for _, c := range cs {
		if c.GetClusterName() == "" {
			continue
		}
		if n := len(c.GetUpstreamLocalityStats()); n > MaxReportLocalities {
			return nil, fmt.Errorf("xds: load report for %d localities, at most %d", n, MaxReportLocalities)
		}
		if n := len(c.GetDroppedRequests()); n > MaxDropCategories {
			return nil, fmt.Errorf("xds: load report with %d drop categories, at most %d", n, MaxDropCategories)
		}
		l := ClusterLoad{Cluster: c.GetClusterName(), TotalDropped: c.GetTotalDroppedRequests()}
		if d := c.GetLoadReportInterval(); d != nil && d.CheckValid() == nil && d.AsDuration() > 0 {
			l.Interval = d.AsDuration()
		}
		for _, ls := range c.GetUpstreamLocalityStats() {
			l.Issued = addSat(l.Issued, ls.GetTotalIssuedRequests())
			l.Succeeded = addSat(l.Succeeded, ls.GetTotalSuccessfulRequests())
			l.Errored = addSat(l.Errored, ls.GetTotalErrorRequests())
			l.InProgress = addSat(l.InProgress, ls.GetTotalRequestsInProgress())
			if l.Localities == nil {
				l.Localities = map[string]uint64{}
			}
			sz := ls.GetLocality().GetSubZone()
			l.Localities[sz] = addSat(l.Localities[sz], ls.GetTotalIssuedRequests())
		}
		for _, d := range c.GetDroppedRequests() {
			if l.Dropped == nil {
				l.Dropped = map[string]uint64{}
			}
			l.Dropped[d.GetCategory()] = addSat(l.Dropped[d.GetCategory()], d.GetDroppedCount())
		}
		out = append(out, l)
	}
	return out, nil
}

// addSat adds without wrapping around.
func addSat(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint64(0)
}

// recvEnd turns the error that ended a receive loop into the stream's
// result: nil when the client ended it.
func recvEnd(err error) error {
	if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled || errors.Is(err, errEOF) {
		return nil
	}
	return err
}
