package lbserver

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
)

// recordingHandler keeps the messages of the records it gets.
type recordingHandler struct {
	mu   *sync.Mutex
	msgs *[]string
}

func (h recordingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.msgs = append(*h.msgs, r.Message)
	return nil
}
func (h recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordingHandler) WithGroup(string) slog.Handler      { return h }

// TestImplausibleClientStats: a stream that floods reports of 2^40 calls
// is counted for what is plausible only, each of its reports counts in
// BadClientStats, and the log gets at most one line per kind per second.
func TestImplausibleClientStats(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")))
	cfg := testConfig(src)
	var mu sync.Mutex
	var msgs []string
	cfg.Logger = slog.New(recordingHandler{&mu, &msgs})
	cfg.MaxClientCallRate = 1000 // 2 × 10 s saved up: 20,000 calls
	// Off: the stream would end after 100 ignored reports
	// (TestIgnoredMessagesEndTheStream); here every report is counted.
	cfg.MaxIgnoredMessages = 0
	srv, c := startServer(t, cfg)
	s := open(t, c, "svc:1")
	recv(t, s)
	recv(t, s)
	start := time.Now()
	const n = 500
	for range n {
		if err := s.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_ClientStats{
			ClientStats: &lbpb.ClientStats{NumCallsStarted: 1 << 40, NumCallsFinished: 1 << 40}}}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().BadClientStats < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d reports counted as bad", srv.Stats().BadClientStats, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	got := srv.ClientStats().Service("svc")
	// Three reports at once (the report burst) share the 20 s allowance.
	if got.Reports != 3 || got.Started > 20000+int64(elapsed.Seconds()*1000)+1 {
		t.Errorf("counted %d reports, %d calls started; want 3 reports within 20,000 calls + 1,000/s", got.Reports, got.Started)
	}
	mu.Lock()
	defer mu.Unlock()
	perKind := map[string]int{}
	for _, m := range msgs {
		perKind[m]++
	}
	for m, k := range perKind {
		if k > int(elapsed/time.Second)+1 {
			t.Errorf("%q logged %d times in %v", m, k, elapsed)
		}
	}
	if len(perKind) == 0 {
		t.Error("nothing logged")
	}
	t.Logf("in %v: %v", elapsed, perKind)
}
