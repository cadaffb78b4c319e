package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
)

// consulHTTP is a loopback HTTP server answering /v1/health/service/<name>
// like Consul: the listed instances, X-Consul-Index 42, and blocking until
// the request ends when asked to wait on index 42.
type consulHTTP struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request              // guarded by mu
	services map[string][]json.RawMessage // read-only once serving
}

func newConsulHTTP(t *testing.T, services map[string][]string) *consulHTTP {
	t.Helper()
	c := &consulHTTP{services: map[string][]json.RawMessage{}}
	for svc, hostports := range services {
		for i, hp := range hostports {
			host, port, _ := net.SplitHostPort(hp)
			p, _ := strconv.Atoi(port)
			e := fmt.Sprintf(`{"Node":{"Node":"n%d","Address":"127.0.0.1"},"Service":{"ID":"%s-%d","Service":%q,"Address":%q,"Port":%d},"Checks":[{"Status":"passing"}]}`, i, svc, i, svc, host, p)
			c.services[svc] = append(c.services[svc], json.RawMessage(e))
		}
	}
	c.Server = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.Close)
	return c
}

func (c *consulHTTP) serve(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.requests = append(c.requests, r.Clone(context.Background()))
	c.mu.Unlock()
	svc, ok := strings.CutPrefix(r.URL.Path, "/v1/health/service/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.URL.Query().Get("index") == "42" {
		<-r.Context().Done() // block until the client gives up
		return
	}
	entries := c.services[svc]
	if entries == nil {
		entries = []json.RawMessage{}
	}
	w.Header().Set("X-Consul-Index", "42")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(entries)
}

func (c *consulHTTP) requestsFor(svc string) []*http.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*http.Request
	for _, r := range c.requests {
		if r.URL.Path == "/v1/health/service/"+svc {
			out = append(out, r)
		}
	}
	return out
}

// TestHTTPRequests: the real Consul client sends the target's address,
// basic authentication, token and query parameters; Close cancels the
// blocking queries and leaves no connection behind (goleak in TestMain).
func TestHTTPRequests(t *testing.T) {
	consul := newConsulHTTP(t, map[string][]string{
		"user-srv":  {"10.0.0.2:50051", "10.0.0.1:50051"},
		"lookaside": {"10.0.2.1:7000"},
	})
	host := strings.TrimPrefix(consul.URL, "http://")
	target := "consul://alice:pw@" + host + "/user-srv?wait=14s&tag=srv&tag=v2&token=t0ken&dc=dc1&allow-stale=true&near=n1"
	u, _ := url.Parse(target)
	cc := newFakeCC()
	b := NewBuilder(Options{Logger: testLogger()})
	r, err := b.Build(resolver.Target{URL: *u}, cc, resolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st := cc.next(t)
	if diff := cmp.Diff(addrs("10.0.0.1:50051", "10.0.0.2:50051"), addrsOf(st.Addresses)); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(addrs("10.0.2.1:7000"), balancersOf(t, st)); diff != "" {
		t.Errorf("balancers (-want +got):\n%s", diff)
	}
	waitFor(t, "blocking queries", func() bool {
		return len(consul.requestsFor("user-srv")) == 2 && len(consul.requestsFor("lookaside")) == 2
	})

	reqs := consul.requestsFor("user-srv")
	first, second := reqs[0], reqs[1]
	if user, pw, ok := first.BasicAuth(); !ok || user != "alice" || pw != "pw" {
		t.Errorf("basic auth %q %q %v, want alice pw", user, pw, ok)
	}
	if tok := first.Header.Get("X-Consul-Token"); tok != "t0ken" {
		t.Errorf("token %q, want t0ken", tok)
	}
	q := first.URL.Query()
	for k, want := range map[string][]string{"tag": {"srv", "v2"}, "passing": {"1"}, "dc": {"dc1"}, "near": {"n1"}, "wait": {"14000ms"}, "stale": {""}} {
		if diff := cmp.Diff(want, q[k]); diff != "" {
			t.Errorf("parameter %s (-want +got):\n%s", k, diff)
		}
	}
	if q.Has("index") {
		t.Errorf("first query has index %q, want none", q.Get("index"))
	}
	if got := second.URL.Query().Get("index"); got != "42" {
		t.Errorf("second query waits on %q, want 42", got)
	}
	lq := consul.requestsFor("lookaside")[0].URL.Query()
	if lq.Has("tag") || lq.Get("passing") != "1" || lq.Has("near") || lq.Get("dc") != "dc1" {
		t.Errorf("balancer query %v: want passing, dc1, no tags, no near", lq)
	}

	start := time.Now()
	r.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
}

// TestRealChannel: a grpc-go channel accepts the resolver's states and
// service config. With no Lookaside replica, grpclb uses the instances at
// once (fallback); with lb=off the program's round_robin does.
func TestRealChannel(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()

	consul := newConsulHTTP(t, map[string][]string{"user-srv": {lis.Addr().String()}})
	host := strings.TrimPrefix(consul.URL, "http://")
	for _, params := range []string{"", "?lb=off"} {
		t.Run(params, func(t *testing.T) {
			cc, err := grpc.NewClient("consul-test://"+host+"/user-srv"+params,
				grpc.WithResolvers(NewBuilder(Options{Scheme: "consul-test", Logger: testLogger()})),
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatalf("Check: %v", err)
			}
		})
	}
}

// TestBuildErrors: a bad target fails Build with the parse error, and the
// channel's RPCs carry it.
func TestBuildErrors(t *testing.T) {
	cc, err := grpc.NewClient("consul-bad://127.0.0.1:8500/user-srv?wait=forever",
		grpc.WithResolvers(NewBuilder(Options{Scheme: "consul-bad", Logger: testLogger()})),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil || !strings.Contains(err.Error(), "wait") || !strings.Contains(err.Error(), "duration") {
		t.Errorf("Check error %v: want the target's problem", err)
	}
}
