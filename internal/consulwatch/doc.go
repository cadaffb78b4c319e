// Package consulwatch is the one blocking-query loop of Lookaside: every
// Consul watch (the discovery source's long polls and fetches, the consul://
// resolver's lists) runs through a Watch, which owns
//
//   - the index rules: an answer with index 0 counts as 1 (waiting on 0
//     would not block and the loop would spin); an index lower than the
//     last one resets the watch and the answer is taken as fresh data; the
//     same index means nothing changed and delivers nothing;
//   - the pace: two fetches start at least MinInterval apart, plus up to
//     25 % of jitter, except that a blocking fetch follows a successful
//     one at index 0 (the first, or a kick's) at once;
//   - errors: exponential backoff with jitter (clock.Backoff), a deadline
//     per fetch (the blocking wait, Consul's jitter of wait/16, and
//     Timeout);
//   - a kick: fetch afresh at index 0 at once, cancelling the fetch in
//     flight, and deliver the answer even if it did not change;
//   - the clock seam (internal/clock) and the one context-aware sleep.
//
// A Monitor is shared by the watches of one Consul client. It tracks
// outages across them and shortens them: while a watch backs off for
// longer than ProbeAfter after a transient error, it probes Consul cheaply
// (for example /v1/status/leader) about once per ProbeEvery, all watches
// sharing one probe, and retries at once when a probe succeeds; the first
// success after an outage is logged at INFO ("Consul reachable again",
// after=<outage>). Errors that retrying cannot fix (ACL denied, an unknown
// datacenter) and answers filtered by ACLs are logged at ERROR at most once
// per ErrorEvery per kind, with what to do, naming the settings of the
// program that uses the Monitor (Hints: lbserver's flags, a resolver
// target's parameters).
package consulwatch
