package lbserver

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/internal/syncbuf"
)

// TestServiceLog: one line per service and message per interval, the
// lines held back counted on the next one.
func TestServiceLog(t *testing.T) {
	var buf syncbuf.Buffer
	l := newServiceLog(slog.New(slog.NewTextHandler(&buf, nil)), time.Minute)
	now := time.Unix(1000, 0)
	l.SetNow(func() time.Time { return now })
	tests := []struct {
		after   time.Duration
		service string
		msg     string
		logged  bool
	}{
		{0, "a", "no instance", true},
		{time.Second, "a", "no instance", false},
		{0, "b", "no instance", true}, // another service
		{0, "a", "fallback", true},    // another message
		{30 * time.Second, "a", "no instance", false},
		{30 * time.Second, "a", "no instance", true}, // a minute after the first
	}
	for i, tc := range tests {
		now = now.Add(tc.after)
		if got := l.info(tc.service, tc.msg, "service", tc.service); got != tc.logged {
			t.Errorf("%d: %s %q logged %v, want %v", i, tc.service, tc.msg, got, tc.logged)
		}
	}
	if !strings.Contains(buf.String(), "suppressed=2") {
		t.Errorf("log lacks the count of suppressed lines:\n%s", buf.String())
	}
}

// TestOperatorLogs: an unknown service, a service without passing
// instances and fallback answers are logged at INFO once per service, in
// JSON with each key once and durations readable.
func TestOperatorLogs(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")), snap("empty"))
	cfg := testConfig(dirSrc{src, newFakeDir(true, "svc", "empty", "silent")})
	cfg.FirstListTimeout = 50 * time.Millisecond
	var buf syncbuf.Buffer
	cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, c := startServer(t, cfg)
	for i := range 3 {
		for _, name := range []string{fmt.Sprintf("nope-%d.lb.internal", i), "empty", "silent", "svc"} {
			st := openOK(t, c, name)
			recv(t, st) // a list or a fallback
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	count := map[string]int{}
	for _, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if n := strings.Count(line, `"component":`); n != 1 {
			t.Errorf("component %d times in %s", n, line)
		}
		msg, _ := m["msg"].(string)
		if m["level"] == "INFO" {
			count[fmt.Sprintf("%s %v", msg, m["service"])]++
		}
		if w, ok := m["waited"]; ok && w != "50ms" {
			t.Errorf("waited = %v, want \"50ms\": %s", w, line)
		}
	}
	for _, want := range []string{
		`unknown service: the directory does not list it; clients get fallback "nope-0.lb.internal"`,
		`no passing instance: clients get fallback "empty"`,
		`answering with fallback "empty"`,
		`answering with fallback "silent"`,
	} {
		if count[want] != 1 {
			t.Errorf("%q logged %d times at INFO, want once; log:\n%s", want, count[want], buf.String())
		}
	}
	if !strings.Contains(buf.String(), `"hint":"a name with dots may be a DNS name`) {
		t.Errorf("no hint at zones for an unknown name with dots:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), `"waited":"50ms"`) {
		t.Errorf("no fallback after the first-list timeout logged with waited=\"50ms\":\n%s", buf.String())
	}
}
