// Package consul is the discovery.Source and discovery.Directory backed by
// Consul.
//
// A Source holds a fixed number of connections to Consul whatever the
// number of services watched and of clients asking: all its Watch calls
// share one hub of
//
//   - one blocking query on the catalog's service list
//     (/v1/catalog/services): the Directory of services that exist, so a
//     name nobody registered costs a map lookup and an empty snapshot, and
//     no query;
//   - one blocking query on every health check (/v1/health/state/any): a
//     digest per service of (node, service ID, check ID, status) tells
//     which services' health changed; a node check's change concerns every
//     service on its node;
//   - a pool of at most Config.MaxFetches workers that fetch the services
//     marked changed (/v1/health/service/<name>, without blocking); marks
//     coalesce, so a service changing while it is fetched is fetched once
//     more, not once per change.
//
// A change of the catalog's index that no change of checks at the same
// index explains (an instance registered without checks, a changed port,
// address or meta) has every watched service fetched again, and so does
// a timer every Config.ResyncInterval, as a safety net. Both long polls run
// on internal/consulwatch: Consul's index rules, a pace of
// Config.MinInterval, backoff, and a cheap probe (/v1/status/leader) about
// once a second while they back off, so that the hub is back within about
// a second of Consul answering again ("Consul reachable again", at INFO).
// Errors that retrying cannot fix (ACL denied, an unknown datacenter) and
// answers that ACLs filtered are logged at ERROR at most once a minute,
// saying what to do.
//
// The hub runs while a Run or a Watch call holds it, and every goroutine of
// the hub stops, and is waited for, when the last one returns. Lookup (the
// Directory) is a pure read of the last service list the hub read: it
// starts nothing, so whoever asks it with no Watch call open runs the
// Source with Run (lbserver.Serve does, for as long as it serves). The
// last list read is kept when the hub stops.
// NewClient's transport opens at most ClientConfig.MaxConns connections;
// a Source uses at most ConnsNeeded(MaxFetches) of them at once.
//
// Snapshots follow these rules:
//
//   - Only usable instances are published: passing ones by default, and
//     also those whose worst check is warning when Config.IncludeWarning is
//     set. Critical and maintenance instances are never published.
//   - Errors publish nothing: the last good snapshot stays in force. An
//     empty snapshot is published only when Consul answers that there are
//     no usable instances, or its catalog does not list the service.
//   - Identical answers publish nothing.
//   - Names are matched as Consul matches them, ignoring case: Watch calls
//     whose names have the same discovery.Canonical form share one fetch;
//     each snapshot carries the name as its Watch call gave it.
//
// Instances become endpoints as follows. The address is the service
// address, or the node address when the service has none; IP literals are
// used as they are (IPv4-mapped IPv6 addresses are unmapped and zones
// dropped, since grpclb carries raw 4- or 16-byte addresses), hostnames are
// resolved with Config.Resolver and the first address returned is used. A
// hostname whose lookup fails keeps its last good address; services with
// hostnames are fetched and resolved again every Config.ResolveInterval,
// so a changed address is published without a change in Consul. An
// instance whose address cannot be resolved (and never could), or whose
// port is not in 1–65535, is skipped with a logged reason; the rest of the
// answer is still published. The endpoint ID is the Consul service ID;
// since service IDs are only unique per agent, instances whose ID occurs
// more than once in one answer (typically services registered without an
// ID, which default to the service name) get the ID "<node>/<service ID>"
// instead, and their Instance is the service ID, from which their lb-token
// derives, as the backend derives it. The weight is the instance's passing
// weight (its warning weight when it is in warning), clamped to
// 1–MaxWeight.
package consul
