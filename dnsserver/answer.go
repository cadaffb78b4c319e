package dnsserver

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/logthrottle"
)

// answer builds the reply to req. It blocks at most Config.LookupTimeout
// (or until ctx is done).
func (s *Server) answer(ctx context.Context, req *dns.Msg) *dns.Msg {
	s.counters.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = false
	opt := req.IsEdns0()
	if opt != nil {
		m.SetEdns0(uint16(s.cfg.MaxUDPSize), false)
	}
	switch {
	case req.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		s.counters.errors.Add(1)
		return m
	case len(req.Question) != 1:
		m.Rcode = dns.RcodeFormatError
		s.counters.errors.Add(1)
		return m
	case opt != nil && opt.Version() != 0:
		m.Rcode = dns.RcodeBadVers
		s.counters.errors.Add(1)
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if q.Qclass != dns.ClassINET || !dns.IsSubDomain(s.zone, name) ||
		q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		m.Rcode = dns.RcodeRefused
		s.counters.refused.Add(1)
		return m
	}
	m.Authoritative = true
	rel := strings.TrimSuffix(strings.TrimSuffix(name, s.zone), ".")
	kind, label := classify(rel)

	ctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	qtype := q.Qtype
	var rcode int
	switch {
	case qtype == dns.TypeANY:
		rcode = s.minimalANY(ctx, m, q.Name, kind, label)
	default:
		rcode = s.records(ctx, m, q.Name, qtype, kind, label, rel)
	}
	m.Rcode = rcode
	switch {
	case rcode == dns.RcodeServerFailure:
		m.Answer, m.Extra, m.Authoritative = nil, nil, false
		if opt != nil {
			m.SetEdns0(uint16(s.cfg.MaxUDPSize), false)
		}
		s.counters.servFail.Add(1)
		s.tlog.Info("DNS question answered SERVFAIL: no first answer from the catalog or the balancers in time",
			"name", logthrottle.Quote(q.Name), "type", dns.Type(qtype).String())
	case rcode == dns.RcodeNameError:
		m.Ns = append(m.Ns, s.soa(s.zone))
		s.counters.nxDomain.Add(1)
	case len(m.Answer) == 0:
		m.Ns = append(m.Ns, s.soa(s.zone))
		s.counters.noData.Add(1)
	default:
		s.counters.answers.Add(1)
	}
	return m
}

// minimalANY answers an ANY question as RFC 8482 suggests: with one
// HINFO record "RFC8482" "" at a name that exists, never with every
// record, so that ANY cannot amplify; it asks neither the catalog nor,
// but for a replica's name, the balancers.
func (s *Server) minimalANY(ctx context.Context, m *dns.Msg, owner string, kind nameKind, label string) int {
	switch kind {
	case kindNone:
		return dns.RcodeNameError
	case kindEmpty:
		return dns.RcodeSuccess
	case kindBalancer:
		if rcode := s.balancerAddr(ctx, m, owner, dns.TypeNone, label); rcode != dns.RcodeSuccess {
			return rcode
		}
	}
	m.Answer = append(m.Answer, &dns.HINFO{Hdr: s.hdr(owner, dns.TypeHINFO), Cpu: "RFC8482", Os: ""})
	s.counters.minimalANY.Add(1)
	return dns.RcodeSuccess
}

// records adds the records of type qtype (not ANY) at the name of kind.
func (s *Server) records(ctx context.Context, m *dns.Msg, owner string, qtype uint16, kind nameKind, label, rel string) int {
	is := func(types ...uint16) bool { return slices.Contains(types, qtype) }
	var rcode int
	switch kind {
	case kindApex:
		if is(dns.TypeSOA) {
			m.Answer = append(m.Answer, s.soa(owner))
		}
	case kindService:
		if is(dns.TypeA, dns.TypeAAAA) {
			rcode = s.serviceAddrs(ctx, m, owner, qtype, rel)
		}
	case kindSRV:
		if is(dns.TypeSRV) {
			rcode = s.srv(ctx, m, owner)
		}
	case kindTXT:
		if is(dns.TypeTXT) {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: s.hdr(owner, dns.TypeTXT), Txt: s.txt[s.childPolicy(label+"."+s.zone)]})
		}
	case kindBalancer:
		if is(dns.TypeA, dns.TypeAAAA) {
			rcode = s.balancerAddr(ctx, m, owner, qtype, label)
		}
	case kindEmpty:
	case kindNone:
		rcode = dns.RcodeNameError
	}
	return rcode
}

func (s *Server) hdr(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: uint32(s.cfg.TTL.Seconds())}
}

// soa is the zone's SOA record; its minimum, the negative TTL, is the TTL.
func (s *Server) soa(owner string) *dns.SOA {
	ttl := uint32(s.cfg.TTL.Seconds())
	return &dns.SOA{Hdr: s.hdr(owner, dns.TypeSOA), Ns: s.zone, Mbox: "hostmaster." + s.zone,
		Serial: s.serial, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl}
}

