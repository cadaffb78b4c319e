// Package e2e holds the end-to-end tests: a real Consul agent (built by
// scripts/consul.sh), real backends registered in it with gRPC health
// checks, the balancer watching Consul, and grpc-go clients dialing with
// the grpclb policy, all on loopback.
package e2e
