package lbserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/internal/h2bidi"
	"github.com/lookaside-lb/lookaside/internal/logattr"
	"github.com/lookaside-lb/lookaside/internal/recvloop"
	"github.com/lookaside-lb/lookaside/policy"
)

type balanceStream = grpc.BidiStreamingServer[lbpb.LoadBalanceRequest, lbpb.LoadBalanceResponse]

// BalanceLoad serves one grpclb client stream. It blocks until the client
// goes away, the stream fails, or the server is closed; except that on
// the balancer's own transport a stream at rest parks (see park):
// BalanceLoad returns errParked (h2bidi.Park), and the stream goes on in
// resumed when something comes.
//
// The functions a stream waits in (BalanceLoad, serve, loop, event) keep
// small frames, and leave the work to functions that return before the
// stream waits again: a stream at rest on grpc-go's server then uses less
// than a quarter of its goroutine's 8 KiB stack, which the runtime halves.
func (s *Server) BalanceLoad(stream balanceStream) error {
	st, svcName, err := s.admit(stream)
	if st == nil {
		return err
	}
	st.begin(svcName)
	return st.then(st.serve(svcName))
}

// then takes what serving the stream's service returned: errParked as it
// is (the stream is parked, see park); errMoved by serving the service a
// reconfiguration maps the stream's name to; anything else by ending the
// stream, with what the handler returns.
func (st *streamState) then(err error) error {
	for {
		switch {
		case errors.Is(err, errParked):
			return err
		case errors.Is(err, errMoved):
			svcName := st.moved()
			st.begin(svcName)
			err = st.serve(svcName)
		default:
			err = st.finish(err)
			st.close()
			return err
		}
	}
}

// resumed goes on serving a parked stream, on a goroutine of its own (see
// park), and returns as BalanceLoad does.
func (st *streamState) resumed() error {
	return st.then(st.served(st.loop(nil)))
}

// admit does what comes before a stream is served: it refuses the
// streams over the limits, waits for the initial request, and maps its
// name. It returns the stream's state, which close releases, and the
// service the name maps to; or nil and the error the handler returns,
// having given back what it took.
func (s *Server) admit(stream balanceStream) (*streamState, string, error) {
	if !s.enter() {
		return nil, "", status.Error(codes.Unavailable, "lbserver: shutting down")
	}
	ctx := stream.Context()
	peerAddr := peerOf(ctx)
	// Refused streams end before anything else runs: they cost the
	// clients that send them, and nobody else.
	if lim, ok := s.slots.take(peerAddr); !ok {
		s.refuse(lim, peerAddr)
		s.streams.Done()
		return nil, "", s.refusedStatus(lim)
	}
	// A stream that came through tapStream took its rate token there.
	if !rateTaken(ctx) && !s.rates.take(peerAddr.Addr()) {
		s.refuse(limitStreamRatePerIP, peerAddr)
		s.slots.give(peerAddr)
		s.streams.Done()
		return nil, "", s.refusedStatus(limitStreamRatePerIP)
	}
	s.counters.streamsStarted.Add(1)
	s.counters.streamsActive.Add(1)
	st := &streamState{srv: s, stream: stream, ctx: ctx, peerAddr: peerAddr, id: s.streamSeq.Add(1)}
	// A stream of the balancer's own transport is never compressed: it
	// shares lists as framed bytes.
	_, own := stream.(*ownStream)

	// On grpc's transport Recv runs in its own goroutine so that a silent
	// client can be timed out and ClientStats read while lists are sent.
	// It ends when the stream's context does, which grpc ends as this
	// handler returns.
	st.in = receive(ctx, stream)

	// The initial request's timer. The sends that need one make their own
	// (see send): on the own transport most never do.
	timer := time.NewTimer(s.cfg.InitialRequestTimeout)
	name, outcome, err := s.awaitInitial(ctx, st.in, timer)
	if err != nil {
		s.log.Debug("stream rejected", "stream", st.id, "peer", peerAddr, "err", err)
		s.obs.StreamStarted(NoServiceLabel)
		s.obs.StreamEnded(NoServiceLabel, outcome)
		st.close()
		return nil, "", err
	}
	set := s.live()
	svcName, err := set.names.Map(name)
	if err != nil {
		s.counters.invalidRequests.Add(1)
		s.throttle.Info("invalid initial request", "stream", st.id, "peer", peerAddr.String(), "name", quote(name), "err", err)
		s.obs.StreamStarted(NoServiceLabel)
		s.obs.StreamEnded(NoServiceLabel, OutcomeInvalid)
		st.close()
		return nil, "", status.Errorf(codes.InvalidArgument, "lbserver: invalid name: %v", err)
	}
	s.log.Debug("stream started", "stream", st.id, "peer", peerAddr, "name", quote(name), "service", quote(svcName))

	st.client = policy.Client{Addr: peerAddr.Addr(), Name: name, Seed: s.seed()}
	st.ignored = fullBucket(float64(set.MaxIgnoredMessages), s.now())
	st.reports = fullBucket(s.reportBurst, s.now())
	st.setChange = set.changed
	st.shared = own || shareable(ctx)
	st.framed = own
	if o, ok := stream.(*ownStream); ok {
		// At rest the stream parks, and what it waits for wakes it.
		st.own = o
		o.st.OnReady(st.wake)
	}
	if age := s.cfg.MaxStreamAge; age > 0 {
		// ± 10 %, from the stream's seed, so streams do not end together.
		jitter := time.Duration(float64(age) * (float64(st.client.Seed%2001)/10000 - 0.1))
		expired := make(chan struct{})
		st.expired = expired
		st.ageTimer = time.AfterFunc(age+jitter, func() {
			close(expired)
			st.wake()
		})
	}
	return st, svcName, nil
}

