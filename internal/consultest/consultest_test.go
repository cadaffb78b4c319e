package consultest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestAgentRegisterAndReadBack(t *testing.T) {
	skipInShort(t)
	a := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	if host, _, err := net.SplitHostPort(a.HTTPAddr()); err != nil || host != "127.0.0.1" {
		t.Errorf("HTTPAddr() = %q, want 127.0.0.1:port", a.HTTPAddr())
	}
	if host, _, err := net.SplitHostPort(a.DNSAddr()); err != nil || host != "127.0.0.1" {
		t.Errorf("DNSAddr() = %q, want 127.0.0.1:port", a.DNSAddr())
	}

	c := a.Client()
	reg := &api.AgentServiceRegistration{
		ID:      "user-srv-1",
		Name:    "user-srv",
		Address: "127.0.0.1",
		Port:    4242,
		Tags:    []string{"v1"},
		Meta:    map[string]string{"zone": "a"},
		Weights: &api.AgentWeights{Passing: 3, Warning: 1},
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("ServiceRegister: %v", err)
	}

	// Agent registrations reach the catalog through anti-entropy, which
	// a dev agent runs at once; still, allow a moment.
	var entries []*api.ServiceEntry
	for {
		var err error
		entries, _, err = c.Health().Service("user-srv", "", false, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatalf("Health().Service: %v", err)
		}
		if len(entries) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("service never appeared in the health endpoint: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	type got struct {
		ID, Node, Address string
		Port, Weight      int
		Tags              []string
		Meta              map[string]string
	}
	want := []got{{
		ID: "user-srv-1", Node: a.NodeName(), Address: "127.0.0.1",
		Port: 4242, Weight: 3, Tags: []string{"v1"}, Meta: map[string]string{"zone": "a"},
	}}
	var have []got
	for _, e := range entries {
		have = append(have, got{
			ID: e.Service.ID, Node: e.Node.Node, Address: e.Service.Address,
			Port: e.Service.Port, Weight: e.Service.Weights.Passing, Tags: e.Service.Tags, Meta: e.Service.Meta,
		})
	}
	if diff := cmp.Diff(want, have); diff != "" {
		t.Errorf("health entries (-want +got):\n%s", diff)
	}
}

func TestStopIsIdempotentAndStopsTheAgent(t *testing.T) {
	skipInShort(t)
	a := Start(t)
	addr := a.HTTPAddr()

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = a.Stop() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Stop() #%d = %v, want nil", i, err)
		}
	}
	if err := a.Stop(); err != nil {
		t.Errorf("third Stop() = %v, want nil", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("agent still accepts connections on %s after Stop", addr)
	}
}

func TestAgentsDoNotCollide(t *testing.T) {
	skipInShort(t)
	a, b := Start(t), Start(t)
	if a.HTTPAddr() == b.HTTPAddr() || a.NodeName() == b.NodeName() {
		t.Errorf("two agents share an address or name: %s/%s and %s/%s",
			a.HTTPAddr(), a.NodeName(), b.HTTPAddr(), b.NodeName())
	}
}

func TestRunFailsWithLogTail(t *testing.T) {
	skipInShort(t)
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// An invalid node name makes the agent exit at once.
	_, err = Run(ctx, Options{Binary: bin, Dir: t.TempDir(), NodeName: "bad\"name"})
	if err == nil {
		t.Fatal("Run with a bad configuration succeeded")
	}
	if !strings.Contains(err.Error(), "end of its log") {
		t.Errorf("Run error = %v, want it to carry the log tail", err)
	}
	if testing.Verbose() {
		t.Logf("Run error: %v", err)
	}
}

// fatalTB records Fatalf and ends the goroutine like testing.T does.
type fatalTB struct {
	testing.TB
	mu     sync.Mutex
	fatals []string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
	f.mu.Unlock()
	runtime.Goexit()
}

func TestStartFailsWithoutBinary(t *testing.T) {
	t.Setenv(EnvBinary, filepath.Join(t.TempDir(), "no-such-consul"))
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(f)
	}()
	<-done
	if len(f.fatals) != 1 || !strings.Contains(f.fatals[0], "LOOKASIDE_CONSUL") {
		t.Errorf("Start without a binary: Fatalf calls = %q, want one naming LOOKASIDE_CONSUL", f.fatals)
	}

	t.Setenv(EnvBinary, "")
	t.Setenv(EnvCache, t.TempDir())
	t.Setenv("PATH", t.TempDir())
	_, err := Binary()
	if err == nil || !strings.Contains(err.Error(), "run scripts/consul.sh") {
		t.Errorf("Binary() with nothing installed = %v, want an error saying to run scripts/consul.sh", err)
	}
}

// skipInShort skips tests that start a real Consul agent in -short mode.
func skipInShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real Consul agent; skipped in -short mode")
	}
}
