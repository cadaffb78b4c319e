package loadreport

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// InFlightMetric is the key of OrcaLoadReport.named_metrics under which the
// Reporter sends the number of calls in flight, and under which the
// Collector reads it.
const InFlightMetric = "inflight"

// ConcurrencyMetric is the key of OrcaLoadReport.named_metrics under which
// the Reporter sends the mean number of calls in flight over the load
// window (Metrics.Concurrency), and under which the Collector reads it.
// With the QPS of the same window it gives the endpoint's mean latency by
// Little's law: Concurrency / QPS. Any backend may send it.
const ConcurrencyMetric = "concurrency"

// Defaults and bounds of ReporterConfig.
const (
	DefaultMinInterval    = time.Second
	DefaultMaxInterval    = time.Minute
	DefaultReportInterval = time.Second
	LowestMinInterval     = 10 * time.Millisecond
)

// closedMessage is the message of the Unavailable status that ends the
// streams of a closed Reporter.
const closedMessage = "loadreport: reporter closed (server shutting down)"

// ReporterConfig configures a Reporter. Zero fields get their defaults.
type ReporterConfig struct {
	// MinInterval is the floor of the report interval: a stream that asks
	// for less gets MinInterval. Default 1 s; values under 10 ms are raised
	// to 10 ms. (grpc-go's own orca service has a floor of 30 s.)
	MinInterval time.Duration
	// MaxInterval is the ceiling of the report interval: a stream that asks
	// for more gets MaxInterval. Default 1 min; raised to MinInterval when
	// lower.
	MaxInterval time.Duration
	// DefaultInterval is the interval of a stream whose request has no
	// report_interval (or zero or negative). Default 1 s; clamped to
	// [MinInterval, MaxInterval].
	DefaultInterval time.Duration
	// Logger receives the reporter's logs (component=loadreport). Default
	// slog.Default().
	Logger *slog.Logger
}

// MetricsProvider gives the measurements a Reporter sends. Metrics is
// called once per report, from the stream's goroutine, and must not block;
// Recorder implements it.
type MetricsProvider interface {
	Metrics() Metrics
}

// Reporter serves ORCA's out-of-band load reports
// (xds.service.orca.v3.OpenRcaService/StreamCoreMetrics) at the interval
// each client asks for, within the configured bounds. Each report carries:
//
//	cpu_utilization          Metrics.CPU
//	application_utilization  Metrics.AppUtil
//	rps_fractional           Metrics.QPS
//	eps                      Metrics.EPS
//	utilization              Metrics.Utilization (the named utilizations)
//	named_metrics            {"inflight": Metrics.InFlight,
//	                          "concurrency": Metrics.Concurrency}
//
// The first report goes out as soon as the stream opens. A stream ends when
// its client ends it or when Close is called. Safe for concurrent use.
type Reporter struct {
	orcasvc.UnimplementedOpenRcaServiceServer

	// Read-only after construction.
	src       MetricsProvider
	min, max  time.Duration
	def       time.Duration
	log       *slog.Logger
	newTicker func(d time.Duration) (<-chan time.Time, func()) // seam for tests
	done      chan struct{}                                    // closed by Close

	closeOnce sync.Once
}

var _ orcasvc.OpenRcaServiceServer = (*Reporter)(nil)

// NewReporter returns a Reporter of src's metrics. It rejects a nil src and
// negative intervals, and clamps the others (see ReporterConfig).
func NewReporter(src MetricsProvider, cfg ReporterConfig) (*Reporter, error) {
	if src == nil {
		return nil, errors.New("loadreport: reporter needs a MetricsProvider")
	}
	if cfg.MinInterval < 0 || cfg.MaxInterval < 0 || cfg.DefaultInterval < 0 {
		return nil, fmt.Errorf("loadreport: negative report interval bound (min %v, max %v, default %v)",
			cfg.MinInterval, cfg.MaxInterval, cfg.DefaultInterval)
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	cfg.MinInterval = max(cfg.MinInterval, LowestMinInterval)
	if cfg.MaxInterval == 0 {
		cfg.MaxInterval = DefaultMaxInterval
	}
	cfg.MaxInterval = max(cfg.MaxInterval, cfg.MinInterval)
	if cfg.DefaultInterval == 0 {
		cfg.DefaultInterval = DefaultReportInterval
	}
	cfg.DefaultInterval = min(max(cfg.DefaultInterval, cfg.MinInterval), cfg.MaxInterval)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reporter{
		src:  src,
		min:  cfg.MinInterval,
		max:  cfg.MaxInterval,
		def:  cfg.DefaultInterval,
		log:  cfg.Logger.With("component", "loadreport", "role", "reporter"),
		done: make(chan struct{}),
		newTicker: func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(d)
			return t.C, t.Stop
		},
	}, nil
}

// Register registers the reporter as the OpenRcaService of s.
func (r *Reporter) Register(s grpc.ServiceRegistrar) {
	orcasvc.RegisterOpenRcaServiceServer(s, r)
}

// Interval returns the interval granted to a stream that asks for
// requested: DefaultInterval when requested is zero or negative, otherwise
// requested clamped to [MinInterval, MaxInterval].
func (r *Reporter) Interval(requested time.Duration) time.Duration {
	if requested <= 0 {
		return r.def
	}
	return min(max(requested, r.min), r.max)
}

// StreamCoreMetrics sends a report at once, then one per granted interval,
// until the client ends the stream (it returns the context's status) or
// Close is called (it returns Unavailable). It blocks for the life of the
// stream.
func (r *Reporter) StreamCoreMetrics(req *orcasvc.OrcaLoadReportRequest, stream orcasvc.OpenRcaService_StreamCoreMetricsServer) error {
	var requested time.Duration
	if ri := req.GetReportInterval(); ri != nil {
		requested = ri.AsDuration()
	}
	interval := r.Interval(requested)
	ctx := stream.Context()
	var from string
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		from = p.Addr.String()
	}
	r.log.Debug("load report stream opened", "peer", from, "requested", requested, "interval", interval)
	defer r.log.Debug("load report stream closed", "peer", from)

	select {
	case <-r.done:
		return status.Error(codes.Unavailable, closedMessage)
	default:
	}
	tick, stop := r.newTicker(interval)
	defer stop()
	for {
		if err := stream.Send(toProto(r.src.Metrics())); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-r.done:
			return status.Error(codes.Unavailable, closedMessage)
		case <-tick:
		}
	}
}

// Close ends every stream, open or future, with Unavailable, so that a
// graceful stop of the server need not wait for them. It does not wait for
// the streams' handlers to return (the server's stop does) and is safe to
// call more than once.
func (r *Reporter) Close() {
	r.closeOnce.Do(func() { close(r.done) })
}

// toProto converts m to an ORCA load report.
func toProto(m Metrics) *orcapb.OrcaLoadReport {
	return &orcapb.OrcaLoadReport{
		CpuUtilization:         m.CPU,
		ApplicationUtilization: m.AppUtil,
		RpsFractional:          m.QPS,
		Eps:                    m.EPS,
		Utilization:            m.Utilization,
		NamedMetrics:           map[string]float64{InFlightMetric: float64(m.InFlight), ConcurrencyMetric: m.Concurrency},
	}
}