// close gives back what admit took. Called once, by the handler.
func (st *streamState) close() {
	s := st.srv
	if st.ageTimer != nil {
		st.ageTimer.Stop()
	}
	s.counters.streamsActive.Add(-1)
	s.slots.give(st.peerAddr)
	s.streams.Done()
}

// begin starts serving the stream for service svcName.
func (st *streamState) begin(svcName string) {
	st.key = clientstats.ClientKey{Service: svcName, Stream: st.id, Peer: st.peerAddr.String()}
	st.log = nil // made again, with the service, when needed
	st.label, st.labelChange = st.srv.labelOf(svcName)
	st.outcome = ""
	st.srv.obs.StreamStarted(st.label)
}

// moved ends serving the stream for its service, which a reconfiguration
// moved it from, and returns the service it moves to.
func (st *streamState) moved() string {
	st.srv.obs.StreamEnded(st.label, OutcomeMoved)
	st.logger().Info("stream moves to another service after a reconfiguration", "to", quote(st.movedTo))
	return st.movedTo
}

// finish records the stream's end with the error the handler returns.
func (st *streamState) finish(err error) error {
	if st.outcome == "" {
		st.outcome = OutcomeOK
		if err != nil {
			st.outcome = outcomeOf(err)
		}
	}
	st.srv.obs.StreamEnded(st.label, st.outcome)
	return err
}

// serve serves the stream for service svcName until it ends, or returns
// errMoved when a reconfiguration maps its name to another service
// (st.movedTo), having given back what it held of svcName: it sends the
// service's lists, and handles the client's requests.
func (st *streamState) serve(svcName string) error {
	if st.srv.dir != nil {
		if done, err := st.awaitService(svcName); done {
			return err
		}
	}
	if err := st.acquire(svcName); err != nil {
		return err
	}
	p := st.svc.cur.Load()
	// A stream waits for the service's first answer (keeping the list it
	// has, when it moved here), unless it is answered with fallback
	// already.
	if !p.ready && !st.sentFallback {
		var err error
		if p, err = st.awaitFirst(p); err != nil {
			return st.served(err)
		}
	}
	if err := st.sendInitial(); err != nil {
		return st.served(err)
	}
	// The list goes out right after the initial response: a grpc-go client
	// that gets the initial response but no list can fail its picks.
	return st.served(st.loop(p))
}

// served gives back what serve acquired, unless err is errParked (the
// stream keeps it while parked), and returns err.
func (st *streamState) served(err error) error {
	if !errors.Is(err, errParked) {
		st.release()
	}
	return err
}

// loop sends plan p's list and each later plan's, and handles the
// client's requests meanwhile, until the stream ends (errMoved when a
// reconfiguration maps it to another service; errParked when it parked).
// A nil p resumes a parked stream, which sent its last plan's list
// (st.prevPlan) already.
func (st *streamState) loop(p *plan) error {
	for {
		if p != nil {
			if err := st.update(p); err != nil {
				return endErr(err)
			}
		}
		if err := st.event(st.prevPlan.changed, st.handleRequest, st.own != nil); err != nil {
			if errors.Is(err, errMoved) || errors.Is(err, errParked) {
				return err
			}
			return endErr(err)
		}
		p = st.svc.cur.Load()
	}
}

// acquire makes service svcName the stream's (st.svc), or returns the
// error that refuses the stream.
func (st *streamState) acquire(svcName string) error {
	s := st.srv
	svc, err := s.reg.acquire(svcName)
	switch {
	case errors.Is(err, errTooManySvcs):
		st.outcome = OutcomeRefused
		s.throttle.Warn("refusing stream: too many services watched", "stream", st.key.Stream, "peer", st.key.Peer, "service", quote(svcName), "max", s.cfg.MaxServices)
		return status.Errorf(codes.ResourceExhausted, "%v (%d)", err, s.cfg.MaxServices)
	case err != nil:
		st.outcome = OutcomeShutdown
		return status.Error(codes.Unavailable, err.Error())
	}
	svc.streams.Add(1)
	st.svc = svc
	return nil
}

