// Package backend is the example backend that Lookaside balances in its tests
// and demo: a gRPC server of the User service (proto/user/v1) and of the
// standard health service, which registers itself in Consul with a gRPC
// health check and leaves cleanly.
//
// It owns one instance's life cycle: listen (New), register and serve
// (Serve), report its health (SetServing), and drain on shutdown: health
// NOT_SERVING, deregister, wait DrainDelay so the balancers drop it from
// their lists, then a bounded graceful stop.
//
// Every response says which instance served it and with which lb-token, so
// tests can see where a balancer sent each call. The instance checks the
// lb-token of incoming calls with lbtoken.Verifier.
package backend
