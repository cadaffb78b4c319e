package loadreport

import (
	"context"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestReporterConfig(t *testing.T) {
	src := &fixedMetrics{}
	tests := []struct {
		name          string
		cfg           ReporterConfig
		min, max, def time.Duration
	}{
		{"defaults", ReporterConfig{}, time.Second, time.Minute, time.Second},
		{"set", ReporterConfig{MinInterval: 100 * time.Millisecond, MaxInterval: 10 * time.Second, DefaultInterval: 500 * time.Millisecond},
			100 * time.Millisecond, 10 * time.Second, 500 * time.Millisecond},
		{"floor under 10ms", ReporterConfig{MinInterval: time.Millisecond}, 10 * time.Millisecond, time.Minute, time.Second},
		{"max under min", ReporterConfig{MinInterval: 2 * time.Second, MaxInterval: time.Second}, 2 * time.Second, 2 * time.Second, 2 * time.Second},
		{"default over max", ReporterConfig{MaxInterval: 5 * time.Second, DefaultInterval: time.Minute}, time.Second, 5 * time.Second, 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewReporter(src, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.min != tc.min || r.max != tc.max || r.def != tc.def {
				t.Errorf("min, max, default = %v, %v, %v; want %v, %v, %v", r.min, r.max, r.def, tc.min, tc.max, tc.def)
			}
		})
	}
	if _, err := NewReporter(nil, ReporterConfig{}); err == nil {
		t.Error("NewReporter(nil source) succeeded")
	}
	for _, cfg := range []ReporterConfig{{MinInterval: -1}, {MaxInterval: -1}, {DefaultInterval: -1}} {
		if _, err := NewReporter(src, cfg); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("NewReporter(%+v) error = %v, want one about a negative interval", cfg, err)
		}
	}
}

func TestReporterInterval(t *testing.T) {
	r, err := NewReporter(&fixedMetrics{}, ReporterConfig{
		MinInterval: 100 * time.Millisecond, MaxInterval: 10 * time.Second, DefaultInterval: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want time.Duration }{
		{0, 500 * time.Millisecond},
		{-time.Second, 500 * time.Millisecond},
		{time.Nanosecond, 100 * time.Millisecond},
		{50 * time.Millisecond, 100 * time.Millisecond},
		{100 * time.Millisecond, 100 * time.Millisecond},
		{2 * time.Second, 2 * time.Second},
		{time.Minute, 10 * time.Second},
	} {
		if got := r.Interval(tc.in); got != tc.want {
			t.Errorf("Interval(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// fakeTicker replaces a Reporter's tickers: each stream's ticker reports
// its interval on intervals and ticks when the test sends on tick.
type fakeTicker struct {
	intervals chan time.Duration
	tick      chan time.Time
}

func installFakeTicker(r *Reporter) *fakeTicker {
	f := &fakeTicker{intervals: make(chan time.Duration, 10), tick: make(chan time.Time)}
	r.newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		f.intervals <- d
		return f.tick, func() {}
	}
	return f
}

func dialORCA(t *testing.T, addr netip.AddrPort) orcasvc.OpenRcaServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return orcasvc.NewOpenRcaServiceClient(cc)
}

func request(d time.Duration) *orcasvc.OrcaLoadReportRequest {
	return &orcasvc.OrcaLoadReportRequest{ReportInterval: durationpb.New(d)}
}

// TestReporterStream opens StreamCoreMetrics with the generated client and
// checks the interval granted, the first report at once, the next one per
// tick, the report's fields, and the end of the stream with the client.
func TestReporterStream(t *testing.T) {
	ctx := testContext(t)
	src := &fixedMetrics{}
	src.set(Metrics{CPU: 0.5, AppUtil: 0.75, QPS: 12.5, EPS: 0.5, InFlight: 3, Concurrency: 2.5, Utilization: map[string]float64{"disk": 0.1}})
	r := newTestReporter(t, src, ReporterConfig{MinInterval: 100 * time.Millisecond, DefaultInterval: 700 * time.Millisecond})
	ticker := installFakeTicker(r)
	addr, open := serveReporter(t, r)
	client := dialORCA(t, addr)

	for _, tc := range []struct {
		name string
		req  *orcasvc.OrcaLoadReportRequest
		want time.Duration
	}{
		{"asks 250ms", request(250 * time.Millisecond), 250 * time.Millisecond},
		{"asks under the floor", request(time.Millisecond), 100 * time.Millisecond},
		{"asks nothing", &orcasvc.OrcaLoadReportRequest{}, 700 * time.Millisecond},
		{"asks over the ceiling", request(time.Hour), time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := client.StreamCoreMetrics(sctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			want := &orcapb.OrcaLoadReport{
				CpuUtilization: 0.5, ApplicationUtilization: 0.75, RpsFractional: 12.5, Eps: 0.5,
				Utilization:  map[string]float64{"disk": 0.1},
				NamedMetrics: map[string]float64{InFlightMetric: 3, ConcurrencyMetric: 2.5},
			}
			got, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("first report (-want +got):\n%s", diff)
			}
			select {
			case d := <-ticker.intervals:
				if d != tc.want {
					t.Errorf("interval %v, want %v", d, tc.want)
				}
			case <-ctx.Done():
				t.Fatal("no ticker started")
			}
			src.set(Metrics{QPS: 1})
			ticker.tick <- time.Now()
			got, err = stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			want = &orcapb.OrcaLoadReport{RpsFractional: 1, NamedMetrics: map[string]float64{InFlightMetric: 0, ConcurrencyMetric: 0}}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("report after a tick (-want +got):\n%s", diff)
			}
			src.set(Metrics{CPU: 0.5, AppUtil: 0.75, QPS: 12.5, EPS: 0.5, InFlight: 3, Concurrency: 2.5, Utilization: map[string]float64{"disk": 0.1}})

			cancel()
			eventually(ctx, t, "the stream's handler to return", func() bool { return open.Load() == 0 })
		})
	}
}

// TestReporterRealInterval checks with real time that reports come about
// at the interval asked for, and no faster than the floor. Bounds are
// generous: 1 s at 100 ms gives about 11 reports.
func TestReporterRealInterval(t *testing.T) {
	ctx := testContext(t)
	addr, _ := serveReporter(t, newTestReporter(t, &fixedMetrics{}, ReporterConfig{MinInterval: 100 * time.Millisecond}))
	client := dialORCA(t, addr)

	count := func(ask time.Duration) int {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		stream, err := client.StreamCoreMetrics(sctx, request(ask))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			if _, err := stream.Recv(); err != nil {
				if status.Code(err) != codes.DeadlineExceeded {
					t.Fatalf("stream ended with %v, want DeadlineExceeded", err)
				}
				return n
			}
			n++
		}
	}
	if n := count(100 * time.Millisecond); n < 3 || n > 15 {
		t.Errorf("asking 100ms: %d reports in 1 s, want about 11 (3 to 15)", n)
	}
	if n := count(time.Millisecond); n < 3 || n > 15 {
		t.Errorf("asking 1ms with a 100ms floor: %d reports in 1 s, want about 11 (3 to 15)", n)
	}
	if n := count(400 * time.Millisecond); n < 1 || n > 4 {
		t.Errorf("asking 400ms: %d reports in 1 s, want about 3 (1 to 4)", n)
	}
}

