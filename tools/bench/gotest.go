package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// goBench runs `go test -run '^$' -bench pattern -benchtime 1x pkg` in
// root with LOOKASIDE_CONSUL set, bounded by limit, and returns the lines
// of benchmark name. It blocks until the test binary exits; when no line
// came, the error carries the end of the output (a skip says why there).
func goBench(ctx context.Context, root, consulBin, pkg, pattern, name string, limit time.Duration) ([]BenchLine, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^$", "-bench", pattern, "-benchtime", "1x",
		"-timeout", limit.String(), pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "LOOKASIDE_CONSUL="+consulBin)
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	lines := parseBench(string(out), name)
	if len(lines) == 0 {
		if err == nil {
			err = fmt.Errorf("no %s result", name)
		}
		return nil, fmt.Errorf("go test -bench %s %s: %w\n%s", pattern, pkg, err, tail(string(out), 15))
	}
	if err != nil {
		// Some sub-benchmarks ran: keep them and say what failed.
		return lines, fmt.Errorf("go test -bench %s %s: %w\n%s", pattern, pkg, err, tail(strings.TrimSpace(string(out)), 15))
	}
	return lines, nil
}
