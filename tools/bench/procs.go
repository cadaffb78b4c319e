package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// Bounds on the life of the processes the bench runs.
const (
	buildTimeout = 5 * time.Minute
	readyTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// binaries are the commands the bench runs, built once per run.
type binaries struct {
	lbserver, backend string
	// backendFlags is the -h text of the backend, to tell which flags it
	// has (-call-cpu is newer than some checkouts).
	backendFlags string
}

// hasBackendFlag reports whether the backend binary has the flag name
// (without the dash).
func (b binaries) hasBackendFlag(name string) bool {
	return strings.Contains(b.backendFlags, "  -"+name+" ") || strings.Contains(b.backendFlags, "  -"+name+"\n")
}

// build builds cmd/lbserver and cmd/backend (without the race detector)
// into dir, as a user would. It blocks until the build ends.
func build(ctx context.Context, root, dir string) (binaries, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "./cmd/lbserver", "./cmd/backend")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return binaries{}, fmt.Errorf("go build: %w\n%s", err, out)
	}
	b := binaries{lbserver: filepath.Join(dir, "lbserver"), backend: filepath.Join(dir, "backend")}
	// -h exits with status 0 or 2 depending on the flag package; only the
	// text matters.
	out, _ := exec.CommandContext(ctx, b.backend, "-h").CombinedOutput()
	b.backendFlags = string(out)
	return b, nil
}

// process is a command of this repository running as its own process,
// ready once it printed "<kind> <name> listening on <addr>".
type process struct {
	cmd    *exec.Cmd
	name   string // from the ready line
	addr   string // from the ready line
	stderr *syncbuf.Buffer
	exited chan struct{} // closed when the process has been reaped
	err    error         // what Wait returned; set before exited is closed
}

// start runs bin with args and blocks until its ready line, ctx ends or
// readyTimeout passes. On error nothing is left running.
func start(ctx context.Context, bin string, args ...string) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = sysProcAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan [2]string, 1)
	// Owned by the process: it reads stdout until the process closes it,
	// then reaps the process.
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if head, addr, ok := strings.Cut(sc.Text(), " listening on "); ok {
				_, name, _ := strings.Cut(head, " ")
				select {
				case ready <- [2]string{name, addr}:
				default:
				}
			}
		}
		io.Copy(io.Discard, stdout)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case r := <-ready:
		p.name, p.addr = r[0], r[1]
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited before it was ready: %v\n%s", filepath.Base(bin), p.err, tail(p.stderr.String(), 20))
	case <-timer.C:
		err = fmt.Errorf("%s not ready after %v\n%s", filepath.Base(bin), readyTimeout, tail(p.stderr.String(), 20))
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.stop()
	return nil, err
}

// stop sends SIGTERM, waits up to stopTimeout for the process to exit and
// kills it after that. It blocks until the process is reaped; safe to call
// more than once.
func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// moduleRoot returns the directory of the main module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the Lookaside module: run the bench from the repository")
	}
	return filepath.Dir(mod), nil
}

// consulBinary returns $LOOKASIDE_CONSUL if set, else what
// scripts/consul.sh prints (it builds Consul from source the first time).
func consulBinary(ctx context.Context, root string) (string, error) {
	if p := os.Getenv("LOOKASIDE_CONSUL"); p != "" {
		return p, nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "consul.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/consul.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}
