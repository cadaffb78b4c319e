// Package logattr holds slog attributes that read the same in the text and
// the JSON handlers.
package logattr

import (
	"log/slog"
	"time"
)

// Duration returns d as a string attribute ("1.97s"): slog's JSON handler
// writes a time.Duration value as nanoseconds, its text handler as
// "1.97s"; this reads as the latter in both. Safe for concurrent use.
func Duration(key string, d time.Duration) slog.Attr {
	return slog.String(key, d.String())
}