// release gives back what acquire took, and what the stream held of its
// service.
func (st *streamState) release() {
	s, svc := st.srv, st.svc
	svc.assign(st.first, "")
	st.svc, st.first, st.sentIDs, st.prevPlan = nil, "", nil, nil
	svc.streams.Add(-1)
	s.clientStats.Forget(st.key)
	s.reg.release(svc)
}

// outcomeOf maps the error a stream ended with to its Observer outcome,
// when nothing more specific was recorded.
func outcomeOf(err error) string {
	switch status.Code(err) {
	case codes.OK, codes.Canceled:
		return OutcomeOK
	case codes.InvalidArgument:
		return OutcomeInvalid
	}
	return OutcomeError
}

// awaitInitial waits for the initial request, up to timer (set to
// InitialRequestTimeout; stopped on return), and returns its name, or the
// error that ends the stream with its Observer outcome.
func (s *Server) awaitInitial(ctx context.Context, in inbox, timer *time.Timer) (name, outcome string, err error) {
	defer timer.Stop()
	var req *lbpb.LoadBalanceRequest
	var ok bool
	for !ok {
		select {
		case req = <-in.reqs:
			ok = true
		case <-in.ready:
			if req, ok, err = in.next(); err != nil {
				err = recvStatus(err)
				return "", outcomeOf(err), err
			}
		case err := <-in.recvErr:
			err = recvStatus(err)
			return "", outcomeOf(err), err
		case <-timer.C:
			s.counters.initialTimeouts.Add(1)
			return "", OutcomeInitialTimeout, status.Errorf(codes.DeadlineExceeded, "lbserver: no initial request within %v", s.cfg.InitialRequestTimeout)
		case <-ctx.Done():
			return "", OutcomeOK, status.FromContextError(ctx.Err()).Err()
		case <-s.closing:
			return "", OutcomeShutdown, status.Error(codes.Unavailable, "lbserver: shutting down")
		}
	}
	init := req.GetInitialRequest()
	if init == nil {
		s.counters.invalidRequests.Add(1)
		return "", OutcomeInvalid, status.Error(codes.InvalidArgument, "lbserver: first message must be an initial_request")
	}
	return init.GetName(), "", nil
}

// streamState is one stream after its initial request. Owned by the
// handler goroutine.
type streamState struct {
	srv      *Server
	stream   balanceStream
	ctx      context.Context
	peerAddr netip.AddrPort
	id       uint64 // the stream's number in the server
	in       inbox
	ageTimer *time.Timer     // closes expired and wakes the stream at its maximum age; nil for none
	expired  <-chan struct{} // closed at the stream's maximum age; nil for none
	// own is the stream of the balancer's own transport, which may park
	// (see park); nil on grpc's. parked is set while it is parked.
	own     *ownStream
	parked  atomic.Bool
	svc     *service // nil until the service is acquired
	client  policy.Client
	key     clientstats.ClientKey
	log     *slog.Logger // nil until logger makes it
	ignored tokenBucket  // messages ignored (see ignore)
	reports tokenBucket  // ClientStats while the service does not exist (see handleUnknown)
	// setChange is closed when the settings it was read from are replaced.
	setChange <-chan struct{}
	// label is the Observer label of the stream's service; outcome, when
	// set, why the stream ended; movedTo the service a reconfiguration
	// maps it to (see errMoved).
	label, outcome, movedTo string
	// labelChange is closed when the directory may list the stream's
	// service under its name while label is UnknownServiceLabel (see
	// Server.labelOf); nil when it cannot.
	labelChange <-chan struct{}

	// A sender goroutine does each Send, and ends with it (see send).
	sendDone  chan error  // one result per sender; nil until the first send
	sendTimer *time.Timer // the stream's timer, stopped; nil until needed
	// shared is true when the stream may send lists encoded once for
	// every stream of a plan (see shareable); framed when it sends them
	// as framedMsg (an ownStream), rather than as a grpc.PreparedMsg.
	shared, framed bool

	sentInitial  bool
	sent         *encodedList // the last list sent, nil if none
	sentIDs      []string     // endpoint IDs of sent (its ids), for policy stickiness
	sentFallback bool         // the last message sent was a FallbackResponse
	first        string       // endpoint ID of the first entry of the last list built, counted in svc.assigned
	prevPlan     *plan        // the plan the stream last answered from, nil before its first answer
}

var (
	// errEnd ends a stream cleanly: the handler returns nil.
	errEnd = errors.New("lbserver: stream ends")
	// errMoved: a reconfiguration maps the stream's name to another
	// service, st.movedTo.
	errMoved = errors.New("lbserver: stream moves to another service")
	// errParked: the stream parked (see park). The handler returns it,
	// h2bidi's Park.
	errParked = h2bidi.Park
)

