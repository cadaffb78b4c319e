package metrics

import (
	"fmt"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/clientstats"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// BenchmarkListSent is the cost a stream pays per list sent.
func BenchmarkListSent(b *testing.B) {
	m := New(Sources{})
	b.ReportAllocs()
	for b.Loop() {
		m.ListSent("user-srv", 12, 0, 3*time.Millisecond)
	}
}

// BenchmarkStreamStartedEnded is the cost of a stream's start and end.
func BenchmarkStreamStartedEnded(b *testing.B) {
	m := New(Sources{})
	b.ReportAllocs()
	for b.Loop() {
		m.StreamStarted("user-srv")
		m.StreamEnded("user-srv", lbserver.OutcomeOK)
	}
}

// BenchmarkScrape is one scrape with 100 services of 10 endpoints each,
// every service with ClientStats, lists and streams.
func BenchmarkScrape(b *testing.B) {
	dir := directory{}
	reg := clientstats.New(clientstats.Config{})
	bal := &statusBalancer{fakeBalancer: fakeBalancer{reg: reg}}
	m := New(Sources{Balancer: bal, Directory: dir})
	for i := range 100 {
		svc := fmt.Sprintf("svc-%03d", i)
		dir[svc] = true
		st := lbserver.ServiceStatus{Service: svc, LoadReports: true}
		for j := range 10 {
			st.Endpoints = append(st.Endpoints, lbserver.EndpointStatus{ID: fmt.Sprintf("%s-%d", svc, j),
				HasReport: true, Utilization: 0.5, ReportAge: time.Second, LoadWeight: 1})
		}
		bal.status = append(bal.status, st)
		report(reg, clientstats.ClientKey{Service: svc, Stream: uint64(i), Peer: "127.0.0.1:1"}, 100, 100, nil)
		m.StreamStarted(svc)
		m.ListSent(svc, 10, 0, time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Registry().Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
