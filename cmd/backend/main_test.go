package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"
	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/consultest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseFlags(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:8501")
	type view struct {
		Service, ID, Listen, Advertise string
		Tags                           []string
		Weight                         int
		Meta                           map[string]string
		Consul                         bool
		CheckInterval, DrainDelay      time.Duration
		ShutdownTimeout                time.Duration
		RequireLBToken                 bool
		Latency, ORCAMinInterval       time.Duration
		LoadWindow, CallCPU            time.Duration
		CPUBurn                        float64
	}
	d := backend.DefaultConfig()
	defaults := view{
		Service: d.Service, Listen: d.Listen, Weight: d.Weight, Consul: true,
		CheckInterval: d.CheckInterval, DrainDelay: d.DrainDelay, ShutdownTimeout: d.ShutdownTimeout,
		ORCAMinInterval: d.ORCAMinInterval, LoadWindow: d.LoadWindow,
	}
	tests := []struct {
		name string
		args []string
		want func(v *view)
	}{
		{"defaults", nil, func(*view) {}},
		{"everything", []string{
			"-service", "orders", "-id", "orders-1", "-listen", "127.0.0.1:9000", "-advertise", "10.0.0.1:9000",
			"-tags", "a, b,,c", "-weight", "5", "-meta", "zone=z1, rack = r2", "-check-interval", "3s",
			"-drain-delay", "0", "-shutdown-timeout", "1s", "-require-lb-token", "-log-level", "debug",
			"-latency", "40ms", "-cpu-burn", "0.5", "-orca-min-interval", "100ms", "-load-window", "2s",
			"-call-cpu", "3ms",
		}, func(v *view) {
			*v = view{
				Service: "orders", ID: "orders-1", Listen: "127.0.0.1:9000", Advertise: "10.0.0.1:9000",
				Tags: []string{"a", "b", "c"}, Weight: 5, Meta: map[string]string{"zone": "z1", "rack": "r2"},
				Consul: true, CheckInterval: 3 * time.Second, ShutdownTimeout: time.Second, RequireLBToken: true,
				Latency: 40 * time.Millisecond, CPUBurn: 0.5, ORCAMinInterval: 100 * time.Millisecond,
				LoadWindow: 2 * time.Second, CallCPU: 3 * time.Millisecond,
			}
		}},
		{"empty -consul", []string{"-consul="}, func(v *view) { v.Consul = false }},
		{"-no-consul", []string{"-no-consul"}, func(v *view) { v.Consul = false }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tc.args, err)
			}
			want := defaults
			tc.want(&want)
			got := view{
				Service: cfg.Service, ID: cfg.ID, Listen: cfg.Listen, Advertise: cfg.Advertise,
				Tags: cfg.Tags, Weight: cfg.Weight, Meta: cfg.Meta, Consul: cfg.Consul != nil,
				CheckInterval: cfg.CheckInterval, DrainDelay: cfg.DrainDelay,
				ShutdownTimeout: cfg.ShutdownTimeout, RequireLBToken: cfg.RequireLBToken,
				Latency: cfg.Latency, ORCAMinInterval: cfg.ORCAMinInterval, LoadWindow: cfg.LoadWindow,
				CPUBurn: cfg.CPUBurn, CallCPU: cfg.CallCPU,
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("parseFlags(%q) (-want +got):\n%s", tc.args, diff)
			}
			if cfg.Logger == nil {
				t.Error("no logger")
			}
		})
	}
}

func TestTokenKeyFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.key")
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(good, []byte("backend-cmd-test-key-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseFlags([]string{"-no-consul", "-lb-token-key-file", good}, io.Discard)
	if err != nil || string(cfg.LBTokenKey) != "backend-cmd-test-key-0123" || cfg.AcceptUnkeyedLBToken {
		t.Fatalf("-lb-token-key-file %s: key %q, accept unkeyed %v, err %v", good, cfg.LBTokenKey, cfg.AcceptUnkeyedLBToken, err)
	}
	cfg, err = parseFlags([]string{"-no-consul", "-lb-token-key-file", good, "-lb-token-accept-unkeyed"}, io.Discard)
	if err != nil || !cfg.AcceptUnkeyedLBToken {
		t.Fatalf("-lb-token-accept-unkeyed: %v, err %v", cfg.AcceptUnkeyedLBToken, err)
	}
	var stderr strings.Builder
	if code := run([]string{"-no-consul", "-lb-token-key-file", short}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "at least 16") {
		t.Fatalf("short key: exit %d, stderr %q; want 2 and the reason", code, stderr.String())
	}
}

func TestBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"-bogus"},
		{"-weight", "x"},
		{"-weight", "-1"},
		{"-meta", "novalue"},
		{"-meta", "a=1,a=2"},
		{"-log-level", "loud"},
		{"-drain-delay", "-1s"},
		{"-check-interval", "soon"},
		{"-id", "a/b"},
		{"-latency", "-1s"},
		{"-cpu-burn", "2"},
		{"-cpu-burn", "lots"},
		{"-orca-min-interval", "-1s"},
		{"-load-window", "-1s"},
		{"-lb-token-key-file", "/nonexistent/lb-token.key"},
		{"-no-consul", "-tls-cert", "c.pem"},
		{"-no-consul", "-tls-client-ca", "ca.pem"},
		{"-no-consul", "-tls-health-without-client-cert"},
		{"-no-consul", "-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-poll-interval", "-1s"},
		{"-consul", "127.0.0.1:8501", "-consul-cert-file", "c.pem"},
		{"-consul", "http://127.0.0.1:8501", "-consul-ca-file", "ca.pem"},
		{"extra"},
	} {
		var stderr strings.Builder
		if code := run(args, io.Discard, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
		if lines := strings.Count(stderr.String(), "\n"); lines == 0 {
			t.Errorf("run(%q) printed no error", args)
		}
	}
	if code := run([]string{"-h"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("run(-h) = %d, want 0", code)
	}
}

var readyLine = regexp.MustCompile(`^backend (\S+) listening on (\S+)$`)

// TestCommandWithConsul builds the command, runs it against a real agent,
// and stops it with SIGTERM.
func TestCommandWithConsul(t *testing.T) {
	skipInShort(t)
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	dir := t.TempDir()
	bin := filepath.Join(dir, "backend")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	stderrPath := filepath.Join(dir, "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	logs := func() string {
		b, _ := os.ReadFile(stderrPath)
		return string(b)
	}

	cmd := exec.CommandContext(ctx, bin,
		"-consul", agent.HTTPAddr(), "-service", "user-srv-cmd", "-tags", "cmd",
		"-check-interval", "1s", "-drain-delay", "300ms", "-shutdown-timeout", "2s")
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // only the first line matters
			}
		}
		exited <- cmd.Wait()
	}()
	defer func() {
		// Stop it however the test ended; cmd.Wait above reaps it.
		cmd.Process.Kill()
		<-exited
	}()

	var id, addr string
	select {
	case line := <-lines:
		m := readyLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("first stdout line %q, want %q", line, readyLine)
		}
		id, addr = m[1], m[2]
	case err := <-exited:
		exited <- err
		t.Fatalf("backend exited before it was ready: %v\n%s", err, logs())
	case <-ctx.Done():
		t.Fatalf("no ready line: %v\n%s", ctx.Err(), logs())
	}

	c := agent.Client()
	passing := func() (map[string]*api.AgentService, error) {
		entries, _, err := c.Health().Service("user-srv-cmd", "", true, (&api.QueryOptions{}).WithContext(ctx))
		m := make(map[string]*api.AgentService)
		for _, e := range entries {
			m[e.Service.ID] = e.Service
		}
		return m, err
	}
	for {
		m, err := passing()
		if err != nil {
			t.Fatal(err)
		}
		if s := m[id]; s != nil {
			if got := net.JoinHostPort(s.Address, strconv.Itoa(s.Port)); got != addr {
				t.Errorf("registered at %s, ready line says %s", got, addr)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("backend %s never passing in Consul: %v\n%s", id, ctx.Err(), logs())
		case <-time.After(100 * time.Millisecond):
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("backend exited with %v after SIGTERM, want 0\n%s", err, logs())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("backend still running 15s after SIGTERM\n%s", logs())
	}
	entries, _, err := c.Health().Service("user-srv-cmd", "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("%d instances still registered after exit, want none", len(entries))
	}
	if !strings.Contains(logs(), "deregistered") {
		t.Errorf("log does not mention deregistration:\n%s", logs())
	}
}

// skipInShort skips tests that start a real Consul agent in -short mode.
func skipInShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real Consul agent; skipped in -short mode")
	}
}
