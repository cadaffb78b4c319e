package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// FieldError is one rejected value: where it is and why.
type FieldError struct {
	// File is the file the value came from (Load), or "".
	File string
	// Line is the value's line in the file (Parse and Load errors), or 0
	// (Validate errors, which concern the decoded tree).
	Line int
	// Path is the value's YAML path: "limits.max_streams_per_ip",
	// "services.user-srv.rate_limit", "dns.allow[1]"; "" for the whole
	// file.
	Path string
	// Value is the value as written: strings quoted, durations as in the
	// file ("2m"), numbers bare; "" when the error concerns no one value.
	Value string
	// Msg says what is wrong and what is accepted.
	Msg string
}

// Error formats e as "[file:][line N: ]path: value msg".
func (e FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	if e.Value != "" {
		b.WriteString(e.Value)
		b.WriteString(" ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every rejected value of a file or a Config, sorted by line and
// then by path. Parse, Load and Validate return it (as error) when there
// is at least one.
type Errors []FieldError

// Error lists the errors, one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the errors one by one, for errors.As and errors.Is.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sorted returns es sorted by line, path and message, or nil if empty.
func (es Errors) sorted() error {
	if len(es) == 0 {
		return nil
	}
	slices.SortStableFunc(es, func(a, b FieldError) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), comparePaths(a.Path, b.Path), cmp.Compare(a.Msg, b.Msg))
	})
	return es
}

// comparePaths orders paths as strings, except that list indexes compare
// as numbers ("dns.allow[2]" before "dns.allow[10]").
func comparePaths(a, b string) int {
	for a != "" && b != "" {
		ia, ib := strings.IndexByte(a, '['), strings.IndexByte(b, '[')
		if ia < 0 || ib < 0 || a[:ia] != b[:ib] {
			return cmp.Compare(a, b)
		}
		a, b = a[ia+1:], b[ib+1:]
		ea, eb := strings.IndexByte(a, ']'), strings.IndexByte(b, ']')
		if ea < 0 || eb < 0 {
			return cmp.Compare(a, b)
		}
		if c := cmp.Or(cmp.Compare(ea, eb), cmp.Compare(a[:ea], b[:eb])); c != 0 {
			return c
		}
		a, b = a[ea+1:], b[eb+1:]
	}
	return cmp.Compare(a, b)
}
