package main

import (
	"github.com/lookaside-lb/lookaside/internal/syncbuf"

	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOnSignals: the first signal starts the shutdown; the second ends the
// process at once with exit code 1 and says so on stderr.
func TestOnSignals(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	cancelled := make(chan struct{})
	exited := make(chan int, 1)
	var stderr syncbuf.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		onSignals(sigs, func() { close(cancelled) }, &stderr, func(code int) { exited <- code })
	}()
	sigs <- syscall.SIGTERM
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("first signal did not start the shutdown")
	}
	select {
	case code := <-exited:
		t.Fatalf("exit(%d) after one signal", code)
	case <-time.After(50 * time.Millisecond):
	}
	sigs <- syscall.SIGINT
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("exit(%d) after the second signal, want 1", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second signal did not end the process")
	}
	<-done
	if !strings.Contains(stderr.String(), "second signal (interrupt)") {
		t.Errorf("stderr %q does not say why it exits", stderr.String())
	}
}

func TestTokenKeyFileFlag(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.key")
	if err := os.WriteFile(good, []byte("lbserver-cmd-test-key-0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short.key")
	if err := os.WriteFile(short, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file     string
		wantCode int
		want     string
	}{
		{short, 2, "at least 16"},
		{filepath.Join(dir, "missing.key"), 2, "balancer.lb_token_key_file"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-static", "a=127.0.0.1:1", "-lb-token-key-file", tc.file}, &stdout, &stderr)
		if code != tc.wantCode || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("-lb-token-key-file %s: exit %d, stderr %q; want %d and %q", tc.file, code, stderr.String(), tc.wantCode, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-static", "a=127.0.0.1:1", "-lb-token-key-file", good}, &stdout, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "listening on") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("with a good key file: exit %d; stderr:\n%s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "lbserver-cmd-test-key") {
		t.Errorf("the key shows in the logs:\n%s", stderr.String())
	}
}

// TestShutdownLogged: a cancelled run logs that it shuts down, and how
// long the shutdown took.
func TestShutdownLogged(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-static", "a=127.0.0.1:1", "-shutdown-timeout", "2s"}, &stdout, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "listening on") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"shutting down; a second signal exits at once", "timeout=2s", "msg=stopped shutdown="} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("no %q in the logs:\n%s", want, stderr.String())
		}
	}
}
