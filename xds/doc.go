// Package xds is the balancer's xDS face: an Aggregated Discovery Service
// (State of the World) that gRPC's proxyless xDS clients (xds:///name)
// read their Listener, RouteConfiguration, Cluster and
// ClusterLoadAssignment from, built from the same per-service assignments
// the grpclb face serves.
//
// Names follow what a gRPC client asks for: the Listener is named by the
// dial target's path ("user-srv" for xds:///user-srv), and its route
// configuration, Cluster and ClusterLoadAssignment have the same name
// (not the canonical name of the service it maps to, so that a name
// mapped to another service keeps its cluster). A name no service
// answers to is left out of the responses, which the client reports as
// "resource not found".
//
// What a balancing policy becomes for a client that balances itself is a
// Shape: gRPC clients ignore endpoint weights under ROUND_ROBIN but honour
// locality weights, so weighted policies put each endpoint in a locality
// of its own.
//
// A resource is made and marshalled once for its content and shared by
// every stream that serves it; a change sends a stream only the types
// whose resource changed (an endpoint leaving: the ClusterLoadAssignment).
//
// A Feed whose names can come to answer to another service (aliases
// reloaded) makes its subscriptions Movers: the stream subscribes to such
// a name again and sends the other service's resources under the same
// names. A Feed that counts the streams following each service implements
// StreamFeed.
package xds
