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
	lines, errs := goBenchEach(ctx, root, consulBin, pkg, pattern, limit, name)
	return lines[0], errs[0]
}

// goBenchEach is goBench for the benchmarks names of one go test run
// (pattern matches them all): their lines and errors, in the order of
// names. A benchmark with lines has an error only if the run failed.
func goBenchEach(ctx context.Context, root, consulBin, pkg, pattern string, limit time.Duration, names ...string) ([][]BenchLine, []error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^$", "-bench", pattern, "-benchtime", "1x",
		"-timeout", limit.String(), pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "LOOKASIDE_CONSUL="+consulBin)
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	all := make([][]BenchLine, len(names))
	errs := make([]error, len(names))
	for i, name := range names {
		all[i] = parseBench(string(out), name)
		switch {
		case len(all[i]) == 0:
			e := err
			if e == nil {
				e = fmt.Errorf("no %s result", name)
			}
			errs[i] = fmt.Errorf("go test -bench %s %s: %w\n%s", pattern, pkg, e, tail(string(out), 15))
		case err != nil:
			// Some sub-benchmarks ran: keep them and say what failed.
			errs[i] = fmt.Errorf("go test -bench %s %s: %w\n%s", pattern, pkg, err, tail(strings.TrimSpace(string(out)), 15))
		}
	}
	return all, errs
}
