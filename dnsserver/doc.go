// Package dnsserver is Lookaside's optional DNS responder: an authoritative
// server for one zone (such as lb.internal.) that publishes, for every
// service, the records a gRPC client needs to find the balancers through
// plain DNS, as proposal A5 ("Load Balancing and DNS") and A2 ("Service
// Config via DNS") describe them. A grpc-go client that imports only
// google.golang.org/grpc/balancer/grpclb and dials
//
//	dns://127.0.0.1:8053/user-srv.lb.internal:50051
//
// needs no service config in its code: the DNS answers select grpclb, name
// the balancers and give the fallback addresses.
//
// # Records
//
// With zone lb.internal., TTL 5 s and a service user-srv (an example of each):
//
//	_grpclb._tcp.user-srv.lb.internal. 5 IN SRV 0 0 7000 10-0-0-5.balancer.lb.internal.
//	10-0-0-5.balancer.lb.internal.     5 IN A   10.0.0.5
//	user-srv.lb.internal.              5 IN A   10.0.1.7
//	_grpc_config.user-srv.lb.internal. 5 IN TXT "grpc_config=[{\"serviceConfig\":{\"loadBalancingConfig\":[{\"grpclb\":{\"childPolicy\":[{\"round_robin\":{}}]}}]}}]"
//	lb.internal.                       5 IN SOA lb.internal. hostmaster.lb.internal. <serial> 3600 600 86400 5
//
// What each name holds:
//
//   - SRV _grpclb._tcp.<svc>.<zone>: one record per live balancer replica
//     (Balancers), priority 0 and weight 0 as A5 requires, the replica's
//     port, and a target in the zone that encodes the replica's IP
//     (10-0-0-5.balancer.<zone>; IPv6 as eight dash-separated groups of
//     four hex digits). Clients use the target as the balancer's authority,
//     so a TLS certificate for *.balancer.<zone> covers every replica. The
//     targets' A/AAAA records are in the additional section. The order of
//     the records rotates from one answer to the next, so that clients
//     (which try the balancers in order) spread over the replicas. Every
//     service name has these records, whether or not it has instances: the
//     balancer answers an unknown service with a FallbackResponse and sends
//     a list as soon as instances appear, with no new DNS lookup. When no
//     replica passes, Replicas keeps naming the last ones known.
//   - A/AAAA <svc>.<zone>: the IPs of the service's passing instances
//     (Catalog), which grpclb clients use as fallback addresses with the
//     port of their dial target. A service with no instance answers NODATA
//     (NOERROR, no record, the SOA in the authority section), not NXDOMAIN:
//     the name exists, since its SRV and TXT records do. Such a client has
//     no fallback address.
//   - TXT _grpc_config.<svc>.<zone>: grpc_config= and a service config that
//     selects grpclb with the service's child policy (round_robin or
//     pick_first), split into strings of at most 255 bytes.
//   - A/AAAA of a replica's target name: its IP, while it is a replica.
//   - SOA at the apex, and in the authority section of every NODATA and
//     NXDOMAIN answer (negative TTL = TTL).
//
// Names under the zone that are none of these are NXDOMAIN (_tcp.<svc>,
// the parent of the SRV name, is NODATA); names outside the zone are
// REFUSED, as are zone transfers. A service name is one label of lowercase
// letters, digits, '-' and '_' (not first); the DNS name is mapped to a
// service by Config.Names, the same NameMapper the balancer uses, so
// aliases apply to both.
//
// # Protocol
//
// The server answers over UDP and TCP. A UDP answer larger than the
// client's EDNS0 buffer (512 bytes without EDNS0, and never more than
// Config.MaxUDPSize), or than Config.MaxUDPRatio times its question, is
// truncated with the TC bit set, and clients retry over TCP. ANY is
// answered with RFC 8482's single HINFO record. Answers never wait long: an
// A/AAAA question about a service the Directory does not know is NODATA at
// once (and starts no watch); the first question about a known service may
// wait up to Config.LookupTimeout for the catalog's first answer, and is
// answered SERVFAIL (clients retry) if none came.
//
// # Guard
//
// Serve answers only the sources in Config.Allow (others: UDP dropped, TCP
// closed at accept), limits each source's UDP answers with a token bucket
// (over it, RRL-style slip: one empty TC answer in RateLimitSlip, the rest
// dropped; TCP is not rate limited), answers at most Config.MaxInflight UDP
// questions at once and keeps at most Config.MaxTCPConns TCP connections
// (MaxTCPConnsPerSource per IP). The UDP checks run in the goroutine that
// reads the socket, before miekg/dns starts one per packet. Every refusal
// is counted in Stats; log lines a client can cause are limited to one per
// kind per second, names quoted with logthrottle.Quote.
//
// # Ownership
//
// Server.Serve owns both listeners and every goroutine it starts, and
// returns when its context ends. Replicas.Run owns the watch of the
// balancers' own Consul service. The interfaces Catalog, Balancers and
// Mapper are defined here, at their consumer; *lbserver.Server is a
// Catalog and lbserver.NameMapper a Mapper.
package dnsserver