// end records why the stream ends, unless already recorded, and returns
// err.
func (st *streamState) end(outcome string, err error) error {
	if st.outcome == "" {
		st.outcome = outcome
	}
	return err
}

// event waits for what can happen to a stream besides a new plan (p, or
// none when nil): a request (handled), the client's end, the server's
// close, the stream's maximum age, or new settings. It returns nil after a
// request, a new plan or new settings; errMoved when the new settings map
// the stream's name to another service; otherwise the error the handler
// returns (errEnd for a clean end), which may come from handle. A read of
// the directory that may change the stream's label is taken meanwhile
// (setLabel), without returning. With mayPark, unless a label change is
// awaited, it parks the stream rather than wait (errParked): park looks at
// the channels this select waits on, so one added here goes there too.
func (st *streamState) event(changed <-chan struct{}, handle func(*lbpb.LoadBalanceRequest) error, mayPark bool) error {
	// rest is ready when the stream may park instead of waiting, and nil
	// otherwise.
	var rest <-chan struct{}
	if mayPark && st.labelChange == nil {
		rest = closedChan
	}
	for {
		select {
		case <-rest:
			if st.park(changed) {
				return errParked
			}
			rest = nil // something came meanwhile: take it
		case <-st.labelChange:
			st.setLabel() // and wait again
		case <-changed:
			return nil
		case req := <-st.in.reqs:
			return handle(req)
		case <-st.in.ready:
			if done, err := st.takeReady(handle); done {
				return err
			}
		case err := <-st.in.recvErr:
			return st.received(err)
		case <-st.ctx.Done():
			return st.ctxDone()
		case <-st.srv.closing:
			// End cleanly: clients reconnect at once, to another replica
			// while this one drains, and keep their backends meanwhile.
			return st.end(OutcomeShutdown, errEnd)
		case <-st.expired:
			return st.ageReached()
		case <-st.setChange:
			return st.settingsChanged()
		}
	}
}

// closedChan is a closed channel.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// park parks the stream, which waits for changed (its plan's), without a
// goroutine, and reports whether it did: the handler then returns
// h2bidi.Park, its goroutine ends, and the stack it held is freed; the
// stream keeps the rest of its state. Whatever event waits for wakes it
// (wake): the plan (service.wakeParked), a request or the stream's end
// (h2bidi's OnReady), the maximum age (ageTimer), new settings and the
// server's close (Server.Close and Reconfigure wake every parked stream).
// It returns false, not parked, when one of them came meanwhile: each
// signals before it wakes, and park registers before it looks, so that
// none is missed. Only streams of the own transport park.
func (st *streamState) park(changed <-chan struct{}) bool {
	// Once parked is set, a wake may resume the stream on another
	// goroutine: what park needs after that is read before.
	svc, ready := st.svc, st.in.ready
	signals := [...]<-chan struct{}{changed, st.ctx.Done(), st.srv.closing, st.expired, st.setChange}
	svc.park(st)
	st.parked.Store(true)
	if !pending(ready, signals[:]) {
		return true
	}
	if !st.parked.CompareAndSwap(true, false) {
		return true // woken already: the resumed handler takes it
	}
	svc.unpark(st)
	return false
}

// pending reports whether a message is ready or one of signals is closed:
// it looks without taking anything.
func pending(ready <-chan struct{}, signals []<-chan struct{}) bool {
	if len(ready) > 0 {
		return true
	}
	for _, c := range signals {
		select {
		case <-c:
			return true
		default:
		}
	}
	return false
}

// wake resumes the stream if it is parked, on a new goroutine. Safe for
// concurrent use; does not block.
func (st *streamState) wake() {
	if !st.parked.CompareAndSwap(true, false) {
		return
	}
	st.svc.unpark(st)
	st.own.st.Resume(st.resumed)
}

// takeReady takes the message or the end of receiving that the inbox
// signalled: done is true, with what handle or received returns, when
// there was one.
func (st *streamState) takeReady(handle func(*lbpb.LoadBalanceRequest) error) (done bool, err error) {
	req, ok, err := st.in.next()
	if ok {
		return true, handle(req)
	}
	if err != nil {
		return true, st.received(err)
	}
	return false, nil
}

// ctxDone is what ends the stream when its context is done.
func (st *streamState) ctxDone() error {
	return st.end(OutcomeOK, status.FromContextError(st.ctx.Err()).Err())
}

// ageReached ends the stream at its maximum age.
func (st *streamState) ageReached() error {
	st.srv.counters.streamsExpired.Add(1)
	st.debug("stream reached its maximum age")
	return st.end(OutcomeExpired, errEnd)
}

