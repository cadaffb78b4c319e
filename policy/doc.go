// Package policy holds the seam between the balancer and its balancing
// algorithms.
//
// A Policy is pure: given a service's endpoints and what the stream knows
// about its client, it returns the ordered grpclb server list for that client.
// It does no I/O and reads no clock or random source it is not given, so each
// policy is table-tested with exact lists.
//
// In grpclb the balancer does not pick per call. A client with the default
// round_robin child policy round-robins over the whole list (a duplicate entry
// is an extra pick); a client with the pick_first child uses the first
// reachable entry, so order is the whole decision. The balancer cannot tell
// which child a client runs, so every policy returns one list that is right
// for both.
//
// Policies live in sub-packages, one each, and register themselves with
// Register from an init function; importing the sub-package makes the policy
// available by name.
package policy
