package logattr

import (
	"context"
	"log/slog"
	"slices"
)

// ReplaceDuration is a slog.HandlerOptions.ReplaceAttr that writes every
// time.Duration value as Duration does ("1.97s"), so that JSON logs read
// like text logs wherever a duration is logged.
func ReplaceDuration(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

// Unique wraps h so that each key appears once in a line: an attribute
// added with Logger.With replaces an earlier one of the same key (a
// package that tags its logger component=loadreport under a caller's
// component=lbserver logs component=loadreport only), and an attribute of
// the log call wins over the logger's. Groups are passed through: attributes
// before a group are kept as they are. Safe for concurrent use.
func Unique(h slog.Handler) slog.Handler { return &unique{inner: h} }

type unique struct {
	inner slog.Handler
	attrs []slog.Attr // the logger's, each key once, in order of first use
}

func (u *unique) Enabled(ctx context.Context, l slog.Level) bool { return u.inner.Enabled(ctx, l) }

func (u *unique) WithAttrs(as []slog.Attr) slog.Handler {
	merged := slices.Clone(u.attrs)
	for _, a := range as {
		if i := slices.IndexFunc(merged, func(m slog.Attr) bool { return m.Key == a.Key }); i >= 0 {
			merged[i] = a
		} else {
			merged = append(merged, a)
		}
	}
	return &unique{inner: u.inner, attrs: merged}
}

func (u *unique) WithGroup(name string) slog.Handler {
	if name == "" {
		return u
	}
	return &unique{inner: u.inner.WithAttrs(u.attrs).WithGroup(name)}
}

func (u *unique) Handle(ctx context.Context, r slog.Record) error {
	if len(u.attrs) == 0 {
		return u.inner.Handle(ctx, r)
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	own := make(map[string]bool, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool { own[a.Key] = true; return true })
	for _, a := range u.attrs {
		if !own[a.Key] {
			out.AddAttrs(a)
		}
	}
	r.Attrs(func(a slog.Attr) bool { out.AddAttrs(a); return true })
	return u.inner.Handle(ctx, out)
}
