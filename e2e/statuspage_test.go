package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lookaside-lb/lookaside/admin/browsertest"
	"github.com/lookaside-lb/lookaside/backend"
	"github.com/lookaside-lb/lookaside/internal/lbdial"
)

// EnvScreenshot names the environment variable that makes
// TestStatusPageBrowser save a screenshot of the page at that path
// (docs/status-page.png is made with it).
const envScreenshot = "LOOKASIDE_SCREENSHOT"

// TestStatusPageBrowser runs the lbserver binary with its admin listener
// against real Consul and backends, with grpclb clients calling, and reads
// its status page in headless Chromium as a person would: every service
// with a row per backend (address and Consul ID), the calls the clients
// reported, Consul reachable; then a backend leaves and its row goes
// within the page's refresh.
func TestStatusPageBrowser(t *testing.T) {
	t.Parallel()
	browsertest.Require(t)
	users, orders, lbService := serviceName(t)+"-users", serviceName(t)+"-orders", serviceName(t)+"-lb"
	ub := startBackends(t, users, 3)
	ob := []*runningBackend{
		startBackend(t, orders, func(c *backend.Config) { c.Weight = 1 }),
		startBackend(t, orders, func(c *backend.Config) { c.Weight = 3 }),
	}
	waitPassing(t, orders, 2)
	lbBin, _ := buildCmds(t)
	lbp := startProcess(t, lbBin, "-listen", "127.0.0.1:0", "-consul", agent.HTTPAddr(), "-admin-listen", "127.0.0.1:0",
		"-client-stats-interval", "1s", "-service-policy", orders+"=weighted_round_robin", "-log-level", "warn",
		"-register", "-register-service", lbService, "-check-interval", "1s", "-drain-delay", "200ms")
	adminURL := strings.TrimSpace(lbp.waitLine(t, "lbserver admin on ", 10*time.Second))
	if !strings.HasPrefix(adminURL, "http://127.0.0.1:") {
		t.Fatalf("admin URL %q", adminURL)
	}

	uc := client(t, lbdial.Options{Target: users + ":50051", Balancers: []string{lbp.addr}})
	oc := client(t, lbdial.Options{Target: orders + ":50051", Balancers: []string{lbp.addr}})
	for range 2 { // pick_first clients, which the page counts per endpoint
		c := client(t, lbdial.Options{Target: users + ":50051", Balancers: []string{lbp.addr}, PickFirst: true})
		spread(t, c, 1)
	}
	waitSeen(t, uc, ub...)
	waitSeen(t, oc, ob...)
	spread(t, uc, 90)
	spread(t, oc, 80)

	ctx := browsertest.New(t, 2*time.Minute)
	if err := chromedp.Do(ctx, chromedp.Navigate(adminURL)); err != nil {
		t.Fatalf("opening %s: %v", adminURL, err)
	}
	// rowOf tells whether a row shows backend b: its address, then its
	// Consul ID.
	rowOf := func(row string, b *runningBackend) bool { return strings.HasPrefix(row, b.Addr()+" "+b.ID()+" ") }
	// shows tells whether svc is shown with exactly the backends bs, and
	// calls reported.
	shows := func(page []browsertest.ShownService, svc string, bs ...*runningBackend) bool {
		i := slices.IndexFunc(page, func(s browsertest.ShownService) bool { return s.Name == svc })
		if i < 0 || len(page[i].Rows) != len(bs) || strings.Contains(page[i].Facts, "calls reported 0 ") {
			return false
		}
		for _, b := range bs {
			if !slices.ContainsFunc(page[i].Rows, func(r string) bool { return rowOf(r, b) }) {
				return false
			}
		}
		return true
	}
	page := browsertest.Poll(t, ctx, 20*time.Second, "the page to show both services, every backend and the calls reported",
		browsertest.ShownServices, func(p []browsertest.ShownService) bool {
			return shows(p, users, ub...) && shows(p, orders, ob...)
		})
	t.Logf("the page shows: %q", page)
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ready", "reachable", "weighted_round_robin · config", "round_robin · default"} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not say %q:\n%s", want, text)
		}
	}
	// The replica registered itself; the page lists it once Consul says
	// it passes.
	browsertest.Poll(t, ctx, 20*time.Second, "the page to list this replica", `document.getElementById("replicas").innerText`,
		func(s string) bool {
			return strings.Contains(s, lbp.addr+"\nthis one") || strings.Contains(s, lbp.addr+" this one")
		})
	if p := os.Getenv(envScreenshot); p != "" {
		if err := browsertest.Screenshot(ctx, p); err != nil {
			t.Errorf("screenshot: %v", err)
		} else {
			t.Logf("screenshot saved at %s", p)
		}
	}

	// A backend leaves: its row goes within the page's refresh, without a
	// reload.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.notReloaded = true`)); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	ub[0].cancel() // it deregisters, drains and stops; its cleanup waits for it
	page = browsertest.Poll(t, ctx, 20*time.Second, "the page to drop the row of the backend that left",
		browsertest.ShownServices, func(p []browsertest.ShownService) bool { return shows(p, users, ub[1:]...) })
	t.Logf("%v after %s was stopped, the page shows: %q", time.Since(left).Round(10*time.Millisecond), ub[0].ID(), page)
	if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.notReloaded === true`)); err != nil || !ok {
		t.Errorf("the page was reloaded instead of refreshed in place (%v)", err)
	}
}
