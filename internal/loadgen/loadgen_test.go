package loadgen

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestClosedLoopCountsAndBounds(t *testing.T) {
	var n atomic.Int64
	call := func(ctx context.Context) (string, error) {
		i := n.Add(1)
		switch {
		case i%10 == 0:
			return "", status.Error(codes.Unavailable, "down")
		case i%2 == 0:
			return "a", nil
		}
		return "b", nil
	}
	res := ClosedLoop(t.Context(), 4, time.Minute, 25, call)
	if got := n.Load(); got != 100 {
		t.Fatalf("%d calls, want 4 workers × 25", got)
	}
	if got := res.Failures[codes.Unavailable]; got != 10 {
		t.Errorf("%d Unavailable failures, want 10", got)
	}
	if res.Total() != 90 || len(res.Latencies) != 90 {
		t.Errorf("Total %d, %d latencies; want 90 successful calls", res.Total(), len(res.Latencies))
	}
	if res.Calls["a"] != 40 || res.Calls["b"] != 50 {
		t.Errorf("calls %v, want a:40 b:50", res.Calls)
	}
	if got := res.Share("b"); got != 50.0/90 {
		t.Errorf("Share(b) = %v, want 50/90", got)
	}
}

func TestClosedLoopStopsAtDeadlineAndContext(t *testing.T) {
	slow := func(ctx context.Context) (string, error) {
		select {
		case <-time.After(10 * time.Millisecond):
			return "x", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	start := time.Now()
	res := ClosedLoop(t.Context(), 2, 100*time.Millisecond, 0, slow)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a 100 ms load took %v", took)
	}
	if res.Total() == 0 || res.Total() > 2*11 {
		t.Errorf("%d calls in 100 ms by 2 workers of 10 ms calls, want 1 to 22", res.Total())
	}
	if res.Elapsed < 100*time.Millisecond || res.Rate() <= 0 {
		t.Errorf("Elapsed %v, Rate %v", res.Elapsed, res.Rate())
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	res = ClosedLoop(ctx, 2, time.Minute, 0, slow)
	if res.Total() != 0 || len(res.Failures) != 0 {
		t.Errorf("with an ended context: %d calls, failures %v; want none made", res.Total(), res.Failures)
	}
}

func TestPercentileMeanCDF(t *testing.T) {
	var r Result
	for i := 100; i >= 1; i-- { // 1..100 ms, out of order
		r.Latencies = append(r.Latencies, time.Duration(i)*time.Millisecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{0, time.Millisecond}, {0.5, 51 * time.Millisecond}, {0.99, 100 * time.Millisecond}, {1, 100 * time.Millisecond}} {
		if got := r.Percentile(tt.p); got != tt.want {
			t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := r.Mean(); got != 50500*time.Microsecond {
		t.Errorf("Mean = %v, want 50.5ms", got)
	}
	lat, share := r.CDF(10)
	if len(lat) != 10 || lat[0] != 10*time.Millisecond || share[0] != 0.1 || lat[9] != 100*time.Millisecond || share[9] != 1 {
		t.Errorf("CDF(10) = %v, %v", lat, share)
	}
	lat, share = r.CDF(30) // 100/30: step 3, the last point added
	if lat[len(lat)-1] != 100*time.Millisecond || share[len(share)-1] != 1 {
		t.Errorf("CDF(30) ends at %v, %v; want the slowest call at 1", lat[len(lat)-1], share[len(share)-1])
	}
	if (Result{}).Percentile(0.5) != 0 || (Result{}).Rate() != 0 || (Result{}).Share("x") != 0 {
		t.Error("an empty result must report zeros")
	}
	if l, s := (Result{}).CDF(10); l != nil || s != nil {
		t.Error("an empty result has no CDF")
	}
}

func TestAdd(t *testing.T) {
	r := Result{Calls: map[string]int{"a": 1}, Failures: map[codes.Code]int{}, Latencies: []time.Duration{time.Millisecond}, Elapsed: time.Second}
	r.Add(Result{Calls: map[string]int{"a": 2, "b": 3}, Failures: map[codes.Code]int{codes.Unavailable: 1},
		Latencies: []time.Duration{2 * time.Millisecond, 3 * time.Millisecond}, Elapsed: time.Second})
	if r.Calls["a"] != 3 || r.Calls["b"] != 3 || r.Failures[codes.Unavailable] != 1 || len(r.Latencies) != 3 || r.Elapsed != 2*time.Second {
		t.Errorf("after Add: %+v", r)
	}
	if got := r.Rate(); got != 3 {
		t.Errorf("Rate = %v, want 6 calls / 2 s", got)
	}
}
