package dnsserver

import "github.com/miekg/dns"

// Observer is told of every answer the server sends and of every question
// or connection its guard stops, for metrics. Methods are called from the
// goroutines that answer and read sockets: implementations must be safe
// for concurrent use and must not block. Set it in Config.Observer; nil
// observes nothing.
//
// Every value passed comes from a fixed set, never from a client's
// message: qtype from QTypes, rcode from Rcodes, reason from
// GuardReasons.
type Observer interface {
	// DNSAnswer reports an answer sent (over UDP or TCP): the question's
	// type, the answer's rcode and whether it was truncated (TC set).
	DNSAnswer(qtype, rcode string, truncated bool)
	// DNSGuard reports a question or TCP connection the guard stopped.
	DNSGuard(reason string)
}

// QTypeOther is the qtype of questions of a type not in QTypes, and of
// messages without exactly one question.
const QTypeOther = "other"

// QTypes are the qtype values DNSAnswer is passed: the types the zone
// holds or that clients ask, and QTypeOther.
var QTypes = []string{"A", "AAAA", "SRV", "TXT", "SOA", "NS", "ANY", QTypeOther}

// Rcodes are the rcode values DNSAnswer is passed: those the server
// answers with, and "other".
var Rcodes = []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other"}

// Reasons passed to Observer.DNSGuard.
const (
	// GuardDenied: a UDP question dropped or a TCP connection closed, its
	// source not in Config.Allow.
	GuardDenied = "denied"
	// GuardRateLimited: a UDP question over its source's rate, dropped.
	GuardRateLimited = "rate_limited"
	// GuardSlipped: a UDP question over its source's rate, answered empty
	// with TC (not counted by DNSAnswer).
	GuardSlipped = "slipped"
	// GuardOverloaded: a UDP question over Config.MaxInflight, dropped.
	GuardOverloaded = "overloaded"
	// GuardTCPRejected: a TCP connection over Config.MaxTCPConns or
	// MaxTCPConnsPerSource, closed.
	GuardTCPRejected = "tcp_rejected"
)

// GuardReasons are every reason DNSGuard is passed.
var GuardReasons = []string{GuardDenied, GuardRateLimited, GuardSlipped, GuardOverloaded, GuardTCPRejected}

// qtypeLabel returns the QTypes value of req's question.
func qtypeLabel(req *dns.Msg) string {
	if len(req.Question) != 1 {
		return QTypeOther
	}
	switch req.Question[0].Qtype {
	case dns.TypeA:
		return "A"
	case dns.TypeAAAA:
		return "AAAA"
	case dns.TypeSRV:
		return "SRV"
	case dns.TypeTXT:
		return "TXT"
	case dns.TypeSOA:
		return "SOA"
	case dns.TypeNS:
		return "NS"
	case dns.TypeANY:
		return "ANY"
	}
	return QTypeOther
}

// rcodeLabel returns the Rcodes value of rcode.
func rcodeLabel(rcode int) string {
	switch rcode {
	case dns.RcodeSuccess:
		return "NOERROR"
	case dns.RcodeFormatError:
		return "FORMERR"
	case dns.RcodeServerFailure:
		return "SERVFAIL"
	case dns.RcodeNameError:
		return "NXDOMAIN"
	case dns.RcodeNotImplemented:
		return "NOTIMP"
	case dns.RcodeRefused:
		return "REFUSED"
	case dns.RcodeBadVers:
		return "BADVERS"
	}
	return "other"
}

// guard counts a question or connection the guard stopped.
func (s *Server) guard(reason string) {
	if s.cfg.Observer != nil {
		s.cfg.Observer.DNSGuard(reason)
	}
}
