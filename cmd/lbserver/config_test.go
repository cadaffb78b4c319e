package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// TestHelpGroupedAndComplete: every flag is in exactly one group of -h,
// and -h prints each under its group's title, in order.
func TestHelpGroupedAndComplete(t *testing.T) {
	cfg, cmd := load0(t)
	fs := flag.NewFlagSet("lbserver", flag.ContinueOnError)
	bindFlags(fs, &cfg, &cmd)
	seen := map[string]string{}
	for _, g := range groups {
		for _, name := range g.flags {
			if fs.Lookup(name) == nil {
				t.Errorf("group %q lists -%s, which is not a flag", g.title, name)
			}
			if prev, ok := seen[name]; ok {
				t.Errorf("-%s is in groups %q and %q", name, prev, g.title)
			}
			seen[name] = g.title
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := seen[f.Name]; !ok {
			t.Errorf("-%s is in no group of -h", f.Name)
		}
	})
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, io.Discard, &stderr); code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	help := stderr.String()
	last := -1
	for _, g := range groups {
		i := strings.Index(help, "\n"+g.title+":\n")
		if i < 0 || i < last {
			t.Errorf("group %q missing or out of order in -h", g.title)
			continue
		}
		last = i
		for _, name := range g.flags {
			if j := strings.Index(help[i:], "\n  -"+name+" "); j < 0 && !strings.Contains(help[i:], "\n  -"+name+"\n") {
				t.Errorf("-%s not shown under %q", name, g.title)
			}
		}
	}
}

func load0(t *testing.T) (config.Config, command) {
	t.Helper()
	cfg, cmd, err := load(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, cmd
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestFlagsOverrideFile: the file sets values, a flag given on the command
// line wins, and flags not given leave the file's values.
func TestFlagsOverrideFile(t *testing.T) {
	f := writeFile(t, t.TempDir(), "lb.yaml", `
listen: 127.0.0.1:7100
balancer:
  policy: least_load
limits:
  max_streams: 900
services:
  user-srv:
    policy: random
    rate_limit: 50
`)
	cfg, _, err := load([]string{"-config", f, "-max-streams", "1800", "-rate-limit", "orders=5"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7100" || cfg.Balancer.Policy != "least_load" || cfg.Limits.MaxStreams != 1800 {
		t.Errorf("listen %q, policy %q, max_streams %d; want the file's listen and policy, the flag's 1800", cfg.Listen, cfg.Balancer.Policy, cfg.Limits.MaxStreams)
	}
	if s := cfg.Services["user-srv"]; s.Policy != "random" || s.RateLimit != 50 {
		t.Errorf("user-srv %+v; want the file's", s)
	}
	if s := cfg.Services["orders"]; s.RateLimit != 5 {
		t.Errorf("orders %+v; want the flag's rate limit 5", s)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

// TestValidateCommand: -validate exits 0 for a good configuration and 1
// with every error of a bad one, each naming its field and line or value.
func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", "consul:\n  address: 127.0.0.1:8500\n  token: s3cret\nservices:\n  user-srv:\n    policy: least_load\n")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-validate", "-print-config", "-config", good}, &stdout, &stderr); code != 0 {
		t.Fatalf("good file: exit %d, stderr %s", code, stderr.String())
	}
	if out := stdout.String(); !strings.Contains(out, "configuration OK") || !strings.Contains(out, "user-srv") || strings.Contains(out, "s3cret") {
		t.Errorf("-validate -print-config printed %q; want the config without the token, then OK", out)
	}
	bad := writeFile(t, dir, "bad.yaml", "limits:\n  max_streams: 0\nbalancer:\n  policy: fastest\nservices:\n  user-srv:\n    rate_limit: -1\n")
	stdout.Reset()
	stderr.Reset()
	if code := run(context.Background(), []string{"-validate", "-config", bad}, &stdout, &stderr); code != 1 {
		t.Fatalf("bad file: exit %d; want 1", code)
	}
	for _, want := range []string{"limits.max_streams: 0", `balancer.policy: "fastest"`, "services.user-srv.rate_limit: -1"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("-validate stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	unknown := writeFile(t, dir, "unknown.yaml", "limits:\n  max_stream: 3\n")
	stderr.Reset()
	if code := run(context.Background(), []string{"-validate", "-config", unknown}, io.Discard, &stderr); code == 0 || !strings.Contains(stderr.String(), "max_stream") || !strings.Contains(stderr.String(), "line 2") {
		t.Errorf("unknown key: exit %d, stderr %q; want an error naming the key and its line", code, stderr.String())
	}
}

// TestSIGHUPReload: a SIGHUP reloads the file; a bad file is refused and
// logged, and the balancer keeps running.
func TestSIGHUPReload(t *testing.T) {
	dir := t.TempDir()
	base := "listen: 127.0.0.1:0\nstatic:\n  services:\n    user-srv: [10.0.0.1:50051]\n"
	f := writeFile(t, dir, "lb.yaml", base)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	hups := make(chan os.Signal, 1)
	done := make(chan int, 1)
	go func() { done <- runWith(ctx, []string{"-config", f}, &stdout, &stderr, hups) }()
	waitFor(t, &stdout, "listening on", done)

	writeFile(t, dir, "lb.yaml", base+"limits:\n  max_streams: 10\n  max_streams_per_ip: 10\n  max_streams_per_conn: 10\n")
	hups <- syscall.SIGHUP
	waitFor(t, &stderr, "msg=reloaded", done)

	writeFile(t, dir, "lb.yaml", base+"limits:\n  max_streams: 0\n")
	hups <- syscall.SIGHUP
	waitFor(t, &stderr, "reload refused", done)
	if !strings.Contains(stderr.String(), "limits.max_streams: 0") {
		t.Errorf("the refusal does not name the field:\n%s", stderr.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
}

func waitFor(t *testing.T, b *syncbuf.Buffer, s string, done <-chan int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), s) {
		select {
		case code := <-done:
			t.Fatalf("exited %d before %q", code, s)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q after 10 s:\n%s", s, b.String())
		}
	}
}

// TestConfigFlagAnywhere: -config is found wherever it stands, and a TLS
// file given by flag turns that client's TLS on.
func TestConfigFlagAnywhere(t *testing.T) {
	f := writeFile(t, t.TempDir(), "lb.yaml", "limits:\n  max_streams: 900\n  max_streams_per_ip: 900\n")
	for _, args := range [][]string{
		{"-config", f, "-listen", "127.0.0.1:0"},
		{"-listen", "127.0.0.1:0", "-config", f},
		{"-listen=127.0.0.1:0", "--config=" + f, "-register=false"},
		{"-load-reports", "-config", f},
	} {
		cfg, cmd, err := load(args, io.Discard)
		if err != nil || cmd.configFile != f || cfg.Limits.MaxStreams != 900 {
			t.Errorf("%q: config file %q, max_streams %d, %v; want the file's 900", args, cmd.configFile, cfg.Limits.MaxStreams, err)
		}
	}
	cfg, _, err := load([]string{"-orca-tls-ca", "ca.pem", "-consul-ca-file", "consul-ca.pem"}, io.Discard)
	if err != nil || !cfg.LoadReports.TLS.Enabled || !cfg.Consul.TLS.Enabled {
		t.Errorf("TLS flags: load_reports.tls.enabled %v, consul.tls.enabled %v, %v; want both on", cfg.LoadReports.TLS.Enabled, cfg.Consul.TLS.Enabled, err)
	}
}
