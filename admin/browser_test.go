package admin

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lookaside-lb/lookaside/admin/browsertest"
	"github.com/lookaside-lb/lookaside/lbserver"
)

// xssName is a service name that runs script if the page does not escape
// it.
const xssName = `x<img src=x onerror="window.pwned=1">`

// TestBrowserStatusPage loads the status page in headless Chromium: it
// shows every service and its endpoints, escapes names, follows a change
// of the status within its refresh without a reload, and says so when it
// cannot refresh.
func TestBrowserStatusPage(t *testing.T) {
	var mu sync.Mutex
	st := fakeStatus() // guarded by mu
	st.Services = append(st.Services, lbserver.ServiceStatus{Service: xssName, Policy: "random"})
	h := newHandler(t, Options{Refresh: 500 * time.Millisecond, Status: func() Status {
		mu.Lock()
		defer mu.Unlock()
		s := st
		s.Now = time.Time{}
		return s
	}})
	addr, stop := serve(t, h)
	ctx := browsertest.New(t, 60*time.Second)

	// "/" redirects to the page.
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatal(err)
	}
	if loc, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.pathname`)); err != nil || loc != "/status" {
		t.Errorf("/ led to %q (%v), want /status", loc, err)
	}
	shown := browsertest.Poll(t, ctx, 10*time.Second, "the page to show four services", browsertest.ShownServices,
		func(s []browsertest.ShownService) bool { return len(s) == 4 })
	want := []browsertest.ShownService{
		{Name: evilName, Rows: []string{`10.0.0.9:1 id"><img src=x onerror=alert(1)> critical 0 – – – – – 0 0 – (100.0%)`}},
		{Name: "new-srv"},
		{Name: "user-srv", Rows: []string{
			"10.0.0.1:50051 user-srv-1 passing 1 – – – unimplemented – 1 100 25.0% (25.0%)",
			"10.0.0.2:50051 user-srv-2 node-b passing 3 1.25 42.0% 31.5 800ms 20.1ms outlier 1 300 75.0% (75.0%)",
		}},
		{Name: xssName},
	}
	if !slices.EqualFunc(shown, want, func(a, b browsertest.ShownService) bool { return a.Name == b.Name && slices.Equal(a.Rows, b.Rows) }) {
		t.Errorf("the page shows\n%q\nwant\n%q", shown, want)
	}
	if pwned, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.pwned === 1`)); err != nil || pwned {
		t.Errorf("a service name ran script in the page (%v)", err)
	}
	health, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("health").innerText`))
	if err != nil || health != "ready" {
		t.Errorf("health badge %q (%v), want ready", health, err)
	}

	// An endpoint leaves, a service arrives, the replica drains: the page
	// follows within its refresh, without a reload.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.notReloaded = true`)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	st.Draining = true
	svc := &st.Services[0]
	svc.Endpoints = svc.Endpoints[1:]
	svc.RoundRobinList = svc.RoundRobinList[:1]
	st.Services = append(st.Services, lbserver.ServiceStatus{Service: "order-srv", Policy: "least_load", Ready: true,
		Endpoints: []lbserver.EndpointStatus{{Address: "10.0.1.1:50051", ID: "order-srv-1", InstanceID: "order-srv-1", Health: "passing", Weight: 1}}})
	mu.Unlock()
	shown = browsertest.Poll(t, ctx, 5*time.Second, "the page to show the change", browsertest.ShownServices,
		func(s []browsertest.ShownService) bool { return len(s) == 5 })
	if i := slices.IndexFunc(shown, func(s browsertest.ShownService) bool { return s.Name == "user-srv" }); i < 0 ||
		len(shown[i].Rows) != 1 || !strings.HasPrefix(shown[i].Rows[0], "10.0.0.2:50051 user-srv-2 ") {
		t.Errorf("after user-srv-1 left, the page shows %q", shown)
	}
	if !slices.ContainsFunc(shown, func(s browsertest.ShownService) bool {
		return s.Name == "order-srv" && len(s.Rows) == 1 && strings.HasPrefix(s.Rows[0], "10.0.1.1:50051 order-srv-1 ")
	}) {
		t.Errorf("the new service order-srv is not shown: %q", shown)
	}
	if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.notReloaded === true && document.getElementById("health").innerText === "draining"`)); err != nil || !ok {
		t.Errorf("the page did not update in place to show draining (%v)", err)
	}

	// The balancer goes away: the page says it shows old data.
	stop()
	browsertest.Poll(t, ctx, 5*time.Second, "the page to say it cannot refresh",
		`document.getElementById("stale").hidden ? "" : document.getElementById("stale").innerText`,
		func(s string) bool { return strings.HasPrefix(s, "Cannot refresh") })
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("section.service").length`)); err != nil || n != 5 {
		t.Errorf("after the balancer left, the page shows %d services (%v), want the last 5", n, err)
	}
}

var _ http.Handler = (*Handler)(nil)
