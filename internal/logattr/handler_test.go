package logattr

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestUniqueKeysInJSON(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(Unique(slog.NewJSONHandler(&b, &slog.HandlerOptions{ReplaceAttr: ReplaceDuration})))
	log = log.With("component", "lbserver", "service", "a").With("component", "loadreport")
	log.Info("report", "service", "b", "retry_in", 1970*time.Millisecond)
	line := b.String()
	if n := strings.Count(line, `"component"`); n != 1 {
		t.Errorf("component %d times in %s", n, line)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatal(err)
	}
	if m["component"] != "loadreport" || m["service"] != "b" || m["retry_in"] != "1.97s" {
		t.Errorf("line %s: want component=loadreport, service=b (the call's), retry_in=1.97s", line)
	}
	if n := strings.Count(line, `"service"`); n != 1 {
		t.Errorf("service %d times in %s", n, line)
	}
}

func TestUniqueGroups(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(Unique(slog.NewTextHandler(&b, nil))).With("component", "x").WithGroup("g").With("k", 1)
	log.Info("m", "v", 2)
	if got := b.String(); !strings.Contains(got, "component=x g.k=1 g.v=2") {
		t.Errorf("got %q", got)
	}
}
