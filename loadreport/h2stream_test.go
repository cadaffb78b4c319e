package loadreport

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	orcapb "github.com/cncf/xds/go/xds/data/orca/v3"
	orcasvc "github.com/cncf/xds/go/xds/service/orca/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/lookaside-lb/lookaside/internal/clock"
)

// TestCollectorSilentStream: a stream that carries no report for the
// silence bound is ended and dialed again; one that reports stays.
func TestCollectorSilentStream(t *testing.T) {
	ctx := testContext(t)
	orca := newScriptedORCA()
	addr, _ := serve(t, func(s *grpc.Server) { orcasvc.RegisterOpenRcaServiceServer(s, orca) })
	c := newTestCollector(t, Config{BackoffBase: 10 * time.Millisecond}, clock.Real{})
	c.silence = 200 * time.Millisecond
	c.Update(snapshot("a", addr))
	eventually(ctx, t, "the silent stream dialed again", func() bool { return orca.calls.Load() >= 3 })
	if st := c.Loads().Streams["a"]; status.Code(st.LastError) != codes.Unavailable || status.Convert(st.LastError).Message() != errSilent.Error() {
		t.Errorf("stream state %+v, want Unavailable for silence", st)
	}
	// A reporting stream is not cut: reports every 50 ms for 600 ms on
	// one call.
	before := orca.calls.Load()
	for range 12 {
		orca.send(ctx, t, &orcapb.OrcaLoadReport{CpuUtilization: 0.5})
		time.Sleep(50 * time.Millisecond)
	}
	if got := orca.calls.Load(); got > before+1 {
		t.Errorf("%d calls while reporting, want at most %d", got, before+1)
	}
}

// framed returns b as one uncompressed gRPC message.
func framed(b []byte) []byte {
	out := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(out[1:], uint32(len(b)))
	return append(out, b...)
}

func TestNextReport(t *testing.T) {
	rep, _ := proto.Marshal(&orcapb.OrcaLoadReport{CpuUtilization: 0.25, RpsFractional: 7})
	whole := framed(rep)
	huge := []byte{0, 0xff, 0xff, 0xff, 0xff}
	tests := []struct {
		name     string
		in       []byte
		wantCPU  float64 // -1: no report
		wantUsed int
		wantCode codes.Code
	}{
		{"empty", nil, -1, 0, codes.OK},
		{"prefix only", whole[:4], -1, 0, codes.OK},
		{"partial", whole[:len(whole)-1], -1, 0, codes.OK},
		{"whole", whole, 0.25, len(whole), codes.OK},
		{"whole and more", append(append([]byte{}, whole...), whole[:3]...), 0.25, len(whole), codes.OK},
		{"empty message", framed(nil), 0, 5, codes.OK},
		{"too large", huge, -1, 0, codes.ResourceExhausted},
		{"compressed", append([]byte{1}, whole[1:]...), -1, 0, codes.Internal},
		{"not a report", framed([]byte{0xff, 0xff}), -1, 0, codes.Internal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, used, err := nextReport(tc.in)
			if status.Code(err) != tc.wantCode {
				t.Fatalf("error %v, want code %v", err, tc.wantCode)
			}
			if (r != nil) != (tc.wantCPU >= 0) || used != tc.wantUsed {
				t.Fatalf("report %v, used %d; want CPU %v, used %d", r, used, tc.wantCPU, tc.wantUsed)
			}
			if r != nil && r.CpuUtilization != tc.wantCPU {
				t.Errorf("CPU %v, want %v", r.CpuUtilization, tc.wantCPU)
			}
		})
	}
}

// FuzzNextReport: any bytes from an endpoint decode to a report that used
// a whole message within them, to nothing yet, or to an error; never a
// panic.
func FuzzNextReport(f *testing.F) {
	rep, _ := proto.Marshal(&orcapb.OrcaLoadReport{CpuUtilization: 0.25, NamedMetrics: map[string]float64{"inflight": 3}})
	f.Add(framed(rep))
	rep, _ = proto.Marshal(&orcapb.OrcaLoadReport{RpsFractional: 100, NamedMetrics: map[string]float64{"inflight": 3, "concurrency": 2.5}})
	f.Add(framed(rep))
	rep, _ = proto.Marshal(&orcapb.OrcaLoadReport{NamedMetrics: map[string]float64{"concurrency": math.Inf(1)}})
	f.Add(framed(rep))
	f.Add(framed(nil))
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{1, 0, 0, 0, 1, 0})
	f.Add(framed(rep)[:7])
	f.Fuzz(func(t *testing.T, b []byte) {
		r, used, err := nextReport(b)
		switch {
		case err != nil:
			if r != nil || used != 0 {
				t.Fatalf("error %v with report %v, used %d", err, r, used)
			}
		case r == nil:
			if used != 0 {
				t.Fatalf("no report but used %d", used)
			}
		default:
			if used < 5 || used > len(b) || int(binary.BigEndian.Uint32(b[1:5]))+5 != used {
				t.Fatalf("used %d of %d bytes", used, len(b))
			}
			// What the balancer reads from it is a finite, non-negative
			// measurement, the named metric's value.
			got := fromProto(r, time.Time{})
			for name, v := range map[string]float64{"QPS": got.QPS, "InFlight": got.InFlight, "Concurrency": got.Concurrency} {
				if !(v >= 0) || math.IsInf(v, 0) {
					t.Fatalf("%s = %v", name, v)
				}
			}
			if got.Concurrency != got.Named[ConcurrencyMetric] {
				t.Fatalf("Concurrency %v, named %v", got.Concurrency, got.Named[ConcurrencyMetric])
			}
		}
	})
}
