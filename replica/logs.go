package replica

import (
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/logattr"
)

// NewLogger returns the logger cfg describes, writing to w, and the level
// variable that Reload changes. Each key appears once in a line and
// durations read "1.97s" in both formats (see internal/logattr). Errors
// name the field.
func NewLogger(cfg config.Log, w io.Writer) (*slog.Logger, *slog.LevelVar, error) {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(cfg.Level)); err != nil {
		return nil, nil, fmt.Errorf("log.level %q: want debug, info, warn or error", cfg.Level)
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: logattr.ReplaceDuration}
	switch cfg.Format {
	case "text", "":
		return slog.New(logattr.Unique(slog.NewTextHandler(w, opts))), level, nil
	case "json":
		return slog.New(logattr.Unique(slog.NewJSONHandler(w, opts))), level, nil
	}
	return nil, nil, fmt.Errorf("log.format %q: want text or json", cfg.Format)
}

var stderr io.Writer = os.Stderr
