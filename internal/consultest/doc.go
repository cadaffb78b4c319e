// Package consultest runs a real Consul agent in development mode on loopback
// ports, for tests and for the demo.
//
// The agent is the open-source Consul release pinned by tools/consul, built
// from source by scripts/consul.sh into a per-user cache. Binary says where
// it is looked for. Tests call Start, which fails the test (never skips it)
// when no binary is found; other programs call Run and Stop.
//
// Every agent gets its own free ports, node name and directory, so tests that
// each start one may run in parallel.
package consultest
