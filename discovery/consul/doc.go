// Package consul is the discovery.Source backed by Consul's health API.
//
// Each Watch call runs one blocking-query loop on /v1/health/service/<name>
// and turns every changed answer into an immutable discovery.Snapshot:
//
//   - Only usable instances are published: passing ones by default, and
//     also those whose worst check is warning when Config.IncludeWarning is
//     set. Critical and maintenance instances are never published.
//   - Consul's index drives the loop: the same index means no change; an
//     index lower than the last one resets the watch (the answer is taken as
//     fresh data); an index of 0 is treated as 1 so that the next query
//     blocks instead of spinning.
//   - Two fetches start at least Config.MinInterval apart (plus up to 25 %
//     jitter), so a flapping service cannot make the loop hammer Consul.
//   - Errors back off exponentially with jitter and publish nothing: the
//     last good snapshot stays in force. An empty snapshot is published
//     only when Consul answers that there are no usable instances.
//   - Identical answers publish nothing.
//
// Instances become endpoints as follows. The address is the service
// address, or the node address when the service has none; IP literals are
// used as they are (IPv4-mapped IPv6 addresses are unmapped and zones
// dropped, since grpclb carries raw 4- or 16-byte addresses), hostnames are
// resolved with Config.Resolver and the first address returned is used. An
// instance whose address cannot be resolved, or whose port is not in
// 1–65535, is skipped with a logged reason; the rest of the answer is still
// published. The endpoint ID is the Consul service ID; since service IDs
// are only unique per agent, instances whose ID occurs more than once in
// one answer (typically services registered without an ID, which default
// to the service name) get the ID "<node>/<service ID>" instead. The weight
// is the instance's passing weight (its warning weight when it is in
// warning), clamped to 1–MaxWeight.
package consul
