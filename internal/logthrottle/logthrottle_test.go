package logthrottle

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLoggerOneLinePerKindPerInterval(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }

	for range 1000 {
		l.Info("bad stats")
	}
	l.Info("other kind")
	now = now.Add(999 * time.Millisecond)
	if l.Info("bad stats"); strings.Count(buf.String(), "\n") != 2 {
		t.Fatalf("after 1000 lines of one kind and 1 of another within a second, got:\n%s", buf.String())
	}
	now = now.Add(time.Millisecond)
	l.Info("bad stats")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], "suppressed=1000") {
		t.Fatalf("want a third line counting 1000 suppressed, got:\n%s", buf.String())
	}
}

func TestLoggerDisabledLevelCountsNothing(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn})), time.Second)
	if l.Log(t.Context(), slog.LevelInfo, "x") {
		t.Fatal("an INFO line was written with the level at WARN")
	}
	if len(l.kinds) != 0 {
		t.Fatal("a disabled level still took a table entry")
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"user-srv", `"user-srv"`},
		{"a\nb", `"a\nb"`},
		{strings.Repeat("x", 100), `"` + strings.Repeat("x", 64) + `"…(100 bytes)`},
		{strings.Repeat("x", 63) + "é" + "yy", `"` + strings.Repeat("x", 63) + `"…(67 bytes)`},
	} {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestLogKey: kinds are told apart by key too, and the table stays within
// MaxKinds, forgetting idle kinds first.
func TestLogKey(t *testing.T) {
	var b bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&b, nil)), time.Second)
	now := time.Unix(1000, 0)
	l.SetNow(func() time.Time { return now })
	ctx := context.Background()
	if !l.LogKey(ctx, slog.LevelInfo, "a", "m") || !l.LogKey(ctx, slog.LevelInfo, "b", "m") || l.LogKey(ctx, slog.LevelInfo, "a", "m") {
		t.Fatal("want a and b once each")
	}
	for i := range MaxKinds {
		l.LogKey(ctx, slog.LevelDebug-1, strconv.Itoa(i), "m") // below the level: not counted
	}
	for i := len(l.kinds); i < MaxKinds; i++ {
		l.LogKey(ctx, slog.LevelInfo, "k"+strconv.Itoa(i), "m")
	}
	if l.LogKey(ctx, slog.LevelInfo, "new", "m") {
		t.Error("a new kind was written with the table full of fresh kinds")
	}
	now = now.Add(time.Second)
	if !l.LogKey(ctx, slog.LevelInfo, "new", "m") || len(l.kinds) > MaxKinds {
		t.Errorf("after an interval, a new kind: table %d; want it written and the idle kinds forgotten", len(l.kinds))
	}
}