// settingsChanged takes new settings: errMoved when they map the stream's
// name to another service (st.movedTo), else nil.
func (st *streamState) settingsChanged() error {
	set := st.srv.live()
	st.setChange = set.changed
	if svc, err := set.names.Map(st.client.Name); err == nil && svc != st.key.Service {
		st.movedTo = svc
		return errMoved
	}
	return nil
}

// received returns what ends the stream when receiving ended with err:
// errEnd for the client's half-close, else err's status.
func (st *streamState) received(err error) error {
	if errors.Is(err, io.EOF) {
		return st.end(OutcomeOK, errEnd)
	}
	err = recvStatus(err)
	return st.end(outcomeOf(err), err)
}

// logger returns the stream's logger, with its stream ID, peer and
// service, made at its first use: most streams never log, and a logger
// with attributes costs a few hundred bytes.
func (st *streamState) logger() *slog.Logger {
	if st.log == nil {
		st.log = st.srv.log.With("stream", st.key.Stream, "peer", st.key.Peer, "service", quote(st.key.Service))
	}
	return st.log
}

// debug logs at DEBUG with the stream's logger, if the server's logger
// logs DEBUG.
func (st *streamState) debug(msg string, args ...any) {
	if st.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		st.logger().Debug(msg, args...)
	}
}

// endErr maps errEnd to nil.
func endErr(err error) error {
	if errors.Is(err, errEnd) {
		return nil
	}
	return err
}

// awaitService answers a stream for a service the directory says does not
// exist with a fallback, at once and without a watch, and waits until it
// appears. done is true when the stream ended meanwhile (with err for the
// handler to return; errMoved when it moves to another service); false
// when the caller should acquire the service: it exists, or the directory
// cannot tell yet.
func (st *streamState) awaitService(svcName string) (done bool, err error) {
	s := st.srv
	base, _ := discovery.SplitName(svcName)
	counted := false
	for {
		exists, ready, changed := s.dir.Lookup(base)
		if exists || !ready {
			// When the service appeared, it is labelled by its name
			// from now on.
			st.setLabel()
			return false, nil
		}
		if !counted {
			counted = true
			st.setLabel() // unlisted: UnknownServiceLabel
			s.counters.unknownServices.Add(1)
			// One line a minute for all unknown names: they come from
			// clients.
			args := []any{"service", quote(svcName), "name", quote(st.client.Name), "peer", st.key.Peer}
			if strings.Contains(base, ".") {
				args = append(args, "hint", "a name with dots may be a DNS name: list its zone in balancer.zones (-zone)")
			}
			s.opsLog.info(UnknownServiceLabel, "unknown service: the directory does not list it; clients get fallback", args...)
		}
		if err := st.sendInitial(); err != nil {
			return true, err
		}
		if err := st.sendFallback(FallbackUnknownService); err != nil {
			return true, err
		}
		// ClientStats of a service that does not exist count for nothing.
		if err := st.event(changed, st.handleUnknown, false); err != nil {
			if errors.Is(err, errMoved) {
				return true, err
			}
			return true, endErr(err)
		}
	}
}

// awaitFirst waits, up to FirstListTimeout, for the service's first plan
// after p, which is not ready, and returns the plan in force then; or the
// error that ends the stream.
func (st *streamState) awaitFirst(p *plan) (*plan, error) {
	s := st.srv
	timer := time.NewTimer(s.cfg.FirstListTimeout)
	defer timer.Stop()
	for {
		select {
		case <-st.labelChange:
			// The directory is read meanwhile.
			st.setLabel()
		case <-p.changed:
			return st.svc.cur.Load(), nil
		case <-timer.C:
			s.throttle.Warn("no discovery answer yet; sending fallback", "service", quote(st.key.Service), logattr.Duration("waited", s.cfg.FirstListTimeout))
			return st.svc.cur.Load(), nil
		case <-st.ctx.Done():
			return nil, st.ctxDone()
		case <-s.closing:
			return nil, st.end(OutcomeShutdown, status.Error(codes.Unavailable, "lbserver: shutting down"))
		}
	}
}

// relabel takes the stream's Observer label from the directory again if
// the directory was read since it was taken (see setLabel), so that what
// the stream reports next is counted under it. Does not block.
func (st *streamState) relabel() {
	select {
	case <-st.labelChange: // nil: never
		st.setLabel()
	default:
	}
}

// setLabel takes the stream's Observer label from the directory (see
// Server.labelOf). A stream counted under UnknownServiceLabel whose
// service the directory now lists (it had not been read when the stream
// came, or the service was registered since) moves to the service's
// label: StreamEnded with OutcomeMoved under the old label, StreamStarted
// under the new one, as for a reconfiguration that maps its name
// elsewhere. Does not block.
func (st *streamState) setLabel() {
	s := st.srv
	label, changed := s.labelOf(st.key.Service)
	st.labelChange = changed
	if label == st.label {
		return
	}
	st.debug("stream counted under another service label", "from", st.label, "to", label)
	s.obs.StreamEnded(st.label, OutcomeMoved)
	st.label = label
	s.obs.StreamStarted(label)
}

