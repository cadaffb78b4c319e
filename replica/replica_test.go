package replica

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// started runs a replica of cfg and returns it with its addresses; the
// replica stops when the test ends.
func started(t *testing.T, cfg config.Config, logs io.Writer) (*Replica, Addrs) {
	t.Helper()
	log, level, err := NewLogger(cfg.Log, logs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, addrs, done, err := Start(ctx, cfg, Options{Logger: log, Level: level})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r, addrs
}

// TestStartFails: a replica that cannot listen says so from Start.
func TestStartFails(t *testing.T) {
	cfg := staticConfig()
	cfg.Listen = "256.0.0.1:1"
	if _, _, _, err := Start(context.Background(), cfg, Options{Logger: slog.New(slog.DiscardHandler)}); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Start on a bad address: %v; want a listen error", err)
	}
}

func staticConfig() config.Config {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Static.Services = map[string][]string{"user-srv": {"10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"}}
	cfg.ShutdownTimeout = config.Duration(5 * time.Second)
	return cfg
}

// stream opens a BalanceLoad stream for name and returns it with the
// first server list.
func stream(t *testing.T, ctx context.Context, addr, name string) (lbpb.LoadBalancer_BalanceLoadClient, *lbpb.ServerList, error) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	s, err := lbpb.NewLoadBalancerClient(cc).BalanceLoad(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := s.Send(&lbpb.LoadBalanceRequest{LoadBalanceRequestType: &lbpb.LoadBalanceRequest_InitialRequest{
		InitialRequest: &lbpb.InitialLoadBalanceRequest{Name: name}}}); err != nil {
		if errors.Is(err, io.EOF) { // the server ended the stream: Recv has its status
			_, err = s.Recv()
		}
		return nil, nil, err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return nil, nil, err
		}
		if l := m.GetServerList(); l != nil {
			return s, l, nil
		}
	}
}

func getJSON(t *testing.T, url string, into any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// TestRunServesBalancerAndAdmin: a replica from a config serves lists,
// and its admin listener the status of what it serves and the metrics.
func TestRunServesBalancerAndAdmin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, addrs := started(t, staticConfig(), io.Discard)
	_, list, err := stream(t, ctx, addrs.Balancer.String(), "user-srv:50051")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.Servers); n != 3 {
		t.Fatalf("list of %d servers, want the 3 static ones", n)
	}
	var st struct {
		Ready    bool `json:"ready"`
		Services []struct {
			Service string `json:"service"`
		} `json:"services"`
	}
	getJSON(t, "http://"+addrs.Admin.String()+"/status.json", &st)
	if !st.Ready || len(st.Services) != 1 || st.Services[0].Service != "user-srv" {
		t.Errorf("status.json: %+v; want ready and the service user-srv", st)
	}
	m := getText(t, "http://"+addrs.Admin.String()+"/metrics")
	for _, want := range []string{`lookaside_lb_streams_started_total{service="user-srv"} 1`, "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics has no %q", want)
		}
	}
}

// TestReload: a reload lowers a limit for new streams without ending
// the open one, and a bad configuration is refused whole.
func TestReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	logs := &syncbuf.Buffer{}
	cfg := staticConfig()
	cfg.Log.Format = "json"
	cfg.Log.Level = "debug"
	r, addrs := started(t, cfg, logs)
	first, _, err := stream(t, ctx, addrs.Balancer.String(), "user-srv")
	if err != nil {
		t.Fatal(err)
	}

	bad := cfg
	bad.Limits.MaxStreams = 0
	bad.Balancer.Policy = "fastest"
	if err := r.Reload(bad); err == nil || !strings.Contains(err.Error(), "limits.max_streams") || !strings.Contains(err.Error(), "balancer.policy") {
		t.Fatalf("Reload(bad) = %v; want both errors", err)
	}
	if got := r.Config().Limits.MaxStreams; got != cfg.Limits.MaxStreams {
		t.Fatalf("after a refused reload, max_streams %d; want %d still", got, cfg.Limits.MaxStreams)
	}

	next := cfg
	next.Limits.MaxStreams, next.Limits.MaxStreamsPerIP, next.Limits.MaxStreamsPerConn = 1, 1, 1
	next.Listen = "127.0.0.1:1" // needs a restart: kept, and named in a warning
	if err := r.Reload(next); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "only change on restart") || !strings.Contains(logs.String(), "listen") {
		t.Errorf("no warning naming listen in the logs:\n%s", logs.String())
	}
	_, _, err = stream(t, ctx, addrs.Balancer.String(), "user-srv")
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second stream after max_streams 1: %v; want ResourceExhausted", err)
	}
	// The first stream is still open: it gets no error within a moment.
	recv := make(chan error, 1)
	go func() { _, err := first.Recv(); recv <- err }()
	select {
	case err := <-recv:
		t.Fatalf("open stream ended after the reload: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	<-recv
	// JSON logs: each line an object, each key once.
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("log line is not JSON: %q", line)
		}
		if n := strings.Count(line, `"component":`); n > 1 {
			t.Errorf("component %d times in %s", n, line)
		}
	}
}
