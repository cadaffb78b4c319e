// Package metrics exposes what a Lookaside replica does as Prometheus
// metrics, on a registry of its own (never the global one), with the Go
// and process collectors. docs/metrics.md lists every metric and what to
// alert on.
//
// A Metrics is told of events as they happen (it is an lbserver.Observer,
// a consul.Observer and a dnsserver.Observer: set it in the three
// configs) and reads the rest at scrape time from the Sources attached
// with Attach: the balancer's Stats, Status and ClientStats, and the
// Consul source's Health. Names follow Prometheus' conventions:
// lookaside_<subsystem>_<name>_<unit>, counters ending in _total, seconds
// as the unit of time.
//
// Label values are bounded. Services are the names the Consul catalog
// lists (the balancer maps every other name a client sends to "_unknown",
// and streams that named none are "_none"); endpoints are Consul instance
// IDs of watched services; every other label comes from a fixed set
// (outcomes, reasons, limits, request kinds, error kinds, DNS types and
// rcodes, drop tokens). Series of a service go away once it has not been
// watched, nor seen in an event, for Retention: scrape-time gauges at
// once, counters and histograms after Retention.
//
// Ownership: a Metrics starts no goroutine. Observer methods are safe for
// concurrent use and never block on I/O; the scrape-time work runs in the
// goroutine of the scrape.
package metrics
