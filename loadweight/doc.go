// Package loadweight turns the load reports of a service's endpoints
// (loadreport.Report, from ORCA) into the weights the least_load policy
// balances on (policy.Input.LoadWeights), and into the share of calls to
// drop when the whole service is overloaded.
//
// It owns no goroutine, does no I/O and reads no clock: a Weigher is given
// the time with every Update, so that it is table-tested with exact numbers.
// The balancer keeps one Weigher per service and calls Update from the
// goroutine that rebuilds that service's plan.
//
// # Weights
//
// An endpoint's weight follows gRFC A58 (gRPC's weighted_round_robin): from
// each report, qps / (utilization + eps/qps × ErrorPenalty), where
// utilization is the application utilization when it is above 0 and the CPU
// utilization otherwise (see Weight). A report without calls or without
// utilization carries no weight and is skipped, as in A58. The weights of
// successive reports are smoothed by an exponentially weighted moving average
// (Config.Smoothing), as is the utilization.
//
// An endpoint's load is known once it has reported continuously for
// Config.BlackoutPeriod: its run of reports starts with its first report
// with a weight, and ends when an Update finds no report for it (the
// Collector expired it, or the endpoint serves no ORCA), when two of its
// reports are Config.Expiry or more apart, or when its last report with a
// weight is Config.Expiry old. A new run starts the blackout and the
// smoothing again.
//
// Weights are then, for n endpoints of which k have known load:
//
//   - k = 0: every endpoint's Consul weight (Endpoint.Weight, at least 1).
//   - k > 0: known endpoints get their smoothed load weight, raised to at
//     least Config.MinWeightFraction of the mean of the known weights so
//     that none starves. Unknown endpoints (no ORCA, in blackout, expired)
//     get their Consul weight times the known endpoints' load weight per
//     unit of Consul weight (Σ known weights / Σ their Consul weights): an
//     endpoint without ORCA gets traffic by its Consul weight, at the rate
//     the reporting endpoints show per unit of it. The floor is not applied
//     to them, since their Consul weights are the operator's word.
//
// Weights are published normalized to a mean of 1 (2 is twice the average
// endpoint).
//
// # Publishing
//
// Update returns new weights only when they matter, so that lists are not
// re-sent on noise. The first Update publishes, and so does every Update
// whose endpoints differ from the last published ones in IDs or Consul
// weights, at once. Otherwise new weights are published when some
// endpoint's normalized weight differs from the published one by more than
// Config.ChangeThreshold of it, or the drop share does (or starts or stops
// being 0); and at most once per Config.MinUpdateInterval. A change held
// back by that interval is published by the first Update at or after
// Result.NextUpdate.
//
// # Latency outliers
//
// With Config.Outliers enabled (the default), an endpoint much slower than
// its peers gets a small probe share of the calls instead of its load
// weight, like Envoy's outlier detection applied to latency. A58 weights
// give a slow endpoint a share in proportion to its capacity, and every
// call it gets is a slow call: with one backend of five four times slower,
// about 6 % of the calls, enough to set the service's p99. The probe share
// keeps it reporting its latency on real calls, so that it wins its share
// back when it recovers.
//
// An endpoint's latency is Little's law over its load window,
// Report.Concurrency / Report.QPS (loadreport.ConcurrencyMetric), smoothed
// like its weight (Config.Smoothing). It is unknown for endpoints that do
// not send the concurrency or had no calls: they are never outliers. When
// at least Outliers.MinEndpoints (3) endpoints have a known latency, an
// endpoint is ejected when its latency is above Outliers.Factor (2) × the
// median of those latencies and at least Outliers.MinExcess (1 ms) above
// it, and has stayed so for Outliers.EjectAfter (2 s, from one Update to
// the next). At most Outliers.MaxEjectedFraction (half) of the endpoints, and
// never all, are ejected at once: the ejected keep their places, then the
// slowest go first.
//
// An ejected endpoint gets Outliers.ProbeShare (0.5 %) of the calls (at
// most a tenth of an even share), not its A58 weight and not the
// MinWeightFraction floor; the others share the rest as they would
// without it (the floor and the fill-in of unknown endpoints are computed
// among them). It stays ejected for at least its ejection time, then is
// readmitted once its latency is at most Outliers.ReadmitFactor (1.5) ×
// the median, or no longer known. The ejection time is
// Outliers.BaseEjectionTime (5 s); an endpoint ejected again within
// Outliers.MaxEjectionTime of its readmission stays out twice as long as
// the last time, up to MaxEjectionTime (5 min), which damps oscillation
// between ejection and readmission, as do the hysteresis between the two
// factors and the load window's averaging. Several balancers computing
// weights from the same reports (each receives them on its own stream, a
// little apart) reach the same decisions within a report or two.
//
// The probe is sparse when the service is: at 10 calls/s over five
// endpoints an ejected endpoint gets a call every 20 s or so, and its
// latency (kept between calls, for up to Config.Expiry) changes only with
// those calls, so it is readmitted only after a probe call has shown it
// fast again. An endpoint whose reports stop is readmitted once its
// ejection time is over.
//
// Result.Latencies, Result.Outliers and Result.MedianLatency show the
// decisions; Result.Ejections counts them.
//
// # Drops
//
// When every endpoint's load is known and every one's smoothed utilization
// is above Config.OverloadThreshold, Result.DropShare is
// 1 − OverloadThreshold / mean utilization, at most Config.MaxDropShare:
// clients then fail that share of calls locally (see policy.AddDrops), so
// that what is left brings the mean back to the threshold. An endpoint
// whose load is unknown blocks shedding: it may have room, and a service
// with an endpoint that serves no ORCA never sheds for overload.
// RateLimitShare computes the share for a rate limit instead.
package loadweight
