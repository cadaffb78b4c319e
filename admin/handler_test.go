package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lookaside-lb/lookaside/lbserver"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	"google.golang.org/grpc/credentials/insecure"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// evilName is a service name as Consul could hold it, with markup in it.
const evilName = `evil<script>alert("x")</script>&srv`

// fakeStatus returns a Status with two services, one of them named
// evilName.
func fakeStatus() Status {
	now := time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)
	return Status{
		Build:    BuildInfo{Version: "v1.2.3", Revision: "0123456789abcdef0123", GoVersion: "go1.26.0"},
		Started:  now.Add(-90 * time.Minute),
		Now:      now,
		Listen:   "127.0.0.1:7000",
		Ready:    true,
		Consul:   &ConsulStatus{Address: "127.0.0.1:8500", Reachable: true, LastContact: now.Add(-1500 * time.Millisecond)},
		Replicas: []Replica{{Address: "127.0.0.1:7000", ID: "lb-1", Health: "passing", Self: true}, {Address: "127.0.0.2:7000", ID: "lb-2", Health: "critical"}},
		Totals:   Totals{Streams: 3, StreamsStarted: 10, Connections: 3, Services: 2, ListsSent: 12, XDSNACKs: 4},
		Services: []lbserver.ServiceStatus{
			{
				Service: "user-srv", Policy: "weighted_round_robin", PolicySource: lbserver.PolicyFromConfig, ChildPolicy: "round_robin",
				Streams: 2, XDSStreams: 5, Ready: true, SnapshotArrived: now.Add(-10 * time.Second), LoadReports: true,
				LatencyOutliers: true, Outliers: 1, MedianLatency: 5234 * time.Microsecond, OutlierEjections: 2,
				Endpoints: []lbserver.EndpointStatus{
					{ID: "user-srv-1", InstanceID: "user-srv-1", Address: "10.0.0.1:50051", Weight: 1, Health: "passing",
						CallsAttributed: 100.4, FirstOf: 1, LoadStream: "unimplemented"},
					{ID: "node-b/user-srv-2", InstanceID: "user-srv-2", Node: "node-b", Address: "10.0.0.2:50051", Weight: 3, Health: "passing",
						CallsAttributed: 299.6, FirstOf: 1, HasReport: true, Utilization: 0.42, QPS: 31.5, ReportAge: 800 * time.Millisecond,
						LoadWeight: 1.25, LoadStream: "connected", Latency: 20140 * time.Microsecond, Outlier: true},
				},
				RoundRobinList: []lbserver.ListEntry{
					{ID: "node-b/user-srv-2", Address: "10.0.0.2:50051"}, {ID: "user-srv-1", Address: "10.0.0.1:50051"},
					{ID: "node-b/user-srv-2", Address: "10.0.0.2:50051"}, {ID: "node-b/user-srv-2", Address: "10.0.0.2:50051"},
				},
				PickFirst: lbserver.ListEntry{ID: "node-b/user-srv-2", Address: "10.0.0.2:50051"},
			},
			{
				Service: evilName, Policy: "round_robin", PolicySource: lbserver.PolicyFromDefault, Ready: true,
				RateLimitDropShare: 0.25, DropShare: 0.25, DropToken: "drop-ratelimit", RateLimit: 100, OfferedRate: 133.3,
				Endpoints: []lbserver.EndpointStatus{{ID: `id"><img src=x onerror=alert(1)>`, InstanceID: `id"><img src=x onerror=alert(1)>`,
					Address: "10.0.0.9:1", Health: "critical"}},
				RoundRobinList: []lbserver.ListEntry{{Drop: true, DropToken: "drop-ratelimit"}, {ID: `id"><img src=x onerror=alert(1)>`, Address: "10.0.0.9:1"}},
				PickFirst:      lbserver.ListEntry{ID: `id"><img src=x onerror=alert(1)>`, Address: "10.0.0.9:1"},
			},
			{Service: "new-srv", Policy: "round_robin", PolicySource: lbserver.PolicyFromDefault, Fallback: true,
				FallbackReason: lbserver.FallbackFirstListTimeout},
		},
	}
}

