package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinariesShutdownBounded: the lbserver binary, registered in Consul
// with a -drain-delay far longer than its -shutdown-timeout, exits 0 within
// -shutdown-timeout of SIGTERM (deregistered, the drain delay cut and
// logged); and a second SIGTERM during a long shutdown ends it at once with
// exit code 1 and a line on stderr.
func TestBinariesShutdownBounded(t *testing.T) {
	lbBin, _ := buildCmds(t)
	lbService := serviceName(t) + "-lb"
	start := func(t *testing.T, shutdownTimeout string) *process {
		p := startProcessEnv(t, noRaceExitSleep(), lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(),
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
		if !strings.Contains(p.logs(), "register.drain_delay cut to fit shutdown_timeout") {
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

// noRaceExitSleep is this process's environment for a binary whose exit
// is timed: the race detector sleeps 1 s at exit by default.
func noRaceExitSleep() []string {
	return append(os.Environ(), "GORACE=atexit_sleep_ms=0")
}
