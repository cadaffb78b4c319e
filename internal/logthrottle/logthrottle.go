// Package logthrottle bounds the log lines that clients can trigger: at most
// one line per kind per interval, with a count of the lines suppressed since
// the last one, and client-supplied strings truncated and quoted.
package logthrottle

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// MaxQuoted is the longest client-supplied string Quote keeps, in bytes.
const MaxQuoted = 64

// Quote returns s as a Go-quoted string, truncated to MaxQuoted bytes (at a
// rune boundary) with "…" and the full length appended when cut, so that a
// client's name or token can neither flood a log nor forge a line. Safe for
// concurrent use.
func Quote(s string) string {
	if len(s) <= MaxQuoted {
		return strconv.Quote(s)
	}
	cut := MaxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// Logger writes at most one line per kind per Interval; the lines it holds
// back are counted and reported as "suppressed" on the next line of their
// kind. A kind is a message (fixed strings chosen by the code, never
// client-supplied) and, for LogKey, a key the caller bounds (a watched
// service); the table holds at most MaxKinds, pruned of kinds idle for an
// interval when full. The zero value is not usable; call New. Safe for
// concurrent use.
type Logger struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	kinds map[kindKey]*kind // guarded by mu
}

type kindKey struct{ key, msg string }

// MaxKinds bounds a Logger's table: past it, kinds idle for an interval
// are forgotten, and if none is, a line of a new kind is not written.
const MaxKinds = 1 << 16

type kind struct {
	last       time.Time
	suppressed int64
}

// New returns a Logger writing to log at most one line per message per
// interval.
func New(log *slog.Logger, interval time.Duration) *Logger {
	return &Logger{log: log, interval: interval, now: time.Now, kinds: map[kindKey]*kind{}}
}

// Log writes msg at level with args unless a line with the same msg was
// written less than the interval ago, in which case it only counts it.
// A line written after suppressed ones carries "suppressed" with their
// count. It returns whether the line was written.
func (l *Logger) Log(ctx context.Context, level slog.Level, msg string, args ...any) bool {
	return l.LogKey(ctx, level, "", msg, args...)
}

// LogKey is Log with kinds told apart by key as well as by msg: at most
// one line per key and msg per interval (a service's "no passing
// instance" does not hide another's). The caller bounds the keys.
func (l *Logger) LogKey(ctx context.Context, level slog.Level, key, msg string, args ...any) bool {
	if !l.log.Enabled(ctx, level) {
		return false
	}
	now := l.now()
	l.mu.Lock()
	kk := kindKey{key, msg}
	k := l.kinds[kk]
	if k == nil {
		if len(l.kinds) >= MaxKinds {
			for old, e := range l.kinds {
				if now.Sub(e.last) >= l.interval {
					delete(l.kinds, old)
				}
			}
			if len(l.kinds) >= MaxKinds {
				l.mu.Unlock()
				return false
			}
		}
		k = &kind{}
		l.kinds[kk] = k
	}
	if !k.last.IsZero() && now.Sub(k.last) < l.interval {
		k.suppressed++
		l.mu.Unlock()
		return false
	}
	k.last = now
	n := k.suppressed
	k.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Log(ctx, level, msg, args...)
	return true
}

// Info logs at INFO; see Log.
func (l *Logger) Info(msg string, args ...any) {
	l.Log(context.Background(), slog.LevelInfo, msg, args...)
}

// Warn logs at WARN; see Log.
func (l *Logger) Warn(msg string, args ...any) {
	l.Log(context.Background(), slog.LevelWarn, msg, args...)
}

// Error logs at ERROR; see Log.
func (l *Logger) Error(msg string, args ...any) {
	l.Log(context.Background(), slog.LevelError, msg, args...)
}

// SetNow replaces the clock the intervals are measured with (a seam for
// tests). Call it before the Logger is used.
func (l *Logger) SetNow(now func() time.Time) { l.now = now }