// sendInitial sends the initial response, once.
func (st *streamState) sendInitial() error {
	if st.sentInitial {
		return nil
	}
	init := &lbpb.InitialLoadBalanceResponse{}
	if d := st.srv.cfg.ClientStatsInterval; d > 0 {
		init.ClientStatsReportInterval = durationpb.New(d)
	}
	if err := st.send(&lbpb.LoadBalanceResponse{
		LoadBalanceResponseType: &lbpb.LoadBalanceResponse_InitialResponse{InitialResponse: init},
	}); err != nil {
		return endErr(err)
	}
	st.sentInitial = true
	return nil
}

// sendFallback sends a FallbackResponse, for reason (one of
// FallbackReasons), unless the last message was one.
func (st *streamState) sendFallback(reason string) error {
	if st.sentFallback {
		return nil
	}
	if err := st.send(&lbpb.LoadBalanceResponse{
		LoadBalanceResponseType: &lbpb.LoadBalanceResponse_FallbackResponse{FallbackResponse: &lbpb.FallbackResponse{}},
	}); err != nil {
		return err
	}
	s := st.srv
	s.counters.fallbacksSent.Add(1)
	st.relabel()
	s.obs.FallbackSent(st.label, reason)
	st.sentFallback, st.sent, st.sentIDs = true, nil, nil
	if st.svc != nil {
		st.svc.assign(st.first, "")
		// Unknown services are logged once for all in awaitService.
		s.opsLog.info(st.key.Service, "answering with fallback", "service", quote(st.key.Service), "reason", reason)
	}
	st.first = ""
	st.debug("sent fallback", "reason", reason)
	return nil
}

// send sends m (a *lbpb.LoadBalanceResponse, or a *grpc.PreparedMsg or
// framedMsg on a shared stream) and waits until the transport took it.
// Unless the own transport's flow control takes m at once (see
// ownStream.trySend), the Send runs on a goroutine of its own that lives
// only while it does, so that the handler can give up on it: a client that
// does not read its lists makes the Send block on flow control until the
// stream ends; so when m is not taken within SendTimeout, send returns
// ResourceExhausted: the handler returns it, the stream ends, and that
// unblocks the Send. It may return errEnd (the server closes: end
// cleanly) or the stream's error. Only the handler goroutine calls it.
func (st *streamState) send(m any) error {
	s := st.srv
	timeout := s.live().SendTimeout
	if o, ok := st.stream.(*ownStream); ok && timeout >= ownWriteTimeout {
		// On the balancer's own transport a message the client's flow
		// control takes at once is written here, without a goroutine: the
		// socket's write timeout, shorter than SendTimeout, bounds it.
		if sent, err := o.trySend(m); sent {
			if err != nil {
				return st.end(outcomeOf(err), err)
			}
			return nil
		}
	}
	if st.sendDone == nil {
		st.sendDone = make(chan error, 1)
	}
	if st.sendTimer == nil {
		st.sendTimer = time.NewTimer(time.Hour)
		st.sendTimer.Stop()
	}
	// The sender counts in the server's stream WaitGroup (the handler's
	// count is held, so adding is safe), so Close waits for it too; it
	// ends when its Send returns, which the stream's end guarantees.
	s.streams.Add(1)
	go func(done chan<- error) {
		defer s.streams.Done()
		done <- st.sendMsg(m) // buffered: send takes the result, or has left
	}(st.sendDone)
	st.sendTimer.Reset(timeout)
	defer st.sendTimer.Stop()
	select {
	case err := <-st.sendDone:
		if err != nil {
			return st.end(outcomeOf(err), err)
		}
		return nil
	case <-st.sendTimer.C:
		s.counters.slowReadersCut.Add(1)
		s.throttle.Warn("cutting a client that does not read its lists", "stream", st.key.Stream, "peer", st.key.Peer,
			"service", quote(st.key.Service), logattr.Duration("send_timeout", timeout))
		return st.end(OutcomeSlowReader, status.Errorf(codes.ResourceExhausted, "lbserver: stream cut: the client did not read its lists within %v (limit send-timeout)", timeout))
	case <-st.ctx.Done():
		if st.sentMeanwhile() {
			return nil // counted as sent; the caller sees the end next
		}
		return st.end(OutcomeOK, status.FromContextError(st.ctx.Err()).Err())
	case <-s.closing:
		if st.sentMeanwhile() {
			return nil
		}
		return st.end(OutcomeShutdown, errEnd)
	}
}

// sentMeanwhile reports whether the Send that send waits for has already
// returned without error, when the stream's end and the Send's result come
// at once: the client may hold the list, so it counts as sent.
func (st *streamState) sentMeanwhile() bool {
	select {
	case err := <-st.sendDone:
		return err == nil
	default:
		return false
	}
}

