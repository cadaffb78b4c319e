package consul

import (
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.Client != nil {
		t.Error("DefaultConfig().Client is set")
	}
	cfg.Client = newHarness()
	if _, err := New(cfg); err != nil {
		t.Errorf("New(DefaultConfig() with a client) = %v", err)
	}
	if cfg.Resolver != net.DefaultResolver {
		t.Errorf("DefaultConfig().Resolver = %v, want net.DefaultResolver", cfg.Resolver)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string // substring; "" for success
	}{
		{name: "valid", change: func(*Config) {}},
		{name: "nil logger and resolver use defaults", change: func(c *Config) { c.Logger, c.Resolver = nil, nil }},
		{name: "extreme but valid", change: func(c *Config) {
			c.WaitTime, c.MinInterval, c.BackoffBase, c.BackoffMax, c.ResolveTimeout =
				MaxWaitTime, MaxMinInterval, MaxBackoff, MaxBackoff, MaxResolveTimeout
		}},
		{name: "no client", change: func(c *Config) { c.Client = nil }, wantErr: "Client"},
		{name: "empty tag", change: func(c *Config) { c.Tags = []string{"a", ""} }, wantErr: "Tags[1]"},
		{name: "wait too short", change: func(c *Config) { c.WaitTime = 999 * time.Millisecond }, wantErr: "WaitTime"},
		{name: "wait too long", change: func(c *Config) { c.WaitTime = MaxWaitTime + 1 }, wantErr: "WaitTime"},
		{name: "zero interval", change: func(c *Config) { c.MinInterval = 0 }, wantErr: "MinInterval"},
		{name: "interval too long", change: func(c *Config) { c.MinInterval = MaxMinInterval + 1 }, wantErr: "MinInterval"},
		{name: "zero backoff base", change: func(c *Config) { c.BackoffBase = 0 }, wantErr: "BackoffBase"},
		{name: "negative backoff base", change: func(c *Config) { c.BackoffBase = -time.Second }, wantErr: "BackoffBase"},
		{name: "max below base", change: func(c *Config) { c.BackoffMax = c.BackoffBase - 1 }, wantErr: "BackoffMax"},
		{name: "max too long", change: func(c *Config) { c.BackoffMax = MaxBackoff + 1 }, wantErr: "BackoffMax"},
		{name: "zero resolve timeout", change: func(c *Config) { c.ResolveTimeout = 0 }, wantErr: "ResolveTimeout"},
		{name: "resolve timeout too long", change: func(c *Config) { c.ResolveTimeout = MaxResolveTimeout + 1 }, wantErr: "ResolveTimeout"},
		{name: "resolve interval too short", change: func(c *Config) { c.ResolveInterval = MinResolveInterval - 1 }, wantErr: "ResolveInterval"},
		{name: "resolve interval too long", change: func(c *Config) { c.ResolveInterval = MaxResolveInterval + 1 }, wantErr: "ResolveInterval"},
		{name: "no fetches", change: func(c *Config) { c.MaxFetches = 0 }, wantErr: "MaxFetches"},
		{name: "too many fetches", change: func(c *Config) { c.MaxFetches = MaxMaxFetches + 1 }, wantErr: "MaxFetches"},
		{name: "resync too often", change: func(c *Config) { c.ResyncInterval = MinResyncInterval - 1 }, wantErr: "ResyncInterval"},
		{name: "resync too rare", change: func(c *Config) { c.ResyncInterval = MaxResyncInterval + 1 }, wantErr: "ResyncInterval"},
		{name: "zero timeout", change: func(c *Config) { c.Timeout = 0 }, wantErr: "Timeout"},
		{name: "timeout too long", change: func(c *Config) { c.Timeout = MaxTimeout + 1 }, wantErr: "Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Client = newHarness()
			tt.change(&cfg)
			_, err := New(cfg)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("New: %v, want an error about %s", err, tt.wantErr)
			}
		})
	}
}

