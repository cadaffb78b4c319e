package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/lbdial"
	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// process is a command of this repository run as its own process.
type process struct {
	cmd    *exec.Cmd
	name   string // from its ready line: "<kind> <name> listening on <addr>"
	addr   string // from its ready line
	exited chan error
	stderr *syncbuf.Buffer
	stdout *syncbuf.Buffer // every line written to stdout
}

// logBytes returns how many bytes the process has written to stderr.
func (p *process) logBytes() int { return p.stderr.Len() }

// logs returns what the process has written to stderr.
func (p *process) logs() string { return p.stderr.String() }

// waitLine waits up to limit for a line of the process's stdout that
// starts with prefix, and returns the rest of the line.
func (p *process) waitLine(t *testing.T, prefix string, limit time.Duration) string {
	t.Helper()
	var rest string
	waitFor(t, limit, fmt.Sprintf("a line %q on stdout", prefix), func() bool {
		for _, l := range strings.Split(p.stdout.String(), "\n") {
			if r, ok := strings.CutPrefix(l, prefix); ok {
				rest = r
				return true
			}
		}
		return false
	})
	return rest
}

// wait waits up to limit for the process to exit and returns its exit code
// and how long it took from since.
func (p *process) wait(t *testing.T, since time.Time, limit time.Duration) (code int, took time.Duration) {
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
		t.Fatalf("%s: %v", p.cmd.Path, err)
	case <-time.After(limit):
		t.Fatalf("%s still running %v after SIGTERM\n%s", p.cmd.Path, limit, p.logs())
	}
	return -1, 0
}

// buildCmds builds cmd/lbserver and cmd/backend with the race detector
// into a temporary folder.
func buildCmds(t *testing.T) (lbserverBin, backendBin string) {
	return buildCmdsWith(t, "-race")
}

// buildCmdsWith builds cmd/lbserver and cmd/backend with extra go build
// flags into a temporary folder.
func buildCmdsWith(t testing.TB, flags ...string) (lbserverBin, backendBin string) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	args := append(append([]string{"build"}, flags...), "-o", dir+string(filepath.Separator),
		"github.com/lookaside-lb/lookaside/cmd/lbserver", "github.com/lookaside-lb/lookaside/cmd/backend")
	out, err := exec.CommandContext(ctx, "go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "lbserver"), filepath.Join(dir, "backend")
}

// startProcess runs bin with args and waits for its ready line, which ends
// with "listening on <addr>".
func startProcess(t testing.TB, bin string, args ...string) *process {
	t.Helper()
	return startProcessEnv(t, nil, bin, args...)
}

// startProcessEnv is startProcess with the environment env (nil: this
// process's).
func startProcessEnv(t testing.TB, env []string, bin string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, exited: make(chan error, 1), stderr: &syncbuf.Buffer{}, stdout: &syncbuf.Buffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.stdout.Write([]byte(sc.Text() + "\n"))
			if head, addr, ok := strings.Cut(sc.Text(), " listening on "); ok {
				_, name, _ := strings.Cut(head, " ")
				ready <- [2]string{name, addr}
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
	case r := <-ready:
		p.name, p.addr = r[0], r[1]
	case err := <-p.exited:
		t.Fatalf("%s exited before it was ready: %v\n%s", filepath.Base(bin), err, p.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s not ready after 30 s\n%s", filepath.Base(bin), p.logs())
	}
	return p
}

// terminate sends SIGTERM and returns how long the process took to exit,
// failing the test unless it exits 0 within limit.
func (p *process) terminate(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("%s after SIGTERM: %v", p.cmd.Path, err)
		}
	case <-time.After(limit):
		t.Fatalf("%s still running %v after SIGTERM", p.cmd.Path, limit)
	}
	return time.Since(start)
}

// TestBinariesDrainOnSIGTERM runs the real lbserver and backend commands:
// a backend sent SIGTERM drains (deregisters, keeps serving while the
// balancer propagates, stops) without failing a call, and so does the
// balancer.
func TestBinariesDrainOnSIGTERM(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbBin, beBin := buildCmds(t)
	var backends []*process
	for range 3 {
		backends = append(backends, startProcess(t, beBin, "-consul", agent.HTTPAddr(), "-service", svc,
			"-check-interval", "1s", "-drain-delay", "1s", "-log-level", "warn"))
	}
	waitPassing(t, svc, 3)
	lbService := svc + "-lb"
	lbp := startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(),
		"-client-stats-interval", "1s", "-shutdown-timeout", "5s", "-log-level", "warn",
		"-register", "-register-service", lbService, "-check-interval", "1s", "-drain-delay", "200ms")
	waitPassing(t, lbService, 1) // the replica registered itself and its health check passes
	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbp.addr}})
	seen := map[string]bool{}
	waitFor(t, 20*time.Second, "calls to reach all three backend processes", func() bool {
		if r, err := call(t.Context(), c); err == nil {
			seen[r.BackendAddr] = true
		}
		return len(seen) == 3
	})
	ld := startLoad(t.Context(), c, 5*time.Millisecond)

	took := backends[0].terminate(t, 15*time.Second)
	t.Logf("backend drained and exited %v after SIGTERM", took)
	took = lbp.terminate(t, 10*time.Second)
	t.Logf("balancer exited %v after SIGTERM", took)
	if entries, _, err := agent.Client().Health().Service(lbService, "", false, nil); err != nil || len(entries) != 0 {
		t.Errorf("balancer still registered after SIGTERM: %d entries, %v", len(entries), err)
	}
	time.Sleep(500 * time.Millisecond) // the client runs on without a balancer
	counts, err := ld.finish()
	if err != nil {
		t.Fatalf("calls failed while a backend and the balancer shut down: %v", err)
	}
	t.Logf("%d calls, none failed: %v", ld.calls.Load(), counts)
	for _, b := range backends[1:] {
		if counts[b.name] == 0 {
			t.Errorf("backend %s got no calls: %v", b.name, counts)
		}
	}
}
