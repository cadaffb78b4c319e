package lbserver

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/discovery"
)

// FuzzNameMapper: any name a client sends either is rejected or maps to a
// valid canonical service name whose service part has no empty label, and
// the same name in upper case maps alike; Map never panics.
func FuzzNameMapper(f *testing.F) {
	for _, s := range []string{"user-srv:50051", "user-srv", "[::1]:80", "a.lb.internal.:443", "users", ":1", "", "a/b", "\xff", "x:y:z",
		"USER-SRV@V2,Srv:80", "Users.LB.Internal:443", "user-srv.@"} {
		f.Add(s)
	}
	m := NameMapper{MaxLength: DefaultMaxNameLength, Zones: []string{"lb.internal"}, Aliases: map[string]string{"users": "user-srv"}}
	f.Fuzz(func(t *testing.T, name string) {
		svc, err := m.Map(name)
		if err != nil {
			return
		}
		if verr := ValidateName(svc, DefaultMaxNameLength); verr != nil {
			t.Fatalf("Map(%q) = %q, which is not a valid name: %v", name, svc, verr)
		}
		if strings.HasSuffix(svc, ".") {
			t.Fatalf("Map(%q) = %q keeps a trailing dot", name, svc)
		}
		if c := discovery.Canonical(svc); c != svc {
			t.Fatalf("Map(%q) = %q, not canonical (%q)", name, svc, c)
		}
		if base, _ := discovery.SplitName(svc); strings.HasPrefix(base, ".") || strings.HasSuffix(base, ".") || strings.Contains(base, "..") {
			t.Fatalf("Map(%q) = %q: the service %q has an empty label", name, svc, base)
		}
		upper := []byte(name)
		for i, b := range upper {
			if 'a' <= b && b <= 'z' {
				upper[i] = b - ('a' - 'A')
			}
		}
		if got, err := m.Map(string(upper)); err != nil || got != svc {
			t.Fatalf("Map(%q) = %q, but Map(%q) = %q, %v", name, svc, upper, got, err)
		}
	})
}

// fuzzStream is a balancer stream that delivers one request and then
// waits; the second message sent ends it.
type fuzzStream struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelFunc
	req    *lbpb.LoadBalanceRequest
	taken  bool
	sent   []*lbpb.LoadBalanceResponse
}

func (s *fuzzStream) Context() context.Context { return s.ctx }
func (s *fuzzStream) Recv() (*lbpb.LoadBalanceRequest, error) {
	if !s.taken {
		s.taken = true
		return s.req, nil
	}
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}
func (s *fuzzStream) Send(r *lbpb.LoadBalanceResponse) error {
	s.sent = append(s.sent, r)
	if len(s.sent) == 2 {
		s.cancel()
	}
	return nil
}

// FuzzBalanceLoad: whatever the first message, a stream either ends with
// InvalidArgument or gets the initial response followed by a list or a
// fallback; the server never panics or hangs.
func FuzzBalanceLoad(f *testing.F) {
	for _, r := range []*lbpb.LoadBalanceRequest{
		initial("svc:80"), initial(""), initial("nope"), initial("a/b"), {},
		{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{ClientStats: &lbpb.ClientStats{NumCallsStarted: -1}}},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.FirstListTimeout = 10 * time.Millisecond
	cfg.WatchLinger = 0
	cfg.LoadReports = false
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.Close)
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := &lbpb.LoadBalanceRequest{}
		if err := proto.Unmarshal(raw, req); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st := &fuzzStream{ctx: ctx, cancel: cancel, req: req}
		err := s.BalanceLoad(st)
		if ctx.Err() == context.DeadlineExceeded {
			t.Fatalf("stream for %v hung", req)
		}
		if len(st.sent) == 0 {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("stream for %v ended with %v and sent nothing; want InvalidArgument", req, err)
			}
			return
		}
		if st.sent[0].GetInitialResponse() == nil || len(st.sent) != 2 ||
			(st.sent[1].GetServerList() == nil && st.sent[1].GetFallbackResponse() == nil) {
			t.Fatalf("stream for %v sent %v", req, st.sent)
		}
	})
}

