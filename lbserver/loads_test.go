package lbserver

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/policy/leastload"
)

// fixedLoad is a loadreport.MetricsProvider with constant metrics.
type fixedLoad struct{}

func (fixedLoad) Metrics() loadreport.Metrics { return loadreport.Metrics{CPU: 0.2, QPS: 5} }

// serveORCA serves ORCA load reports on a loopback port until the test
// ends and counts the streams open on it.
func serveORCA(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	rep, err := loadreport.NewReporter(fixedLoad{}, loadreport.ReporterConfig{Logger: testConfig(nil).Logger})
	if err != nil {
		t.Fatal(err)
	}
	var open atomic.Int64
	addr := serveReporter(t, rep, grpc.StreamInterceptor(func(s any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		open.Add(1)
		defer open.Add(-1)
		return h(s, ss)
	}))
	return addr, &open
}

// serveReporter serves rep on a loopback port of a gRPC server with opts
// until the test ends, and returns the address.
func serveReporter(t *testing.T, rep *loadreport.Reporter, opts ...grpc.ServerOption) string {
	t.Helper()
	srv := grpc.NewServer(opts...)
	rep.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		rep.Close()
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

// TestLoadReportsOnlyWhereUsed: a service opens ORCA streams to its
// endpoints only while its policy is least_load or it sets an overload drop
// bound of its own; a policy change in Consul meta or a reconfiguration
// starts or stops them.
func TestLoadReportsOnlyWhereUsed(t *testing.T) {
	addr, open := serveORCA(t)
	// One endpoint per service, all on the same ORCA server.
	one := func(svc string) discovery.Snapshot { return snap(svc, ep(svc+"-1", addr)) }
	src := newFakeSource(one("rr"), one("ll"), one("shed"))
	cfg := testConfig(src)
	shed := 0.3
	cfg.Services = map[string]ServiceSettings{
		"ll":   {Policy: leastload.Name},
		"shed": {MaxDropShare: shed},
	}
	s, c := startServer(t, cfg)
	for _, svc := range []string{"rr", "ll", "shed"} {
		recvList(t, openOK(t, c, svc))
	}
	collecting := func() map[string]bool {
		out := map[string]bool{}
		for _, st := range s.Status() {
			out[st.Service] = st.LoadReports
		}
		return out
	}
	expect := func(what string, streams int64, want map[string]bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := collecting()
			ok := open.Load() == streams
			for k, v := range want {
				ok = ok && got[k] == v
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d ORCA streams open, collecting %v; want %d, %v", what, open.Load(), got, streams, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	expect("start", 2, map[string]bool{"rr": false, "ll": true, "shed": true})
	// The round_robin service must not open one later either.
	time.Sleep(100 * time.Millisecond)
	expect("still", 2, map[string]bool{"rr": false, "ll": true, "shed": true})

	// Consul meta turns rr into a least_load service, then back.
	meta := one("rr")
	meta.Meta = map[string]string{PolicyMetaKey: leastload.Name}
	src.Push(meta)
	expect("rr least_load by Consul meta", 3, map[string]bool{"rr": true})
	back := one("rr")
	back.Index = 9
	src.Push(back)
	expect("rr back to round_robin", 2, map[string]bool{"rr": false})

	// A reconfiguration without shed's own drop bound stops its streams.
	set := s.Settings()
	set.Services = map[string]ServiceSettings{"ll": {Policy: leastload.Name}}
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	expect("shed without a drop bound", 1, map[string]bool{"rr": false, "ll": true, "shed": false})
}
