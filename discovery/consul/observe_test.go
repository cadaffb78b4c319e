package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// countingObserver counts ConsulRequest calls by kind and outcome.
type countingObserver struct {
	mu     sync.Mutex
	counts map[[2]string]int // guarded by mu
}

func (o *countingObserver) ConsulRequest(kind, outcome string, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.counts == nil {
		o.counts = map[[2]string]int{}
	}
	o.counts[[2]string{kind, outcome}]++
}

func (o *countingObserver) count(kind, outcome string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.counts[[2]string{kind, outcome}]
}

func TestObserverCountsRequests(t *testing.T) {
	f := newFake()
	f.set("svc", withCheck(entryA, "c-a", api.HealthPassing), entryB)
	cfg := testConfig(f)
	obs := &countingObserver{}
	cfg.Observer = obs
	s := newTestSource(t, f, cfg, 0.5)
	w := watch(t, s, "svc")
	w.expect(t, snapOf("svc", epA, epB))

	if n := obs.count(RequestCatalog, OutcomeOK); n < 1 {
		t.Errorf("%d catalog requests answered, want at least 1", n)
	}
	if n := obs.count(RequestHealthState, OutcomeOK); n < 1 {
		t.Errorf("%d health-state requests answered, want at least 1", n)
	}
	// Every fetch of the service is counted once, as it returns.
	waitUntil(t, "the fetches counted", func() bool {
		return obs.count(RequestService, OutcomeOK) == f.fetchCount("svc")
	})
	h := s.Health()
	if !h.Ready || !h.Reachable || h.LastContact.IsZero() || h.LastError != "" || !h.DownSince.IsZero() {
		t.Errorf("Health() = %+v, want ready, reachable, no error", h)
	}
	if len(h.Services) != 1 || h.Services[0].Name != "svc" || h.Services[0].Endpoints != 2 || h.Services[0].LastGood.IsZero() {
		t.Fatalf("Health().Services = %+v, want svc with 2 endpoints and a last good answer", h.Services)
	}
	if age := s.Staleness()["svc"]; age > time.Second {
		t.Errorf("staleness of svc %v while Consul answers, want under 1s", age)
	}

	// ACLs deny: every kind of request fails as forbidden, the probe too.
	f.setErr(api.StatusError{Code: 403, Body: "ACL not found"})
	before := obs.count(RequestService, ErrorForbidden)
	f.setStatus("n1", "c-a", api.HealthCritical) // wakes the health-state poll into the error
	waitUntil(t, "a forbidden health-state request", func() bool { return obs.count(RequestHealthState, ErrorForbidden) > 0 })
	time.Sleep(300 * time.Millisecond)
	h = s.Health()
	if h.Reachable || h.LastErrorKind != ErrorForbidden || h.DownSince.IsZero() || h.LastErrorAt.IsZero() {
		t.Errorf("Health() during the denial = %+v, want unreachable with a forbidden error", h)
	}
	if age := s.Staleness()["svc"]; age < 250*time.Millisecond {
		t.Errorf("staleness of svc %v after 300ms of errors, want at least 250ms", age)
	}
	if obs.count(RequestService, ErrorForbidden) < before {
		t.Error("forbidden fetches went down")
	}

	f.setErr(nil)
	f.setStatus("n1", "c-a", api.HealthPassing)
	waitUntil(t, "Consul reachable again", func() bool { return s.Health().Reachable })
	waitUntil(t, "svc fresh again", func() bool { return s.Staleness()["svc"] < 200*time.Millisecond })
	if h := s.Health(); h.LastErrorKind != ErrorForbidden || !h.DownSince.IsZero() {
		t.Errorf("Health() after recovery = %+v, want the last error kept and no outage", h)
	}
}

func TestStalenessOfNeverAnswered(t *testing.T) {
	f := newFake()
	f.set("svc", entryA)
	f.setErr(errors.New("connection refused"))
	cfg := testConfig(f)
	s := newTestSource(t, f, cfg, 0.5)
	watch(t, s, "svc")
	time.Sleep(200 * time.Millisecond)
	h := s.Health()
	if h.Ready || h.Reachable || !h.LastContact.IsZero() || h.LastErrorKind != ErrorOther {
		t.Errorf("Health() = %+v, want not ready, never contacted, an error of kind other", h)
	}
	if age := s.Staleness()["svc"]; age < 150*time.Millisecond {
		t.Errorf("staleness of a service never answered %v, want the time watched (about 200ms)", age)
	}
}

func TestOutcome(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithTimeout(context.Background(), -time.Second)
	defer cancel2()
	live := context.Background()
	refused := &url.Error{Op: "Get", URL: "http://127.0.0.1:8500/v1/catalog/services", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}}
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want string
	}{
		{live, nil, OutcomeOK},
		{canceled, context.Canceled, OutcomeCanceled},
		{expired, context.DeadlineExceeded, ErrorTimeout},
		{live, refused, ErrorUnreachable},
		{live, fmt.Errorf("consul: catalog services: %w", refused), ErrorUnreachable},
		{live, &net.DNSError{Err: "no such host", Name: "consul"}, ErrorUnreachable},
		{live, api.StatusError{Code: 403, Body: "Permission denied"}, ErrorForbidden},
		{live, errors.New("Unexpected response code: 403 (ACL not found)"), ErrorForbidden},
		{live, api.StatusError{Code: 500, Body: "No path to datacenter"}, ErrorNoDatacenter},
		{live, api.StatusError{Code: 500, Body: "rpc error"}, ErrorStatus5xx},
		{live, api.StatusError{Code: 429, Body: "rate limited"}, ErrorStatus4xx},
		{live, errNoLeader, ErrorNoLeader},
		{live, errors.New("invalid character"), ErrorOther},
	} {
		if got := Outcome(tc.ctx, tc.err); got != tc.want {
			t.Errorf("Outcome(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestOutcomeOfRealErrors classifies what the Consul API client returns
// for a port nobody listens on, a server that never answers, and one that
// answers 403 and 500.
func TestOutcomeOfRealErrors(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()

	status := func(code int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "ACL not found", code)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	tlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake errors are the point
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	for _, tc := range []struct {
		name, addr string
		timeout    time.Duration
		want       string
	}{
		{"unknown authority", "https://" + tlsSrv.Listener.Addr().String(), 5 * time.Second, ErrorTLS},
		{"plain HTTP to TLS", tlsSrv.Listener.Addr().String(), 5 * time.Second, ErrorTLS},
		{"refused", closedAddr, 5 * time.Second, ErrorUnreachable},
		{"silent", silent.Addr().String(), 200 * time.Millisecond, ErrorTimeout},
		{"403", status(403), 5 * time.Second, ErrorForbidden},
		{"500", status(500), 5 * time.Second, ErrorStatus5xx},
		{"404", status(404), 5 * time.Second, ErrorStatus4xx},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{Address: tc.addr})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			q := (&api.QueryOptions{}).WithContext(ctx)
			_, _, err = API(c).Services(q)
			if got := Outcome(ctx, err); got != tc.want {
				t.Errorf("Outcome(%v) = %q, want %q", err, got, tc.want)
			}
		})
	}
}