func TestNewCopiesTags(t *testing.T) {
	h := newHarness()
	cfg := testConfig(h)
	cfg.Tags = []string{"a"}
	s := newTestSource(t, h, cfg, 0)
	cfg.Tags[0] = "changed"
	if diff := cmp.Diff([]string{"a"}, s.cfg.Tags); diff != "" {
		t.Errorf("tags mismatch (-want +got):\n%s", diff)
	}
}

// agentStub is a loopback HTTP server that records what clients send to
// /v1/status/leader.
type agentStub struct {
	srv *httptest.Server

	mu     sync.Mutex
	tokens []string // guarded by mu
	dcs    []string // guarded by mu
}

func newAgentStub(t *testing.T) *agentStub {
	a := &agentStub{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.tokens = append(a.tokens, r.Header.Get("X-Consul-Token"))
		a.dcs = append(a.dcs, r.URL.Query().Get("dc"))
		a.mu.Unlock()
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`"127.0.0.1:8300"`))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *agentStub) seen() (tokens, dcs []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tokens, a.dcs
}

func TestNewClient(t *testing.T) {
	env := newAgentStub(t)
	override := newAgentStub(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_ADDR", env.srv.Listener.Addr().String())
	t.Setenv("CONSUL_HTTP_TOKEN", "env-token")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	t.Setenv("CONSUL_HTTP_SSL", "")

	tests := []struct {
		name      string
		cfg       ClientConfig
		stub      *agentStub
		wantToken string
		wantDC    string
	}{
		{name: "environment", stub: env, wantToken: "env-token"},
		{
			name:      "overrides",
			cfg:       ClientConfig{Address: "http://" + override.srv.Listener.Addr().String(), Token: "flag-token", Datacenter: "dc2"},
			stub:      override,
			wantToken: "flag-token",
			wantDC:    "dc2",
		},
		{name: "token file wins", cfg: ClientConfig{Token: "flag-token", TokenFile: tokenFile}, stub: env, wantToken: "file-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.cfg)
			if err != nil {
				t.Fatalf("NewClient: %v", err)
			}
			if _, err := c.Status().Leader(); err != nil {
				t.Fatalf("Leader: %v", err)
			}
			tokens, dcs := tt.stub.seen()
			if len(tokens) == 0 || tokens[len(tokens)-1] != tt.wantToken || dcs[len(dcs)-1] != tt.wantDC {
				t.Errorf("server saw tokens %q and dcs %q, want last %q and %q", tokens, dcs, tt.wantToken, tt.wantDC)
			}
		})
	}

	if _, err := NewClient(ClientConfig{Address: "ftp://127.0.0.1:1"}); err == nil {
		t.Error("NewClient with an unknown scheme: nil error")
	}
	if _, err := NewClient(ClientConfig{TokenFile: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("NewClient with a missing token file: nil error")
	}
}

func TestNewClientMaxConns(t *testing.T) {
	for _, n := range []int{-1, MaxMaxConns + 1} {
		if _, err := NewClient(ClientConfig{Address: "127.0.0.1:1", MaxConns: n}); err == nil || !strings.Contains(err.Error(), "MaxConns") {
			t.Errorf("NewClient with MaxConns %d: %v, want an error about MaxConns", n, err)
		}
	}
	if got := boundedTransport(7); got.MaxConnsPerHost != 7 || got.MaxIdleConnsPerHost != 7 {
		t.Errorf("transport bounds %d/%d, want 7/7", got.MaxConnsPerHost, got.MaxIdleConnsPerHost)
	}
	if ConnsNeeded(8) != 11 || ConnsNeeded(8) > DefaultMaxConns {
		t.Errorf("ConnsNeeded(8) = %d, want 11, within DefaultMaxConns %d", ConnsNeeded(8), DefaultMaxConns)
	}
}

func TestClientConfigLogValueHidesToken(t *testing.T) {
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("config", "consul", ClientConfig{Address: "a:1", Token: "s3cr3t"})
	if out := buf.String(); strings.Contains(out, "s3cr3t") || !strings.Contains(out, "a:1") {
		t.Errorf("logged %q", out)
	}
}
