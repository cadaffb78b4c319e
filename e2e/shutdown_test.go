package e2e

import (
	"bufio"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lbProcess is the lbserver binary, its stderr kept for the test.
type lbProcess struct {
	cmd    *exec.Cmd
	addr   string
	stderr *lockedWriter // over a *strings.Builder
	exited chan error
}

func (p *lbProcess) logs() string {
	p.stderr.mu.Lock()
	defer p.stderr.mu.Unlock()
	return p.stderr.w.(*strings.Builder).String()
}

func startLBProcess(t *testing.T, bin string, args ...string) *lbProcess {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// The race detector sleeps 1 s at exit by default; the test times
	// the shutdown itself.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &lbProcess{cmd: cmd, stderr: &lockedWriter{w: &strings.Builder{}}, exited: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, addr, ok := strings.Cut(sc.Text(), " listening on "); ok {
				ready <- addr
			}
		}
		io.Copy(io.Discard, stdout)
		p.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case p.addr = <-ready:
	case err := <-p.exited:
		t.Fatalf("lbserver exited before it was ready: %v\n%s", err, p.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("lbserver not ready after 30 s\n%s", p.logs())
	}
	return p
}

// wait waits up to limit for the process to exit and returns its exit code
// and how long it took from since.
func (p *lbProcess) wait(t *testing.T, since time.Time, limit time.Duration) (code int, took time.Duration) {
	t.Helper()
	select {
	case err := <-p.exited:
		took = time.Since(since)
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, took
		case errors.As(err, &ee):
			return ee.ExitCode(), took
		}
		t.Fatalf("lbserver: %v", err)
	case <-time.After(limit):
		t.Fatalf("lbserver still running %v after SIGTERM\n%s", limit, p.logs())
	}
	return -1, 0
}

// TestBinariesShutdownBounded: the lbserver binary, registered in Consul
// with a -drain-delay far longer than its -shutdown-timeout, exits 0 within
// -shutdown-timeout of SIGTERM (deregistered, the drain delay cut and
// logged); and a second SIGTERM during a long shutdown ends it at once with
// exit code 1 and a line on stderr.
func TestBinariesShutdownBounded(t *testing.T) {
	lbBin, _ := buildCmds(t)
	lbService := serviceName(t) + "-lb"
	start := func(t *testing.T, shutdownTimeout string) *lbProcess {
		p := startLBProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(),
			"-register", "-register-service", lbService, "-check-interval", "1s",
			"-drain-delay", "30s", "-shutdown-timeout", shutdownTimeout)
		waitPassing(t, lbService, 1)
		return p
	}

	t.Run("bounded", func(t *testing.T) {
		const timeout = 3 * time.Second
		p := start(t, timeout.String())
		sent := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		code, took := p.wait(t, sent, timeout+5*time.Second)
		t.Logf("exited %d after %v (-drain-delay 30s, -shutdown-timeout %v)", code, took.Round(time.Millisecond), timeout)
		if code != 0 {
			t.Errorf("exit code %d, want 0\n%s", code, p.logs())
		}
		if took > timeout+200*time.Millisecond {
			t.Errorf("shutdown took %v, want at most -shutdown-timeout %v (+200ms)\n%s", took, timeout, p.logs())
		}
		if !strings.Contains(p.logs(), "-drain-delay cut to fit -shutdown-timeout") {
			t.Errorf("the cut drain delay is not logged:\n%s", p.logs())
		}
		if entries, _, err := agent.Client().Health().Service(lbService, "", false, nil); err != nil || len(entries) != 0 {
			t.Errorf("still registered after the shutdown: %d entries, %v", len(entries), err)
		}
	})

	t.Run("second signal", func(t *testing.T) {
		p := start(t, "60s")
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-p.exited:
			t.Fatalf("exited during its 30 s drain delay: %v\n%s", err, p.logs())
		case <-time.After(500 * time.Millisecond):
		}
		sent := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		code, took := p.wait(t, sent, 5*time.Second)
		t.Logf("exited %d %v after the second SIGTERM", code, took.Round(time.Millisecond))
		if code != 1 {
			t.Errorf("exit code %d after a second signal, want 1", code)
		}
		if took > time.Second {
			t.Errorf("took %v after the second signal, want at once (under 1s)", took)
		}
		if !strings.Contains(p.logs(), "lbserver: second signal (terminated) during shutdown: exiting at once") {
			t.Errorf("no line on stderr says why:\n%s", p.logs())
		}
	})
}