// sendMsg does one Send of m. Safe to call from the sender goroutine
// while the handler waits.
func (st *streamState) sendMsg(m any) error {
	if r, ok := m.(*lbpb.LoadBalanceResponse); ok {
		return st.stream.Send(r)
	}
	return st.stream.SendMsg(m)
}

// inbox is where a stream's handler takes the client's messages from:
// on the balancer's own transport, the connection reader's queue (ready
// is signalled when next may have a message or the end of receiving);
// on grpc's, the channels of a receive loop (internal/recvloop) that
// Recv's on a goroutine of its own until the stream ends. The channels
// of the other kind are nil.
type inbox struct {
	reqs    <-chan *lbpb.LoadBalanceRequest
	recvErr <-chan error
	ready   <-chan struct{}
	next    func() (*lbpb.LoadBalanceRequest, bool, error)
}

// receive returns stream's inbox.
func receive(ctx context.Context, stream balanceStream) inbox {
	if o, ok := stream.(*ownStream); ok {
		return inbox{ready: o.st.Ready(), next: o.st.Next}
	}
	reqs, recvErr := recvloop.Start(ctx, stream.Recv)
	return inbox{reqs: reqs, recvErr: recvErr}
}

// compressionInfo is what the stream grpc hands a handler tells of its
// encoding (grpc's transport stream, behind grpc.ServerTransportStream).
type compressionInfo interface {
	RecvCompress() string
	SendCompress() string
	ContentSubtype() string
}

// shareable reports whether the stream of ctx may send a message encoded
// for another stream (a grpc.PreparedMsg, see encodedList.message): its
// content subtype is proto and neither its client's messages nor its
// responses are compressed (grpc compresses a response with the
// compressor the client's messages came with; a compressed PreparedMsg
// holds buffers each Send gives back). False when grpc does not tell.
// Does not block.
func shareable(ctx context.Context) bool {
	info, ok := grpc.ServerTransportStreamFromContext(ctx).(compressionInfo)
	if !ok {
		return false
	}
	identity := func(c string) bool { return c == "" || c == encoding.Identity }
	sub := info.ContentSubtype()
	return identity(info.RecvCompress()) && identity(info.SendCompress()) && (sub == "" || sub == "proto")
}

// update sends what plan p calls for, if it differs from what was sent.
func (st *streamState) update(p *plan) error {
	// The list reflects a discovery change when p was made for a new
	// snapshot and the stream answered from an older plan before.
	sinceChange := time.Duration(-1)
	if p.fromSnap && st.prevPlan != nil && st.prevPlan != p {
		sinceChange = max(time.Since(p.arrived), 0)
	}
	st.prevPlan = p
	if !p.ready {
		return st.sendFallback(FallbackFirstListTimeout)
	}
	if len(p.snap.Endpoints) == 0 {
		return st.sendFallback(FallbackNoInstances)
	}
	// The new first entry counts as this stream's from now on, sent or not:
	// a stream whose send fails ends, and gives it back.
	entries, first := st.svc.choose(p.prepare(), p.snap.Endpoints, policy.StreamInput{
		Client:   st.client,
		Previous: st.sentIDs,
	}, st.first)
	st.first = first
	if p.dropShare > 0 {
		entries = policy.AddDrops(entries, p.dropShare, p.dropToken, p.maxEntries)
	}
	// Streams that get the same entries from p share one list, encoded
	// once.
	el := p.list(entries)
	if !st.sentFallback && st.sent != nil && (st.sent == el || serverListEqual(st.sent.servers, el.servers)) {
		return nil
	}
	if err := st.send(el.message(st)); err != nil {
		return err
	}
	n := len(el.servers)
	st.srv.counters.listsSent.Add(1)
	st.relabel()
	st.srv.obs.ListSent(st.label, n, n-len(el.ids), sinceChange)
	st.sent, st.sentIDs, st.sentFallback = el, el.ids, false
	st.debug("sent list", "entries", n, "policy", p.policyName, "index", p.snap.Index)
	return nil
}

