package lbserver

import (
	"time"

	"github.com/lookaside-lb/lookaside/discovery"
)

// Observer is told what the server does, for metrics. Methods are called
// from stream handler and planner goroutines: implementations must be safe
// for concurrent use and must not block (count, and return). Set it in
// Config.Observer; nil observes nothing.
//
// Every label value passed is bounded: service is the canonical name
// (without tag filter) of a service the discovery Directory lists,
// UnknownServiceLabel for any other name a client sent (and for every
// service when the source has no Directory), or NoServiceLabel ("") for a
// stream that ended before naming a valid service; outcome, reason and
// limit come from the fixed sets below (Outcomes, FallbackReasons,
// LimitNames). Client-supplied strings are never passed.
type Observer interface {
	// StreamStarted is called once per stream that passed the stream
	// limits, when its service is known: after its initial request was
	// mapped to a service, or just before StreamEnded for a stream that
	// ended before that (with NoServiceLabel). Each StreamStarted is
	// followed by exactly one StreamEnded with the same service.
	StreamStarted(service string)
	// StreamEnded is called once per started stream, as it ends, with
	// why: one of Outcomes.
	StreamEnded(service, outcome string)
	// ListSent is called for every ServerList sent: its entries (drop
	// entries included) and how many of them are drop entries.
	// sinceChange is the time from the arrival of the discovery snapshot
	// the list reflects to the send, for lists caused by a discovery
	// change on a stream that had an answer before; it is negative for
	// every other list (a stream's first, or one caused by load weights,
	// a drop share or a reconfiguration).
	ListSent(service string, entries, drops int, sinceChange time.Duration)
	// FallbackSent is called for every FallbackResponse sent, with why:
	// one of FallbackReasons.
	FallbackSent(service, reason string)
	// Refused is called for every stream or connection refused by a
	// limit: one of LimitNames.
	Refused(limit string)
}

// Service labels of Observer calls besides canonical service names.
const (
	// UnknownServiceLabel stands for every service the discovery
	// Directory does not list (names clients made up), so that they
	// cannot grow a metric's label set.
	UnknownServiceLabel = "_unknown"
	// NoServiceLabel is the service of a stream that ended before naming
	// a valid service.
	NoServiceLabel = ""
)

// Stream outcomes passed to Observer.StreamEnded.
const (
	// OutcomeOK: the client ended the stream (half-close or cancel).
	OutcomeOK = "ok"
	// OutcomeInvalid: the initial request was missing or its name invalid
	// (InvalidArgument).
	OutcomeInvalid = "invalid"
	// OutcomeInitialTimeout: no initial request within
	// InitialRequestTimeout (DeadlineExceeded).
	OutcomeInitialTimeout = "initial_timeout"
	// OutcomeExpired: the stream reached MaxStreamAge and was ended
	// cleanly.
	OutcomeExpired = "expired"
	// OutcomeSlowReader: the client did not read its lists within
	// SendTimeout (ResourceExhausted).
	OutcomeSlowReader = "slow_reader"
	// OutcomeFlooding: more than MaxIgnoredMessages ignored messages
	// within a minute (ResourceExhausted).
	OutcomeFlooding = "flooding"
	// OutcomeRefused: the stream could not be served after it started:
	// too many services watched (MaxServices; ResourceExhausted).
	OutcomeRefused = "refused"
	// OutcomeShutdown: the server closed (Close, or Serve's shutdown).
	OutcomeShutdown = "shutdown"
	// OutcomeMoved: the stream goes on under another service label,
	// counted again by a StreamStarted with the new one: a
	// reconfiguration (an alias or zone change) mapped the stream's name
	// to another service, or the directory now lists the service of a
	// stream counted under UnknownServiceLabel (a stream that came before
	// the directory was read, or before its service was registered).
	OutcomeMoved = "moved"
	// OutcomeError: the stream failed otherwise (a transport error).
	OutcomeError = "error"
)

// Outcomes are every outcome StreamEnded may be passed.
var Outcomes = []string{OutcomeOK, OutcomeInvalid, OutcomeInitialTimeout, OutcomeExpired, OutcomeSlowReader,
	OutcomeFlooding, OutcomeRefused, OutcomeShutdown, OutcomeMoved, OutcomeError}

// Reasons passed to Observer.FallbackSent.
const (
	// FallbackUnknownService: the discovery Directory does not list the
	// service.
	FallbackUnknownService = "unknown_service"
	// FallbackNoInstances: the service has no passing instance (or the
	// source cannot watch it).
	FallbackNoInstances = "no_instances"
	// FallbackFirstListTimeout: discovery had no answer for the service
	// within FirstListTimeout.
	FallbackFirstListTimeout = "first_list_timeout"
)

// FallbackReasons are every reason FallbackSent may be passed.
var FallbackReasons = []string{FallbackUnknownService, FallbackNoInstances, FallbackFirstListTimeout}

// LimitNames are every limit Refused may be passed, in the order of the
// LimitCounts fields: "max_streams", "max_streams_per_ip",
// "max_streams_per_conn", "max_conns", "max_conns_per_ip",
// "max_stream_rate_per_ip".
var LimitNames = func() []string {
	out := make([]string, numLimits)
	for l := range numLimits {
		out[l] = l.label()
	}
	return out
}()

// nopObserver observes nothing.
type nopObserver struct{}

func (nopObserver) StreamStarted(string)                     {}
func (nopObserver) StreamEnded(string, string)               {}
func (nopObserver) ListSent(string, int, int, time.Duration) {}
func (nopObserver) FallbackSent(string, string)              {}
func (nopObserver) Refused(string)                           {}

var _ Observer = nopObserver{}

// serviceLabel returns the Observer label of the canonical service name
// svc: its name without tag filter when the directory lists it,
// UnknownServiceLabel otherwise (and always without a directory). Safe
// for concurrent use; does not block.
func (s *Server) serviceLabel(svc string) string {
	label, _ := s.labelOf(svc)
	return label
}

// labelOf returns serviceLabel(svc) and, when that is UnknownServiceLabel
// because of what the directory says (it has not been read yet, or does
// not list the service), the directory's channel that is closed when the
// answer may change; nil otherwise. A stream waits on it to be counted
// under the service's name once the directory lists it (see
// streamState.setLabel). A stream counted under a listed name keeps it, so
// that the streams of every service do not wake at each read of the
// directory. Safe for concurrent use; does not block.
func (s *Server) labelOf(svc string) (label string, changed <-chan struct{}) {
	if svc == "" {
		return NoServiceLabel, nil
	}
	if s.dir == nil {
		return UnknownServiceLabel, nil
	}
	base, _ := discovery.SplitName(svc)
	exists, _, changed := s.dir.Lookup(base)
	if exists {
		return base, nil
	}
	return UnknownServiceLabel, changed
}
