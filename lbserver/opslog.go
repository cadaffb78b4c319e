package lbserver

import (
	"context"
	"log/slog"
	"time"

	"github.com/lookaside-lb/lookaside/internal/logthrottle"
)

// serviceLog writes what an operator must hear of at INFO, at most once
// per interval per service and message: a service that is unknown, has no
// passing instance, or is answered with fallback. A line written after
// suppressed ones carries their count. Messages are fixed strings; the
// services are bounded by the caller (watched services, or one key for
// all unknown names), and the table by logthrottle.MaxKinds. Safe for
// concurrent use.
type serviceLog struct{ *logthrottle.Logger }

func newServiceLog(log *slog.Logger, interval time.Duration) *serviceLog {
	return &serviceLog{logthrottle.New(log, interval)}
}

// info logs msg with args at INFO unless it was logged for service less
// than the interval ago, and reports whether it did.
func (l *serviceLog) info(service, msg string, args ...any) bool {
	return l.LogKey(context.Background(), slog.LevelInfo, service, msg, args...)
}
