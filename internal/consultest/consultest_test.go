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

// registerExternal puts an instance on a node of its own through the
// catalog, which the agent's anti-entropy leaves alone.
func registerExternal(t *testing.T, c *api.Client, service, id string) {
	t.Helper()
	_, err := c.Catalog().Register(&api.CatalogRegistration{
		Node:    "external-" + id,
		Address: "127.0.0.1",
		Service: &api.AgentService{ID: id, Service: service, Address: "127.0.0.1", Port: 4242},
	}, nil)
	if err != nil {
		t.Fatalf("Catalog().Register: %v", err)
	}
}

// instanceIDs returns the IDs of service's instances, or the error.
func instanceIDs(ctx context.Context, c *api.Client, service string) ([]string, *api.QueryMeta, error) {
	entries, meta, err := c.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, nil, err
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	return ids, meta, nil
}

func TestPersistentAgentKeepsRegistrationsAcrossKill(t *testing.T) {
	skipInShort(t)
	a := StartWith(t, Options{Persistent: true})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c := a.Client()
	registerExternal(t, c, "kept-srv", "kept-1")
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "local-1", Name: "local-srv", Port: 4243}); err != nil {
		t.Fatalf("ServiceRegister: %v", err)
	}
	addr := a.HTTPAddr()

	if err := a.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if a.Running() {
		t.Error("Running() = true after Kill")
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("killed agent still accepts connections on %s", addr)
	}
	if _, _, err := instanceIDs(ctx, c, "kept-srv"); err == nil {
		t.Error("query to a killed agent succeeded")
	}
	if err := a.Kill(); err == nil {
		t.Error("second Kill succeeded, want an error: nothing runs")
	}

	start := time.Now()
	if err := a.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("restarted and leading again in %v", time.Since(start))
	if a.HTTPAddr() != addr || !a.Running() {
		t.Errorf("after Restart: HTTPAddr() = %s (want %s), Running() = %v", a.HTTPAddr(), addr, a.Running())
	}
	for _, want := range []struct{ service, id string }{{"kept-srv", "kept-1"}, {"local-srv", "local-1"}} {
		ids, _, err := instanceIDs(ctx, c, want.service)
		if err != nil {
			t.Fatalf("after Restart: %v", err)
		}
		if diff := cmp.Diff([]string{want.id}, ids); diff != "" {
			t.Errorf("instances of %s after Restart (-want +got):\n%s", want.service, diff)
		}
	}
	if err := a.Restart(ctx); err == nil {
		t.Error("Restart of a running agent succeeded")
	}
	if err := a.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := a.Restart(ctx); err == nil {
		t.Error("Restart after Stop succeeded")
	}
}

func TestKilledAgentStopsWithoutError(t *testing.T) {
	skipInShort(t)
	a := StartWith(t, Options{Persistent: true})
	if err := a.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := a.Stop(); err != nil {
		t.Errorf("Stop after Kill = %v, want nil", err)
	}
}

func TestDevAgentCannotRestart(t *testing.T) {
	skipInShort(t)
	a := Start(t)
	if err := a.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := a.Restart(t.Context()); err == nil || !strings.Contains(err.Error(), "not persistent") {
		t.Errorf("Restart of a dev agent = %v, want an error saying it is not persistent", err)
	}
}

func TestACLAgentDeniesByDefault(t *testing.T) {
	skipInShort(t)
	a := StartWith(t, Options{ACL: true})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if a.ManagementToken() == "" {
		t.Fatal("ManagementToken() is empty with ACLs on")
	}
	registerExternal(t, a.Client(), "secret-srv", "secret-1")

	clientWith := func(token string) *api.Client {
		c, err := api.NewClient(&api.Config{Address: a.HTTPAddr(), Scheme: "http", Token: token})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	reader, err := a.NewToken(ctx, `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatalf("NewToken: %v", err)
	}
	empty, err := a.NewToken(ctx, "")
	if err != nil {
		t.Fatalf("NewToken with no rules: %v", err)
	}

	for _, tc := range []struct {
		name         string
		token        string
		wantIDs      []string
		wantFiltered bool
		wantErr      string
	}{
		{name: "management", token: a.ManagementToken(), wantIDs: []string{"secret-1"}},
		{name: "reader", token: reader, wantIDs: []string{"secret-1"}},
		// Consul sets X-Consul-Results-Filtered-By-ACLs only for requests
		// that carry a token: an anonymous reader cannot tell that
		// anything was hidden.
		{name: "anonymous", token: "", wantFiltered: false},
		{name: "no policy", token: empty, wantFiltered: true},
		{name: "unknown token", token: newUUID(), wantErr: "403"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, meta, err := instanceIDs(ctx, clientWith(tc.token), "secret-srv")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("query error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if diff := cmp.Diff(tc.wantIDs, ids); diff != "" {
				t.Errorf("instances (-want +got):\n%s", diff)
			}
			if meta.ResultsFilteredByACLs != tc.wantFiltered {
				t.Errorf("ResultsFilteredByACLs = %v, want %v", meta.ResultsFilteredByACLs, tc.wantFiltered)
			}
		})
	}
}

func TestNewTokenWithoutACLs(t *testing.T) {
	skipInShort(t)
	a := Start(t)
	if a.ManagementToken() != "" {
		t.Errorf("ManagementToken() = %q without ACLs, want empty", a.ManagementToken())
	}
	if _, err := a.NewToken(t.Context(), ""); err == nil {
		t.Error("NewToken without ACLs succeeded")
	}
}

func TestPersistentACLAgentKeepsTokensAcrossKill(t *testing.T) {
	skipInShort(t)
	a := StartWith(t, Options{Persistent: true, ACL: true})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	registerExternal(t, a.Client(), "acl-kept-srv", "acl-kept-1")
	reader, err := a.NewToken(ctx, `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatalf("NewToken: %v", err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := a.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	c, err := api.NewClient(&api.Config{Address: a.HTTPAddr(), Scheme: "http", Token: reader})
	if err != nil {
		t.Fatal(err)
	}
	ids, _, err := instanceIDs(ctx, c, "acl-kept-srv")
	if err != nil {
		t.Fatalf("query with the token made before the kill: %v", err)
	}
	if diff := cmp.Diff([]string{"acl-kept-1"}, ids); diff != "" {
		t.Errorf("instances after Restart (-want +got):\n%s", diff)
	}
}