// seqStream is a balancer stream that delivers its requests in order and
// then ends (io.EOF), recording what the server sends.
type seqStream struct {
	grpc.ServerStream
	ctx  context.Context
	reqs []*lbpb.LoadBalanceRequest
	sent []*lbpb.LoadBalanceResponse
}

func (s *seqStream) Context() context.Context { return s.ctx }
func (s *seqStream) Recv() (*lbpb.LoadBalanceRequest, error) {
	if len(s.reqs) == 0 {
		return nil, io.EOF
	}
	r := s.reqs[0]
	s.reqs = s.reqs[1:]
	return r, nil
}
func (s *seqStream) Send(r *lbpb.LoadBalanceResponse) error {
	s.sent = append(s.sent, r)
	return nil
}

// FuzzStreamMessages: after its initial request, a stream sends n
// messages alternating between a and b (ClientStats or anything else).
// It is served (the initial response, then a list or a fallback while the
// first watch has no answer) and then ends cleanly,
// or, only when it sent more messages than MaxIgnoredMessages, with
// ResourceExhausted naming max-ignored-messages; the server never panics
// or hangs.
func FuzzStreamMessages(f *testing.F) {
	const maxIgnored = 5
	for _, seed := range []struct {
		a, b *lbpb.LoadBalanceRequest
		n    uint8
	}{
		{clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: 1}), clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: 2}), 20},
		{clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: -1}), &lbpb.LoadBalanceRequest{}, 7},
		{initial("svc:80"), clientStatsMsg(&lbpb.ClientStats{NumCallsStarted: 1 << 40}), 3},
		{clientStatsMsg(&lbpb.ClientStats{CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{LoadBalanceToken: "drop-ratelimit", NumCalls: 5}}}), &lbpb.LoadBalanceRequest{}, 255},
	} {
		a, err := proto.Marshal(seed.a)
		if err != nil {
			f.Fatal(err)
		}
		b, err := proto.Marshal(seed.b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(a, b, seed.n)
	}
	cfg := testConfig(newFakeSource(snap("svc", ep("a", "127.0.0.1:1"))))
	cfg.FirstListTimeout = 10 * time.Millisecond
	cfg.WatchLinger = time.Minute
	cfg.LoadReports = false
	cfg.MaxIgnoredMessages = maxIgnored
	cfg.Services = map[string]ServiceSettings{"svc": {RateLimit: 100}}
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.Close)
	f.Fuzz(func(t *testing.T, rawA, rawB []byte, n uint8) {
		a, b := &lbpb.LoadBalanceRequest{}, &lbpb.LoadBalanceRequest{}
		if proto.Unmarshal(rawA, a) != nil || proto.Unmarshal(rawB, b) != nil {
			return
		}
		reqs := []*lbpb.LoadBalanceRequest{initial("svc:80")}
		for i := range int(n) {
			if i%2 == 0 {
				reqs = append(reqs, a)
			} else {
				reqs = append(reqs, b)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st := &seqStream{ctx: ctx, reqs: reqs}
		err := s.BalanceLoad(st)
		if ctx.Err() == context.DeadlineExceeded {
			t.Fatalf("stream of %d messages (%v, %v) hung", n, a, b)
		}
		if len(st.sent) < 2 || st.sent[0].GetInitialResponse() == nil || (st.sent[1].GetServerList() == nil && st.sent[1].GetFallbackResponse() == nil) {
			t.Fatalf("stream of %d messages (%v, %v) sent %v", n, a, b, st.sent)
		}
		switch {
		case err == nil:
		case status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "limit max-ignored-messages"):
			if n <= maxIgnored {
				t.Fatalf("stream of %d messages (%v, %v) ended with %v; at most %d can be ignored", n, a, b, err, n)
			}
		default:
			t.Fatalf("stream of %d messages (%v, %v) ended with %v", n, a, b, err)
		}
	})
}
