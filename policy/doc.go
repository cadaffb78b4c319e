// Package policy holds the seam between the balancer and its balancing
// algorithms.
//
// A Policy is pure: given a service's endpoints and what the stream knows
// about its client, it returns the ordered grpclb server list for that client.
// It does no I/O and reads no clock or random source it is not given (per
// stream randomness comes only from Client.Seed, through a math/rand/v2 PCG),
// so each policy is table-tested with exact lists.
//
// # Once per plan, once per stream
//
// A policy works in two steps. Policy.Prepare runs once per plan: the
// balancer's planner calls it whenever it makes a plan for a service (new
// endpoints, new load weights, new settings), with the service's endpoints
// and load weights (PlanInput), and stores the Prepared value in the plan.
// It does the work that is the same for every stream: weighted_round_robin
// and least_load build their interleaved sequence, weighted_random its
// entries, source_hash hashes every endpoint ID. Prepared.List runs once
// per stream and plan with what only the stream knows (StreamInput: its
// seed, the list last sent to it, the balancer's assignment counts) and
// does only what depends on it: rotating the sequence to the stream's
// start, keeping its first entry, hashing its address, ordering by counts.
// Prepared values are immutable and shared by all the streams of a plan;
// nothing is cached between plans or between services, so services with
// other weights or options (a Policy is built per set of Options, and so
// per service) never evict each other's work. Policy.List does both steps
// for one list.
//
// # One list for both kinds of client
//
// In grpclb the balancer does not pick per call. The balancer cannot tell
// which child policy a client runs, so every policy returns one list that is
// right for both. In grpc-go (balancer/grpclb, v1.85.0):
//
//   - A client with the default round_robin child round-robins over the
//     whole list: lbPicker walks the list from index 0 to decide drops, and
//     the ready SubConns, one per non-drop entry in list order, from a
//     random offset. A duplicate entry is an extra pick, so weights are
//     expressed by repeating entries (see EntryCounts, and
//     policytest.RoundRobinClient for a model of the picker).
//   - A client with the pick_first child gives all addresses, in list
//     order, to one SubConn, which connects to the first that answers: the
//     order is the whole decision, and spreading pick_first clients means
//     spreading first entries across streams.
//
// # Stickiness
//
// When a new list arrives, grpc-go's pick_first client (refreshSubConns in
// grpclb_remote_balancer.go) hands it to its SubConn with UpdateAddresses;
// addrConn.updateAddrs (clientconn.go) keeps a READY connection if its
// address is anywhere in the new list, and otherwise starts connecting again
// from the first address. So the first entry decides where a client goes
// whenever it connects or reconnects (its backend restarted, the connection
// broke, it was still connecting when the list changed). Every policy
// therefore keeps a stream's first entry, which it reads from
// Input.Previous, for as long as that endpoint stays; source_hash keeps the
// stream's whole subset. A reconnecting client returns to the same backend,
// and the balancer's view of where clients are (Input.Assigned) stays true.
// When the first endpoint leaves, the stream moves on as the policy would
// place a new stream.
//
// Rebalancing existing clients onto a new endpoint is deliberately not done:
// it would move pick_first clients off working connections, and round_robin
// clients already use every endpoint in their list. New endpoints take new
// streams, and streams whose first endpoint left.
//
// # Policies
//
// Each lives in its own sub-package, registers itself with Register from an
// init function, and exports its Name; importing the sub-package (or
// policy/all for every one) makes it available to Build.
//
//	round_robin           every endpoint once, rotated per stream
//	random                every endpoint once, shuffled per stream
//	source_hash           the k best endpoints for the client's IP
//	                      (weighted rendezvous hashing on Endpoint.ID)
//	weighted_round_robin  entries repeated by weight, smoothly interleaved,
//	                      rotated to a per-stream start drawn ∝ weight
//	weighted_random       entries repeated by weight, shuffled per stream
//	least_connections     every endpoint once, fewest assigned streams
//	                      per unit of weight first
//
// Options configures them all; each policy reads the fields that concern it.
package policy
