// Package browsertest runs a headless Chromium for tests, driven with
// chromedp: the admin package's page test and the end-to-end status page
// test share it.
//
// The browser is Debian's chromium (/usr/bin/chromium), or the binary
// $LOOKASIDE_CHROMIUM names. Without one, a test skips with a message
// saying how to install it, unless $CI is set: in CI a missing browser
// fails the test.
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// EnvChromium names the environment variable that gives the browser's
// path.
const EnvChromium = "LOOKASIDE_CHROMIUM"

// Path returns the browser to run: $LOOKASIDE_CHROMIUM if set, else
// /usr/bin/chromium, else chromium or chromium-browser on PATH.
func Path() (string, error) {
	if p := os.Getenv(EnvChromium); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvChromium, err)
		}
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium", nil
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no chromium found (/usr/bin/chromium, chromium or chromium-browser on PATH, $" + EnvChromium + ")")
}

// Require returns the browser's path (see Path). When there is none, it
// skips t with a message saying how to install one, unless $CI is set:
// then it fails t. Tests that take long to set up call it first.
func Require(t testing.TB) string {
	t.Helper()
	path, err := Path()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("browser test in CI: %v; install it with: apt-get install -y chromium", err)
		}
		t.Skipf("skipping the browser test: %v; install it with: apt-get install -y chromium", err)
	}
	return path
}

// New starts a headless browser for t with one tab and returns the tab's
// context for chromedp.Run. The context ends after timeout or when t ends;
// the browser is stopped and its profile removed when t ends. When no
// browser is found, t is skipped, unless $CI is set: then t fails.
//
// The browser runs headless, without its sandbox (tests often run as
// root), with a 1280×900 window, without background networking or a proxy,
// and resolves no host name but localhost: the tests open loopback
// addresses only. It is driven over a pipe, not a debugging port.
func New(t testing.TB, timeout time.Duration) context.Context {
	t.Helper()
	path := Require(t)
	out := &syncbuf.Buffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1 , EXCLUDE [::1]"),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.CombinedOutput(out),
	)
	ctx, cancelTimeout := context.WithTimeout(context.Background(), timeout)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc() // waits for the browser to exit
		cancelTimeout()
		if t.Failed() && out.Len() > 0 {
			t.Logf("browser output:\n%s", out.String())
		}
	})
	// Start the browser now, so that a broken installation fails here.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v\n%s", path, err, out.String())
	}
	return bctx
}

// Poll evaluates the JavaScript expression expr in the page every 100 ms
// until cond holds for its value or timeout passes, and returns the last
// value; t fails when the time is up, with what in the message. Blocks.
func Poll[T any](t testing.TB, ctx context.Context, timeout time.Duration, what, expr string, cond func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last T
	var lastErr error
	for {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
		if err == nil {
			last, lastErr = v, nil
			if cond(v) {
				return v
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s; last value %+v, error %v", timeout, what, last, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Screenshot saves a PNG of the whole page at path.
func Screenshot(ctx context.Context, path string) error {
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return err
	}
	return os.WriteFile(path, png, 0o644)
}

// ShownService is a service as the status page shows it to a person: its
// name, its facts line (clients, endpoints, calls reported, ...) and the
// text of each endpoint row, white space collapsed.
type ShownService struct {
	Name  string   `json:"name"`
	Facts string   `json:"facts"`
	Rows  []string `json:"rows"`
}

// ShownServices is a JavaScript expression for Poll that reads the
// services the status page shows, as []ShownService, in page order. It
// reads rendered text (innerText), so what it returns is what a person
// sees.
const ShownServices = `Array.from(document.querySelectorAll("section.service")).map(s => ({
	name: s.querySelector("h2").innerText,
	facts: s.querySelector(".facts").innerText.replace(/\s+/g, " ").trim(),
	rows: Array.from(s.querySelectorAll("tbody tr")).map(r => r.innerText.replace(/\s+/g, " ").trim()),
}))`