func TestReporterClose(t *testing.T) {
	ctx := testContext(t)
	r := newTestReporter(t, &fixedMetrics{}, ReporterConfig{})
	addr, open := serveReporter(t, r)
	client := dialORCA(t, addr)
	stream, err := client.StreamCoreMetrics(ctx, request(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r.Close() // safe twice
	for {
		_, err := stream.Recv()
		if err == io.EOF {
			t.Fatal("stream ended with OK, want Unavailable")
		}
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Errorf("stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
	eventually(ctx, t, "the stream's handler to return", func() bool { return open.Load() == 0 })
	stream, err = client.StreamCoreMetrics(ctx, request(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream after Close: %v, want Unavailable", err)
	}
}

// TestReporterWithRecorder serves a Recorder through its own interceptors
// and reads its counts back over ORCA.
func TestReporterWithRecorder(t *testing.T) {
	ctx := testContext(t)
	rec, err := NewRecorder(RecorderConfig{Window: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rep := newTestReporter(t, rec, ReporterConfig{MinInterval: 50 * time.Millisecond})
	addr, _ := serve(t, func(s *grpc.Server) { rep.Register(s) },
		grpc.ChainUnaryInterceptor(rec.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(rec.StreamServerInterceptor()))
	rec.SetAppUtilization(0.4)
	client := dialORCA(t, addr)
	stream, err := client.StreamCoreMetrics(ctx, request(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// The ORCA stream itself is not counted in flight nor in QPS.
	for range 3 {
		rep, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if rep.GetNamedMetrics()[InFlightMetric] != 0 || rep.GetRpsFractional() != 0 || rep.GetApplicationUtilization() != 0.4 {
			t.Errorf("report %v, want no calls in flight, no QPS, app utilization 0.4", rep)
		}
	}
	start := rec.CallStarted()
	rec.CallFinished(start, nil)
	for {
		rep, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if rep.GetRpsFractional() > 0 {
			break
		}
	}
}