// get serves one request to h and returns the response and its body.
func get(t *testing.T, h http.Handler, method, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func newHandler(t *testing.T, o Options) *Handler {
	t.Helper()
	if o.Status == nil {
		o.Status = fakeStatus
	}
	h, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func TestRoutes(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "lookaside_streams_open 3\n")
	})
	for _, tc := range []struct {
		name     string
		opts     Options
		method   string
		path     string
		code     int
		ctype    string
		body     string // a substring of the body
		location string
	}{
		{name: "root redirects", method: "GET", path: "/", code: http.StatusFound, location: "/status"},
		{name: "status page", method: "GET", path: "/status", code: 200, ctype: "text/html; charset=utf-8", body: "user-srv"},
		{name: "status head", method: "HEAD", path: "/status", code: 200, ctype: "text/html; charset=utf-8"},
		{name: "status json", method: "GET", path: "/status.json", code: 200, ctype: "application/json", body: `"user-srv"`},
		{name: "status post refused", method: "POST", path: "/status", code: http.StatusMethodNotAllowed},
		{name: "unknown path", method: "GET", path: "/nope", code: http.StatusNotFound},
		{name: "metrics absent", method: "GET", path: "/metrics", code: http.StatusNotFound},
		{name: "metrics", opts: Options{Metrics: metrics}, method: "GET", path: "/metrics", code: 200, body: "lookaside_streams_open 3"},
		{name: "pprof off", method: "GET", path: "/debug/pprof/", code: http.StatusNotFound},
		{name: "pprof cmdline off", method: "GET", path: "/debug/pprof/cmdline", code: http.StatusNotFound},
		{name: "pprof index", opts: Options{Pprof: true}, method: "GET", path: "/debug/pprof/", code: 200, body: "goroutine"},
		{name: "pprof goroutine", opts: Options{Pprof: true}, method: "GET", path: "/debug/pprof/goroutine?debug=1", code: 200, body: "goroutine profile"},
		{name: "pprof cmdline", opts: Options{Pprof: true}, method: "GET", path: "/debug/pprof/cmdline", code: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := get(t, newHandler(t, tc.opts), tc.method, tc.path)
			if res.StatusCode != tc.code {
				t.Fatalf("%s %s: status %d, want %d\n%s", tc.method, tc.path, res.StatusCode, tc.code, body)
			}
			if tc.ctype != "" && res.Header.Get("Content-Type") != tc.ctype {
				t.Errorf("Content-Type %q, want %q", res.Header.Get("Content-Type"), tc.ctype)
			}
			if !strings.Contains(body, tc.body) {
				t.Errorf("body does not contain %q:\n%.2000s", tc.body, body)
			}
			if got := res.Header.Get("Location"); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no status", Options{}, "Options.Status is required"},
		{"refresh too short", Options{Status: fakeStatus, Refresh: 100 * time.Millisecond}, "at least 500ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestStatusJSONRoundTrip(t *testing.T) {
	_, body := get(t, newHandler(t, Options{}), "GET", "/status.json")
	var got Status
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("decoding /status.json: %v\n%s", err, body)
	}
	if diff := cmp.Diff(fakeStatus(), got); diff != "" {
		t.Errorf("/status.json round trip (-want +got):\n%s", diff)
	}
}

// TestStatusNowFilled checks that a Status without Now is stamped.
func TestStatusNowFilled(t *testing.T) {
	h := newHandler(t, Options{Status: func() Status { return Status{} }})
	before := time.Now()
	_, body := get(t, h, "GET", "/status.json")
	var got Status
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Now.Before(before.Add(-time.Second)) || got.Now.After(time.Now().Add(time.Second)) {
		t.Errorf("now = %v, want about %v", got.Now, before)
	}
}

func TestStatusPageEscapes(t *testing.T) {
	_, body := get(t, newHandler(t, Options{}), "GET", "/status")
	for _, bad := range []string{`<script>alert`, `<img src=x`, `"><img`} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains unescaped %q", bad)
		}
	}
	for _, want := range []string{
		`evil&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;srv`,
		`id&#34;&gt;&lt;img src=x onerror=alert(1)&gt;`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page does not contain the escaped %q", want)
		}
	}
}

