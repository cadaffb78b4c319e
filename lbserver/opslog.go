package lbserver

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// serviceLog writes what an operator must hear of at INFO, at most once
// per interval per service and message: a service that is unknown, has no
// passing instance, or is answered with fallback. A line written after
// suppressed ones carries their count. Messages are fixed strings; the
// services are bounded by the caller (watched services, or one key for
// all unknown names), and the table is pruned of entries older than the
// interval when it grows past maxServiceLogKeys. Safe for concurrent use.
type serviceLog struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	last map[serviceLogKey]*serviceLogEntry // guarded by mu
}

type serviceLogKey struct{ service, msg string }

type serviceLogEntry struct {
	at         time.Time
	suppressed int64
}

// maxServiceLogKeys bounds the table of serviceLog; past it, old entries
// are pruned, and if none is old enough a new key is not logged.
const maxServiceLogKeys = 1 << 16

func newServiceLog(log *slog.Logger, interval time.Duration) *serviceLog {
	return &serviceLog{log: log, interval: interval, now: time.Now, last: map[serviceLogKey]*serviceLogEntry{}}
}

// info logs msg with args at INFO unless it was logged for service less
// than the interval ago, and reports whether it did.
func (l *serviceLog) info(service, msg string, args ...any) bool {
	if !l.log.Enabled(context.Background(), slog.LevelInfo) {
		return false
	}
	k := serviceLogKey{service, msg}
	now := l.now()
	l.mu.Lock()
	e := l.last[k]
	if e == nil {
		if len(l.last) >= maxServiceLogKeys {
			for key, old := range l.last {
				if now.Sub(old.at) >= l.interval {
					delete(l.last, key)
				}
			}
			if len(l.last) >= maxServiceLogKeys {
				l.mu.Unlock()
				return false
			}
		}
		e = &serviceLogEntry{}
		l.last[k] = e
	} else if now.Sub(e.at) < l.interval {
		e.suppressed++
		l.mu.Unlock()
		return false
	}
	e.at = now
	n := e.suppressed
	e.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Info(msg, args...)
	return true
}