// handleRequest takes a message after the initial request: ClientStats are
// counted within the stream's bounds (see clientstats.Registry.Add), and
// the calls they report started are attributed to the endpoints of the
// list last sent (see service.attribute); anything else is ignored.
// Reports that are clamped or ignored are counted in Stats.BadClientStats
// and logged at most once a second per kind over the whole server. Ignored
// messages count toward MaxIgnoredMessages: it returns the error that
// ends the stream when there were too many.
func (st *streamState) handleRequest(req *lbpb.LoadBalanceRequest) error {
	s := st.srv
	cs := req.GetClientStats()
	if cs == nil {
		s.throttle.Log(context.Background(), slog.LevelDebug, "ignoring unexpected request after the initial one", "stream", st.key.Stream, "peer", st.key.Peer, "service", quote(st.key.Service))
		return st.ignore()
	}
	res := s.clientStats.Add(st.key, cs, time.Now())
	if res.Started > 0 && st.svc != nil && st.sent != nil && len(st.sent.servers) > 0 {
		st.svc.attribute(s.live().childPolicy(st.key.Service), len(st.sent.servers), st.sentIDs, res.Started)
	}
	if res.OtherTokens > 0 {
		s.throttle.Log(context.Background(), slog.LevelDebug, "client stats name drop tokens this balancer never issued", "stream", st.key.Stream, "peer", st.key.Peer,
			"service", quote(st.key.Service), "entries", res.OtherTokens)
	}
	if res.ShareCapped {
		set := s.live()
		s.throttle.Info("client stream offers more than its share of the rate limit; the excess is not counted",
			"stream", st.key.Stream, "peer", st.key.Peer, "service", quote(st.key.Service),
			"max_share", set.MaxClientRateShare, "limit", set.rateLimit(st.key.Service))
	}
	switch res.Verdict {
	case clientstats.Accepted:
		st.debug("client stats", "started", cs.GetNumCallsStarted(), "finished", cs.GetNumCallsFinished(),
			"known_received", cs.GetNumCallsFinishedKnownReceived(), "failed_to_send", cs.GetNumCallsFinishedWithClientFailedToSend(),
			"drop_tokens", len(cs.GetCallsFinishedWithDrop()))
		return nil
	case clientstats.Clamped:
		// Counted (within the allowance), at a plausible rate: not ignored.
		s.counters.badClientStats.Add(1)
		s.throttle.Info("client stats claim more calls than plausible; clamped", "stream", st.key.Stream, "peer", st.key.Peer,
			"service", quote(st.key.Service), "started", cs.GetNumCallsStarted(), "max_call_rate", s.live().MaxClientCallRate)
		return nil
	case clientstats.TooFrequent:
		s.counters.badClientStats.Add(1)
		s.throttle.Info("client stats sent too often; ignored", "stream", st.key.Stream, "peer", st.key.Peer,
			"service", quote(st.key.Service), logattr.Duration("interval", s.cfg.ClientStatsInterval))
	default:
		s.counters.badClientStats.Add(1)
		s.throttle.Info("client stats with negative counts; ignored", "stream", st.key.Stream, "peer", st.key.Peer,
			"service", quote(st.key.Service))
	}
	return st.ignore()
}

// handleUnknown takes a message after the initial request on a stream for
// a service that does not exist: ClientStats count for nothing, but those
// sent at the rate a stream may send them (as for a service that exists,
// see clientStatsConfig) are not ignored either; anything else is, and
// counts toward MaxIgnoredMessages like in handleRequest.
func (st *streamState) handleUnknown(req *lbpb.LoadBalanceRequest) error {
	s := st.srv
	if req.GetClientStats() != nil && (s.reportRate == 0 || st.reports.take(s.now(), s.reportRate, s.reportBurst)) {
		return nil
	}
	return st.ignore()
}

// ignore counts one ignored message of the stream. When the stream had
// more than MaxIgnoredMessages of them within a minute (its bucket holds
// that many, refilled at that many a minute), it counts and logs
// (throttled) the stream's end and returns the ResourceExhausted status
// that ends it: each message costs a parse, and a client that floods them
// is broken or hostile.
func (st *streamState) ignore() error {
	s := st.srv
	n := s.live().MaxIgnoredMessages
	if n == 0 || st.ignored.take(s.now(), float64(n)/60, float64(n)) {
		return nil
	}
	s.counters.floodsCut.Add(1)
	s.throttle.Warn("ending a stream that floods messages the balancer ignores", "stream", st.key.Stream, "peer", st.key.Peer,
		"service", quote(st.key.Service), "max", n, logattr.Duration("per", time.Minute))
	return st.end(OutcomeFlooding, status.Errorf(codes.ResourceExhausted,
		"lbserver: stream ended: more than %d of its messages within a minute were ignored (ClientStats more often than twice per interval or with negative counts, or messages other than ClientStats; limit max-ignored-messages)", n))
}

// serverListEqual compares two lists by content.
func serverListEqual(a, b []*lbpb.Server) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if x.Drop != y.Drop || x.Port != y.Port || x.LoadBalanceToken != y.LoadBalanceToken || string(x.IpAddress) != string(y.IpAddress) {
			return false
		}
	}
	return true
}

func recvStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(codes.Unknown, "lbserver: receiving: %v", err)
}

// peerOf returns the stream's peer address, IPv4 unmapped, or the zero
// AddrPort.
func peerOf(ctx context.Context) netip.AddrPort {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return netip.AddrPort{}
	}
	return addrPortOf(p.Addr)
}
