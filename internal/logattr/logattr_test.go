package logattr

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	tests := []struct {
		name    string
		handler func(*bytes.Buffer) slog.Handler
		want    string
	}{
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }, "retry_in=1.97s"},
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }, `"retry_in":"1.97s"`},
	}
	for _, tc := range tests {
		var b bytes.Buffer
		slog.New(tc.handler(&b)).Info("x", Duration("retry_in", 1970*time.Millisecond))
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("%s: %q lacks %q", tc.name, b.String(), tc.want)
		}
	}
}
