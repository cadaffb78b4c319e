package lbserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/policy"
)

type balanceStream = grpc.BidiStreamingServer[lbpb.LoadBalanceRequest, lbpb.LoadBalanceResponse]

// BalanceLoad serves one grpclb client stream. It blocks until the client
// goes away, the stream fails, or the server is closed.
func (s *Server) BalanceLoad(stream balanceStream) error {
	if !s.enter() {
		return status.Error(codes.Unavailable, "lbserver: shutting down")
	}
	defer s.streams.Done()
	s.counters.streamsStarted.Add(1)
	s.counters.streamsActive.Add(1)
	defer s.counters.streamsActive.Add(-1)

	ctx := stream.Context()
	peerAddr := peerOf(ctx)
	id := s.streamSeq.Add(1)
	log := s.log.With("stream", id, "peer", peerAddr.String())

	// Recv runs in its own goroutine so that a silent client can be timed
	// out and ClientStats read while lists are sent. It ends when the
	// stream's context does, which grpc ends as this handler returns.
	reqs := make(chan *lbpb.LoadBalanceRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	name, err := s.awaitInitial(ctx, reqs, recvErr)
	if err != nil {
		log.Debug("stream rejected", "err", err)
		return err
	}
	svcName, err := s.names.Map(name)
	if err != nil {
		s.counters.invalidRequests.Add(1)
		log.Info("invalid initial request", "name", name, "err", err)
		return status.Errorf(codes.InvalidArgument, "lbserver: invalid name: %v", err)
	}
	svc, err := s.reg.acquire(svcName)
	switch {
	case errors.Is(err, errTooManySvcs):
		log.Warn("refusing stream: too many services watched", "service", svcName, "max", s.cfg.MaxServices)
		return status.Errorf(codes.ResourceExhausted, "%v (%d)", err, s.cfg.MaxServices)
	case err != nil:
		return status.Error(codes.Unavailable, err.Error())
	}
	defer s.reg.release(svc)

	key := clientstats.ClientKey{Service: svcName, Stream: id, Peer: peerAddr.String()}
	defer s.clientStats.Forget(key)
	log = log.With("service", svcName)
	log.Debug("stream started", "name", name)

	st := &streamState{
		srv:    s,
		stream: stream,
		svc:    svc,
		client: policy.Client{Addr: peerAddr.Addr(), Name: name, Seed: s.seed()},
		key:    key,
		log:    log,
	}
	return st.run(ctx, reqs, recvErr)
}

// awaitInitial waits for the initial request and returns its name.
func (s *Server) awaitInitial(ctx context.Context, reqs <-chan *lbpb.LoadBalanceRequest, recvErr <-chan error) (string, error) {
	timer := time.NewTimer(s.cfg.InitialRequestTimeout)
	defer timer.Stop()
	select {
	case req := <-reqs:
		init := req.GetInitialRequest()
		if init == nil {
			s.counters.invalidRequests.Add(1)
			return "", status.Error(codes.InvalidArgument, "lbserver: first message must be an initial_request")
		}
		return init.GetName(), nil
	case err := <-recvErr:
		return "", recvStatus(err)
	case <-timer.C:
		s.counters.initialTimeouts.Add(1)
		return "", status.Errorf(codes.DeadlineExceeded, "lbserver: no initial request within %v", s.cfg.InitialRequestTimeout)
	case <-ctx.Done():
		return "", status.FromContextError(ctx.Err()).Err()
	case <-s.closing:
		return "", status.Error(codes.Unavailable, "lbserver: shutting down")
	}
}

// streamState is one stream after its initial request. Owned by the
// handler goroutine.
type streamState struct {
	srv    *Server
	stream balanceStream
	svc    *service
	client policy.Client
	key    clientstats.ClientKey
	log    *slog.Logger

	sent         []*lbpb.Server // the last list sent, nil if none
	sentIDs      []string       // endpoint IDs of sent, for policy stickiness
	sentFallback bool           // the last message sent was a FallbackResponse
	first        string         // endpoint ID of the first entry of the last list built, counted in svc.assigned
}

func (st *streamState) run(ctx context.Context, reqs <-chan *lbpb.LoadBalanceRequest, recvErr <-chan error) error {
	s := st.srv
	defer func() { st.svc.assign(st.first, "") }()
	p := st.svc.cur.Load()
	if !p.ready {
		timer := time.NewTimer(s.cfg.FirstListTimeout)
		select {
		case <-p.changed:
		case <-timer.C:
			st.log.Warn("no discovery answer yet; sending fallback", "waited", s.cfg.FirstListTimeout)
		case <-ctx.Done():
			timer.Stop()
			return status.FromContextError(ctx.Err()).Err()
		case <-s.closing:
			timer.Stop()
			return status.Error(codes.Unavailable, "lbserver: shutting down")
		}
		timer.Stop()
		p = st.svc.cur.Load()
	}
	init := &lbpb.InitialLoadBalanceResponse{}
	if d := s.cfg.ClientStatsInterval; d > 0 {
		init.ClientStatsReportInterval = durationpb.New(d)
	}
	if err := st.stream.Send(&lbpb.LoadBalanceResponse{
		LoadBalanceResponseType: &lbpb.LoadBalanceResponse_InitialResponse{InitialResponse: init},
	}); err != nil {
		return err
	}
	var expired <-chan time.Time
	if age := s.cfg.MaxStreamAge; age > 0 {
		// ± 10 %, from the stream's seed, so streams do not end together.
		jitter := time.Duration(float64(age) * (float64(st.client.Seed%2001)/10000 - 0.1))
		timer := time.NewTimer(age + jitter)
		defer timer.Stop()
		expired = timer.C
	}
	// The list goes out right after the initial response: a grpc-go client
	// that gets the initial response but no list can fail its picks.
	for {
		if err := st.update(p); err != nil {
			return err
		}
		select {
		case <-p.changed:
			p = st.svc.cur.Load()
		case req := <-reqs:
			st.handleRequest(req)
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return recvStatus(err)
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.closing:
			// End cleanly: clients reconnect at once, to another replica
			// while this one drains, and keep their backends meanwhile.
			return nil
		case <-expired:
			s.counters.streamsExpired.Add(1)
			st.log.Debug("stream reached its maximum age")
			return nil
		}
	}
}

// update sends what plan p calls for, if it differs from what was sent.
func (st *streamState) update(p *plan) error {
	if !p.ready || len(p.snap.Endpoints) == 0 {
		if st.sentFallback {
			return nil
		}
		if err := st.stream.Send(&lbpb.LoadBalanceResponse{
			LoadBalanceResponseType: &lbpb.LoadBalanceResponse_FallbackResponse{FallbackResponse: &lbpb.FallbackResponse{}},
		}); err != nil {
			return err
		}
		st.srv.counters.fallbacksSent.Add(1)
		st.sentFallback, st.sent, st.sentIDs = true, nil, nil
		st.svc.assign(st.first, "")
		st.first = ""
		st.log.Debug("sent fallback", "ready", p.ready)
		return nil
	}
	// The new first entry counts as this stream's from now on, sent or not:
	// a stream whose send fails ends, and gives it back.
	entries, first := st.svc.choose(p.policy, policy.Input{
		Endpoints:   p.snap.Endpoints,
		Client:      st.client,
		Previous:    st.sentIDs,
		LoadWeights: p.loadWeights,
	}, st.first)
	st.first = first
	if p.dropShare > 0 {
		entries = policy.AddDrops(entries, p.dropShare, p.dropToken, st.srv.cfg.PolicyOptions.MaxEntries)
	}
	list := make([]*lbpb.Server, 0, len(entries))
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Drop {
			list = append(list, &lbpb.Server{Drop: true, LoadBalanceToken: e.DropToken})
			continue
		}
		list = append(list, p.servers[e.Index])
		ids = append(ids, p.snap.Endpoints[e.Index].ID)
	}
	if !st.sentFallback && serverListEqual(st.sent, list) {
		return nil
	}
	if err := st.stream.Send(&lbpb.LoadBalanceResponse{
		LoadBalanceResponseType: &lbpb.LoadBalanceResponse_ServerList{ServerList: &lbpb.ServerList{Servers: list}},
	}); err != nil {
		return err
	}
	st.srv.counters.listsSent.Add(1)
	st.sent, st.sentIDs, st.sentFallback = list, ids, false
	st.log.Debug("sent list", "entries", len(list), "policy", p.policyName, "index", p.snap.Index)
	return nil
}

// handleRequest takes a message after the initial request: ClientStats are
// counted; anything else is ignored with a log line.
func (st *streamState) handleRequest(req *lbpb.LoadBalanceRequest) {
	cs := req.GetClientStats()
	if cs == nil {
		st.log.Debug("ignoring unexpected request after the initial one")
		return
	}
	if !clientstats.Validate(cs) {
		st.srv.counters.badClientStats.Add(1)
		st.log.Info("ignoring implausible client stats")
		return
	}
	st.srv.clientStats.Add(st.key, cs)
	st.log.Debug("client stats", "started", cs.GetNumCallsStarted(), "finished", cs.GetNumCallsFinished(),
		"known_received", cs.GetNumCallsFinishedKnownReceived(), "failed_to_send", cs.GetNumCallsFinishedWithClientFailedToSend(),
		"drop_tokens", len(cs.GetCallsFinishedWithDrop()))
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
	if !ok || p.Addr == nil {
		return netip.AddrPort{}
	}
	var ap netip.AddrPort
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		ap = tcp.AddrPort()
	} else {
		ap, _ = netip.ParseAddrPort(p.Addr.String())
	}
	// A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; unmap so
	// that every replica hashes a client the same way.
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
