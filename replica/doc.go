// Package replica builds one Lookaside balancer replica from a
// config.Config and runs it: the discovery source (Consul or a static
// list), the balancer (lbserver) on its listener, the DNS responder, the
// replica's Consul registration, and the admin listener (metrics, status
// page, pprof, channelz).
//
// New checks the configuration and builds the parts without touching the
// network; Run listens, serves until its context ends and shuts down within
// the configured bound; Reload applies a new configuration's reloadable
// part to the running replica and refuses the whole of a bad one. The
// lbserver command, the demo and the end-to-end tests all run replicas
// through this package, so there is one way to put the parts together.
package replica
