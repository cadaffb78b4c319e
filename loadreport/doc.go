// Package loadreport carries backends' load to the balancer with ORCA, the
// standard gRPC load report (xds.service.orca.v3.OpenRcaService, messages
// xds.data.orca.v3.OrcaLoadReport), so that any gRPC backend that serves
// ORCA, in any language, can take part.
//
// # Backend side
//
// A Recorder measures one server: process CPU utilization, calls in
// flight (now, and their mean over a sliding window), calls and failed
// calls per second over that window (its
// interceptors count them; health and ORCA calls are not counted), plus the
// application utilization and named utilizations the service sets. A
// Reporter serves StreamCoreMetrics from a Recorder at the interval each
// client asks for, within [MinInterval, MaxInterval] (default 1 s to
// 1 min; 1 s when the client asks for none). grpc-go's own orca service
// raises every interval below 30 s to 30 s, too slow to balance on.
//
// Each report carries cpu_utilization, application_utilization,
// rps_fractional (QPS), eps (errors per second), the utilization map, the
// calls in flight as named_metrics["inflight"] (InFlightMetric), and the
// mean calls in flight over the window as named_metrics["concurrency"]
// (ConcurrencyMetric). Concurrency / QPS, both over the same window, is the
// backend's mean latency (Little's law), which least_load compares between
// a service's endpoints to find slow ones; a backend in another language
// can send the same named metric to take part.
//
// # Balancer side
//
// A Collector follows one service: Update, called with each discovery
// snapshot, opens one out-of-band stream per endpoint ID (a connection to
// the endpoint's address, plaintext unless Config.Credentials secures it,
// asking for Config.Interval) and
// closes the streams of endpoints that left. It keeps the freshest report
// of each endpoint; a report expires Config.TTL after it arrived (default
// 3×Interval, at least 3 s), and an expired, never-reported or
// Unimplemented endpoint is absent from Loads, so the balancer falls back
// to its discovery weight. Failed streams are retried with jittered
// exponential backoff; an endpoint that answers Unimplemented serves no
// ORCA and is asked again only after Config.UnimplementedRetry (5 min) or
// when its address changes. Loads returns an immutable snapshot with the
// reports and each stream's liveness; its Changed channel is closed at the
// next meaningful change, so that the balancer can recompute its lists.
//
// The balancer keeps one Collector per watched service whose decisions use
// load (its policy is least_load, or it sets its own overload drop bound),
// fed from that service's snapshots, started and closed as its policy
// changes; every client stream of the service reads the same Collector.
// Each stream is one HTTP/2 connection and call run on the stream's own
// goroutine (no grpc.ClientConn unless Config.DialOptions asks for one),
// with 1 KiB buffers: see docs/RELIABILITY.md for its cost per endpoint.
package loadreport
