// Package consultest runs a real Consul agent on loopback ports, for tests
// and for the demo.
//
// The agent is the open-source Consul release pinned by tools/consul, built
// from source by scripts/consul.sh into a per-user cache. Binary says where
// it is looked for. Tests call Start (a development-mode agent) or StartWith,
// which fail the test (never skip it) when no binary is found; other
// programs call Run and Stop.
//
// Options select two other modes, alone or together. Persistent runs a
// single server that keeps its state on disk, so a test can Kill it (SIGKILL,
// as a crash) and Restart it on the same ports with its registrations and
// tokens intact. ACL turns ACLs on with default deny; the agent's Client
// carries the management token and NewToken makes tokens with given rules.
//
// Every agent gets its own free ports, node name and directory, so tests that
// each start one may run in parallel.
package consultest
