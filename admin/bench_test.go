package admin

import (
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/lbserver"
)

// bigStatus is a replica with services services of endpoints endpoints
// each.
func bigStatus(services, endpoints int) Status {
	st := fakeStatus()
	st.Services = nil
	for i := range services {
		s := lbserver.ServiceStatus{Service: fmt.Sprintf("service-%03d", i), Policy: "least_load", PolicySource: lbserver.PolicyFromConfig,
			ChildPolicy: "round_robin", Streams: 40, Ready: true, SnapshotArrived: st.Now.Add(-time.Minute), LoadReports: true}
		for j := range endpoints {
			id := fmt.Sprintf("service-%03d-10.0.%d.%d-50051", i, i, j)
			addr := fmt.Sprintf("10.0.%d.%d:50051", i, j)
			s.Endpoints = append(s.Endpoints, lbserver.EndpointStatus{ID: id, InstanceID: id, Address: addr, Weight: 1 + j%3,
				Health: "passing", LoadWeight: 1, HasReport: true, Utilization: 0.4, QPS: 120, ReportAge: time.Second,
				LoadStream: "connected", CallsAttributed: 1000, FirstOf: 2})
			for range 1 + j%3 {
				s.RoundRobinList = append(s.RoundRobinList, lbserver.ListEntry{ID: id, Address: addr})
			}
		}
		s.PickFirst = s.RoundRobinList[0]
		st.Services = append(st.Services, s)
	}
	return st
}

// BenchmarkStatus renders the page (what each open page costs every
// refresh) and /status.json, for 5 services × 3 endpoints and for 50
// services × 20 endpoints.
func BenchmarkStatus(b *testing.B) {
	for _, size := range [][2]int{{5, 3}, {50, 20}} {
		st := bigStatus(size[0], size[1])
		for _, path := range []string{"/status", "/status.json"} {
			b.Run(fmt.Sprintf("%s/%dx%d", path[1:], size[0], size[1]), func(b *testing.B) { benchRoute(b, path, st) })
		}
	}
}

func benchRoute(b *testing.B, path string, st Status) {
	h, err := New(Options{Status: func() Status { return st }})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	b.ReportAllocs()
	var size int
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			b.Fatalf("GET %s: %d", path, rec.Code)
		}
		size = rec.Body.Len()
	}
	b.ReportMetric(float64(size)/1024, "KiB/page")
}