// addrRR returns the A or AAAA record of ip, or nil if qtype asks for the
// other family.
func (s *Server) addrRR(owner string, qtype uint16, ip netip.Addr) dns.RR {
	ip = ip.Unmap()
	switch {
	case ip.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
		b := ip.As4()
		return &dns.A{Hdr: s.hdr(owner, dns.TypeA), A: b[:]}
	case ip.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
		b := ip.As16()
		return &dns.AAAA{Hdr: s.hdr(owner, dns.TypeAAAA), AAAA: b[:]}
	}
	return nil
}

// service maps a name of the zone (lowercase, with trailing dot) to its
// service.
func (s *Server) service(fqdn string) string {
	name := strings.TrimSuffix(fqdn, ".")
	if s.cfg.Names != nil {
		if svc, err := s.cfg.Names.Map(name); err == nil && svc != "" {
			return svc
		}
	}
	label, _, _ := strings.Cut(name, ".")
	return label
}

func (s *Server) childPolicy(fqdn string) string {
	if p, ok := s.cfg.ServiceChildPolicies[s.service(fqdn)]; ok {
		return p
	}
	return s.cfg.ChildPolicy
}

// serviceAddrs adds the addresses of the service's instances.
// With a Directory, a service it does not know is NODATA at once, without
// asking the catalog: a question never makes the balancer watch a name
// nobody registered.
func (s *Server) serviceAddrs(ctx context.Context, m *dns.Msg, owner string, qtype uint16, rel string) int {
	svc := s.service(rel + "." + s.zone)
	if s.dir != nil {
		base, _ := discovery.SplitName(discovery.Canonical(svc))
		exists, ready, changed := s.dir.Lookup(base)
		if !ready {
			select {
			case <-changed:
				exists, ready, _ = s.dir.Lookup(base)
			case <-ctx.Done():
			}
		}
		switch {
		case !ready:
			return dns.RcodeServerFailure
		case !exists:
			return dns.RcodeSuccess
		}
	}
	snap, ok := s.cfg.Catalog.Endpoints(ctx, svc)
	if !ok {
		return dns.RcodeServerFailure
	}
	ips := make([]netip.Addr, 0, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		ips = append(ips, ep.Addr.Addr().Unmap().WithZone(""))
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	for _, ip := range slices.Compact(ips) {
		if rr := s.addrRR(owner, qtype, ip); rr != nil {
			m.Answer = append(m.Answer, rr)
		}
	}
	return dns.RcodeSuccess
}

// srv adds one SRV record per balancer, in an order that rotates from one
// answer to the next, and the targets' addresses as additional records.
func (s *Server) srv(ctx context.Context, m *dns.Msg, owner string) int {
	lbs, ok := s.cfg.Balancers.Balancers(ctx)
	if !ok {
		return dns.RcodeServerFailure
	}
	if len(lbs) == 0 {
		return dns.RcodeSuccess
	}
	first := int(s.rotation.Add(1) % uint64(len(lbs)))
	seen := map[netip.Addr]bool{}
	for i := range lbs {
		lb := lbs[(first+i)%len(lbs)]
		ip := lb.Addr().Unmap()
		target := targetLabel(ip) + "." + BalancerLabel + "." + s.zone
		m.Answer = append(m.Answer, &dns.SRV{Hdr: s.hdr(owner, dns.TypeSRV), Priority: 0, Weight: 0, Port: lb.Port(), Target: target})
		if !seen[ip] {
			seen[ip] = true
			m.Extra = append(m.Extra, s.addrRR(target, dns.TypeANY, ip))
		}
	}
	return dns.RcodeSuccess
}

// balancerAddr adds the address of the replica named label, or answers
// NXDOMAIN if no replica has that address.
func (s *Server) balancerAddr(ctx context.Context, m *dns.Msg, owner string, qtype uint16, label string) int {
	ip, _ := parseTargetLabel(label)
	lbs, ok := s.cfg.Balancers.Balancers(ctx)
	if !ok {
		return dns.RcodeServerFailure
	}
	if !slices.ContainsFunc(lbs, func(a netip.AddrPort) bool { return a.Addr().Unmap() == ip }) {
		return dns.RcodeNameError
	}
	if rr := s.addrRR(owner, qtype, ip); rr != nil {
		m.Answer = append(m.Answer, rr)
	}
	return dns.RcodeSuccess
}

// serviceConfig is the TXT record's text for a child policy: grpc_config=
// and the JSON list of service config choices that A2 defines.
func serviceConfig(child string) string {
	type obj = map[string]any
	grpclb := obj{"childPolicy": []obj{{child: obj{}}}}
	choice := []obj{{"serviceConfig": obj{"loadBalancingConfig": []obj{{"grpclb": grpclb}}}}}
	b, err := json.Marshal(choice)
	if err != nil {
		panic(err) // static data
	}
	return "grpc_config=" + string(b)
}

// splitTXT splits text into character-strings of at most 255 bytes, which
// clients concatenate. text must not contain '\\' (miekg/dns reads TXT
// strings in presentation format).
func splitTXT(text string) []string {
	var out []string
	for len(text) > 255 {
		out = append(out, text[:255])
		text = text[255:]
	}
	return append(out, text)
}
