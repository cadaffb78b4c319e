// Package consul is a grpc-go name resolver for consul:// targets that makes
// a channel balanced by Lookaside. It accepts the targets and parameters of
// github.com/mbobakov/grpc-consul-resolver, so that a program changes one
// import and nothing else:
//
//	import _ "github.com/lookaside-lb/lookaside/resolver/consul"
//
//	cc, err := grpc.NewClient("consul://127.0.0.1:8500/user-srv?wait=14s&tag=srv", ...)
//
// Importing the package registers the resolver for the "consul" scheme
// (NewBuilder gives one with other Options, for grpc.WithResolvers).
//
// # What the channel receives
//
// The resolver watches two Consul services with blocking queries, each in
// its own goroutine: the target's service and the Lookaside replicas
// (parameter lb-service, default "lookaside", passing instances only, in the
// target's datacenter). Every change becomes one resolver.State:
//
//   - Addresses: the service's instances (passing only, unless healthy=false),
//     with the tags asked for, sorted by address, at most limit of them. They
//     are grpclb's fallback addresses.
//   - grpclb balancer addresses (google.golang.org/grpc/balancer/grpclb/state):
//     the Lookaside replicas, in an order of their own for each resolver so
//     that channels spread over the replicas (grpclb talks to the first one
//     it reaches).
//   - A service config selecting grpclb, with serviceName set to the Consul
//     service name and the target's tags ("user-srv@srv", the name the
//     balancer watches, see discovery.SplitName) and round_robin over the
//     backends it returns. It takes precedence over the program's default
//     service config.
//
// With no Lookaside replica alive, grpclb uses the instances (fallback) at
// once, and leaves fallback when a replica returns. With lb=off the state has
// only the addresses and no service config: the program's own policy (say
// round_robin from grpc.WithDefaultServiceConfig) balances over the
// instances, as with grpc-consul-resolver. A channel created with
// grpc.WithDisableServiceConfig ignores the resolver's service config and
// keeps its own policy too.
//
// # Target
//
//	consul://[user[:password]@][host[:port]]/service[?param=value&...]
//
// The host is the Consul agent's HTTP address; without one, Consul's
// defaults apply ($CONSUL_HTTP_ADDR, else 127.0.0.1:8500), and so do the
// other standard variables ($CONSUL_HTTP_TOKEN, $CONSUL_HTTP_SSL,
// $CONSUL_CACERT, ...). User and password are sent as HTTP basic
// authentication. The parameters and their defaults are those of Target's
// fields; unknown parameters, parameters other than tag given twice and
// values out of range are rejected by Build (and ParseTarget) with an error
// that names them.
//
// Compared with grpc-consul-resolver: several tags can be given (repeated or
// comma-separated; instances must carry all of them); unknown parameters are
// errors, not ignored; healthy defaults to true; the default max-backoff is
// 30 s instead of 1 s; timeout bounds what a request may take beyond its
// blocking wait, instead of the whole request (which made every blocking
// query longer than the timeout fail); insecure takes effect; IPv6
// addresses are bracketed.
//
// # Consul and failures
//
// Each watch loop is an internal/consulwatch Watch, the blocking-query loop
// the balancer's Consul source uses too: the same index means no change; an
// index lower than the last one resets the watch; two fetches start at least
// 100 ms apart (plus jitter); a blocking wait is at least 1 s. A failed
// request is retried after a backoff that starts at 250 ms (or max-backoff,
// if lower) and doubles up to max-backoff, with ±20 % jitter; the last good
// state stays in force meanwhile. While a loop backs off for more than a
// second after an error that can heal, the resolver asks Consul's
// /v1/status/leader about once a second and retries as soon as it answers,
// so an outage ends for the resolver about a second after Consul's, however
// long it was; the return is logged at INFO ("Consul reachable again").
// Errors that retrying cannot fix (an ACL denial, an unknown datacenter)
// are logged at ERROR, at most once a minute, with what to do. Before any
// state was sent, errors are reported to the channel (ReportError), so RPCs
// fail with the cause instead of waiting.
//
// When the channel rejects a state (UpdateState returns an error, as it does
// for an empty address list), the resolver reports the error and re-resolves
// after the same kind of backoff: both loops fetch afresh and the state is
// sent again, until the channel accepts one. ResolveNow does nothing: both
// lists are always being watched.
//
// Close cancels both loops through their context, waits for them, and closes
// the idle connections to Consul: no goroutine is left behind.
package consul
