// Package discovery turns a source of endpoints (Consul, or a static list)
// into a stream of immutable snapshots, one stream per service.
//
// A Source is asked to watch one service at a time. It calls the publish
// callback with a new Snapshot whenever the set of usable endpoints really
// changes, and never because of a transient error: while its backend is
// unreachable the last published snapshot stays in force. An empty snapshot
// is published only when the source positively knows that the service has no
// usable instances.
//
// Sub-packages hold the sources: discovery/consul (the real one) and
// discovery/static (the embedded default, for demos and users without Consul).
package discovery
