package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/lbdial"
)

// TestReloadUnderLoad runs the lbserver command from a config file with
// three backend processes (weights 1, 1, 4) and a grpclb client calling
// every 5 ms; on SIGHUP a new file changes the service's policy to
// weighted_round_robin and adds an alias. The client's next lists follow
// the weights without a new stream, a client dialing the alias is served,
// no call fails; a bad file on the next SIGHUP is refused, and the
// balancer keeps the configuration in force.
func TestReloadUnderLoad(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbBin, beBin := buildCmds(t)
	for _, w := range []string{"1", "1", "4"} {
		startProcess(t, beBin, "-consul", agent.HTTPAddr(), "-service", svc, "-weight", w,
			"-check-interval", "1s", "-drain-delay", "300ms", "-log-level", "warn")
	}
	waitPassing(t, svc, 3)
	dir := t.TempDir()
	file := filepath.Join(dir, "lookaside.yaml")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := fmt.Sprintf("listen: 127.0.0.1:0\nconsul:\n  address: %s\nadmin:\n  listen: 127.0.0.1:0\nbalancer:\n  client_stats_interval: 1s\n", agent.HTTPAddr())
	write(base + "services:\n  " + svc + ":\n    policy: round_robin\n")
	lbp := startProcess(t, lbBin, "-config", file)
	admin := strings.TrimSuffix(lbp.waitLine(t, "lbserver admin on ", 10*time.Second), "/")

	c := client(t, lbdial.Options{Target: svc + ":50051", Balancers: []string{lbp.addr}})
	shares := func(n int) []int {
		counts := spread(t, c, n)
		var out []int
		for _, v := range counts {
			out = append(out, v)
		}
		slices.Sort(out)
		return out
	}
	waitFor(t, 10*time.Second, "calls on all three backends", func() bool { return len(shares(30)) == 3 })
	if got := shares(600); !slices.Equal(got, []int{200, 200, 200}) {
		t.Fatalf("round_robin spread %v, want 200 each", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ld := startLoadFor(ctx, c, 5*time.Millisecond, 60*time.Second)

	write(base + "services:\n  " + svc + ":\n    policy: weighted_round_robin\n    aliases: [users-" + svc + "]\n")
	if err := lbp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the reload logged", func() bool { return strings.Contains(lbp.logs(), "msg=reloaded") })
	waitFor(t, 10*time.Second, "a weighted spread", func() bool { s := shares(60); return len(s) == 3 && s[2] >= 35 })
	// The load's calls would interleave with the spread's: it stops first.
	if _, err := ld.finish(); err != nil {
		t.Errorf("calls failed during the reload: %v", err)
	}
	if got := shares(600); !slices.Equal(got, []int{100, 100, 400}) {
		t.Errorf("weighted_round_robin spread %v, want 100, 100, 400", got)
	}
	alias := client(t, lbdial.Options{Target: "users-" + svc + ":50051", Balancers: []string{lbp.addr}})
	if r, err := call(t.Context(), alias); err != nil || r.LbToken == "" {
		t.Errorf("a client of the new alias: %v, %v; want a call with an lb-token", r, err)
	}

	ld = startLoadFor(ctx, c, 5*time.Millisecond, 60*time.Second)
	write(base + "services:\n  " + svc + ":\n    policy: fastest\n")
	if err := lbp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the refusal logged", func() bool { return strings.Contains(lbp.logs(), "reload refused") })
	if !strings.Contains(lbp.logs(), `services.`+svc+`.policy: \"fastest\" is not a policy`) {
		t.Errorf("the refusal does not name the field:\n%s", lbp.logs())
	}
	if _, err := ld.finish(); err != nil {
		t.Errorf("calls failed during the refused reload: %v", err)
	}
	if got := shares(600); !slices.Equal(got, []int{100, 100, 400}) {
		t.Errorf("after a refused reload, spread %v; want weighted_round_robin's 100, 100, 400 still", got)
	}
	m := scrape(t, admin+"/metrics")
	// Two clients, two streams: the first client's was never dropped.
	if got := m[series("lookaside_lb_streams_started_total", "service", svc)]; got != 2 {
		var all []string
		for k, v := range m {
			if strings.HasPrefix(k, "lookaside_lb_streams_") {
				all = append(all, fmt.Sprintf("%s %v", k, v))
			}
		}
		t.Errorf("streams started for %s: %v, want 2 (one per client); %v", svc, got, all)
	}
}