// TestStatusPageShows checks what the page says about the fake status.
func TestStatusPageShows(t *testing.T) {
	_, body := get(t, newHandler(t, Options{}), "GET", "/status")
	text := visibleText(body)
	for _, want := range []string{
		"Lookaside 127.0.0.1:7000", "ready", "version v1.2.3 · 0123456789ab · go1.26.0", "up 1h30m",
		"reachable", "last answer 1.5s ago",
		"Replicas (2)", "127.0.0.1:7000 this one passing", "127.0.0.2:7000 critical",
		"clients (streams) 3 of 10 started",
		"user-srv weighted_round_robin · config child round_robin",
		"refused by limits 0 xDS NACKs 4",
		"clients 2 xDS clients 5 endpoints 2 calls reported 400 endpoints from discovery 10s ago load reports on latency outliers 1 · median 5.23ms",
		// the rows: address, ID, node, health, weight, load weight,
		// utilization, qps, report age, latency, pick_first clients,
		// calls, share
		"10.0.0.1:50051 user-srv-1 passing 1 – – – unimplemented – 1 100 25.0% (25.0%)",
		"10.0.0.2:50051 user-srv-2 node-b passing 3 1.25 42.0% 31.5 800ms 20.1ms outlier 1 300 75.0% (75.0%)",
		"a new round_robin client gets 10.0.0.2:50051, 10.0.0.1:50051, 10.0.0.2:50051, 10.0.0.2:50051 (4 entries)",
		"a new pick_first client gets 10.0.0.2:50051",
		"drops 25.0% (rate limit)", "offered 133/s", "rate limit 100/s",
		"10.0.0.9:1", "– (100.0%)",
		"a new round_robin client gets drop (drop-ratelimit), 10.0.0.9:1 (2 entries)",
		"new-srv round_robin · default fallback: first_list_timeout clients 0 endpoints 0 calls reported 0 endpoints from discovery not yet load reports off No endpoints.",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("page does not say %q; it says:\n%s", want, text)
		}
	}
	// Services are sorted by name.
	if i, j := strings.Index(text, "evil<script>"), strings.Index(text, "user-srv weighted"); i < 0 || j < 0 || i > j {
		t.Errorf("services not sorted by name (evil at %d, user-srv at %d)", i, j)
	}
}

// visibleText reduces HTML to its text, roughly: tags and the style and
// script elements removed, entities decoded, white space collapsed.
func visibleText(html string) string {
	html = regexp.MustCompile(`(?s)<(style|script|title)[^>]*>.*?</(style|script|title)>`).ReplaceAllString(html, " ")
	html = regexp.MustCompile(`(?s)<[^>]*>`).ReplaceAllString(html, " ")
	html = strings.NewReplacer("&lt;", "<", "&gt;", ">", "&#34;", `"`, "&#39;", "'", "&amp;", "&").Replace(html)
	return strings.Join(strings.Fields(html), " ")
}

func TestStatusPageSecurityHeaders(t *testing.T) {
	res, body := get(t, newHandler(t, Options{}), "GET", "/status")
	csp := res.Header.Get("Content-Security-Policy")
	m := regexp.MustCompile(`script-src 'nonce-([A-Za-z0-9_-]+)'`).FindStringSubmatch(csp)
	if m == nil {
		t.Fatalf("Content-Security-Policy %q has no script nonce", csp)
	}
	if !strings.Contains(body, `<script nonce="`+m[1]+`">`) || !strings.Contains(body, `<style nonce="`+m[1]+`">`) {
		t.Errorf("the page's script and style do not carry the nonce %q", m[1])
	}
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	for k, v := range map[string]string{"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if res.Header.Get(k) != v {
			t.Errorf("%s: %q, want %q", k, res.Header.Get(k), v)
		}
	}
}

