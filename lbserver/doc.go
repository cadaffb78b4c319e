// Package lbserver is the balancer: it implements
// grpc.lb.v1.LoadBalancer/BalanceLoad for grpclb clients.
//
// It owns the client streams and the per-service watchers they share:
//
//   - A stream must open with an initial request naming the service; the
//     name (the client's dial target host, with its port) is validated and
//     mapped to a service (see NameMapper). A stream that sends nothing is
//     ended after Config.InitialRequestTimeout.
//   - The first stream for a service starts a discovery watcher; the last
//     stream to leave stops it after Config.WatchLinger. Each discovery
//     snapshot becomes an immutable plan, swapped atomically; a change wakes
//     every stream of the service by closing the old plan's channel.
//   - Each stream answers with the initial response (carrying the client
//     stats report interval) and at once with a server list, or with a
//     FallbackResponse when the service is unknown or has no usable instance.
//     It then sends a new list whenever the policy's list for that stream
//     changes, and never the same list twice in a row.
//   - ClientStats the client sends are counted in a clientstats.Registry,
//     within bounds: clamped to what the stream can plausibly have started,
//     ignored when too frequent or negative, and capped per client address
//     in the rate a service's rate limit is measured from.
//
// Settings, the reloadable part of Config (default policy, per-service
// Services, aliases, zones, limits, load-weight and rate-limit knobs), are
// held in one immutable value behind an atomic pointer. Reconfigure
// validates new settings whole and swaps them in without dropping a
// stream: limits apply to what comes next, every planner is woken to take
// its service's settings (new lists where they change), and a stream whose
// name now maps to another service moves there. Settings returns what is
// in force.
//
// An Observer (Config.Observer) is told of stream starts and ends (with an
// outcome), every list and fallback sent, and every refusal by a limit,
// with label values from fixed sets and service names the directory
// lists, for metrics. Status returns a copy of every watched service:
// policy and its source, endpoints with their loads, the calls ClientStats
// attribute to them, and the list a new client would get. Operators hear
// once a minute per service, at INFO, of unknown services, services
// without passing instances and fallback answers.
//
// Streams never hold a lock while sending. Close ends every stream and
// stops every watcher; Serve wires a Server into a grpc.Server with the
// keepalive policy grpclb clients need and shuts both down in order.
package lbserver