func TestStatusPageRefresh(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refresh time.Duration
		want    []string
		notWant []string
	}{
		{"default", 0, []string{`var every =  2000 ,`, `<noscript><meta http-equiv="refresh" content="2"></noscript>`}, nil},
		{"1.5s", 1500 * time.Millisecond, []string{`var every =  1500 ,`, `content="2"`}, nil},
		{"off", -1, nil, []string{"<script", `http-equiv="refresh"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, body := get(t, newHandler(t, Options{Refresh: tc.refresh}), "GET", "/status")
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(body, w) {
					t.Errorf("page has %q", w)
				}
			}
		})
	}
}

func TestNoServices(t *testing.T) {
	h := newHandler(t, Options{Status: func() Status { return Status{Ready: false} }})
	_, body := get(t, h, "GET", "/status")
	text := visibleText(body)
	for _, want := range []string{"not ready", "No service is watched yet", "Not used: static endpoints.", "None registered in Consul."} {
		if !strings.Contains(text, want) {
			t.Errorf("page does not say %q:\n%s", want, text)
		}
	}
}

// serve runs h on a loopback listener with Serve and returns its address
// and a stop function that fails the test unless Serve returns within
// ShutdownTimeout and a second.
func serve(t *testing.T, h http.Handler) (addr string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(ShutdownTimeout + time.Second):
				t.Errorf("Serve still running %v after its context ended", ShutdownTimeout+time.Second)
			}
		})
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

func TestChannelzOverH2C(t *testing.T) {
	addr, _ := serve(t, newHandler(t, Options{Channelz: true}))
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	servers, err := channelzpb.NewChannelzClient(cc).GetServers(ctx, &channelzpb.GetServersRequest{})
	if err != nil {
		t.Fatalf("channelz GetServers over the admin port: %v", err)
	}
	if len(servers.GetServer()) == 0 {
		t.Errorf("channelz lists no server")
	}
	chans, err := channelzpb.NewChannelzClient(cc).GetTopChannels(ctx, &channelzpb.GetTopChannelsRequest{})
	if err != nil {
		t.Fatalf("channelz GetTopChannels: %v", err)
	}
	found := false
	for _, c := range chans.GetChannel() {
		found = found || c.GetData().GetTarget() == addr
	}
	if !found {
		t.Errorf("channelz does not list this test's channel to %s: %v", addr, chans)
	}

	// Server reflection names channelz, for grpcurl.
	rs, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rs.Recv()
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	rs.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "grpc.channelz.v1.Channelz") {
		t.Errorf("reflection lists %v, want grpc.channelz.v1.Channelz among them", names)
	}

	// The same port still serves the page over HTTP/1.1.
	res, err := http.Get("http://" + addr + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Proto != "HTTP/1.1" {
		t.Errorf("GET /status.json on the channelz port: %s %s", res.Proto, res.Status)
	}
}

func TestChannelzOff(t *testing.T) {
	addr, _ := serve(t, newHandler(t, Options{}))
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := channelzpb.NewChannelzClient(cc).GetServers(ctx, &channelzpb.GetServersRequest{}); err == nil {
		t.Errorf("channelz answered with Options.Channelz off")
	}
}

// TestServeStops checks that Serve returns within its bound after its
// context ends, with a connection open and a request that would go on.
func TestServeStops(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	addr, stop := serve(t, h)
	res, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	start := time.Now()
	stop()
	if took := time.Since(start); took > ShutdownTimeout+time.Second {
		t.Errorf("Serve took %v to stop", took)
	}
}

// TestTotalsOfXDSNACKs: the totals count the NACKs of every type.
func TestTotalsOfXDSNACKs(t *testing.T) {
	got := TotalsOf(lbserver.Stats{XDSNACKs: map[string]int64{"listener": 0, "route": 1, "cluster": 2, "endpoint": 3}})
	if got.XDSNACKs != 6 {
		t.Errorf("XDSNACKs = %d, want 6", got.XDSNACKs)
	}
}
