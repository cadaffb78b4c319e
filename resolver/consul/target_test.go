package consul

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// defaults is the Target of "consul://127.0.0.1:8500/user-srv".
func defaults() Target {
	return Target{
		Addr:       "127.0.0.1:8500",
		Service:    "user-srv",
		Healthy:    true,
		Near:       "_agent",
		Wait:       5 * time.Minute,
		Timeout:    10 * time.Second,
		MaxBackoff: 30 * time.Second,
		LB:         true,
		LBService:  "lookaside",
	}
}

func TestParseTarget(t *testing.T) {
	const base = "consul://127.0.0.1:8500/user-srv"
	tests := []struct {
		target string
		change func(*Target)
	}{
		{base, func(*Target) {}},
		// The seed's target.
		{base + "?wait=14s&tag=srv", func(t *Target) { t.Wait = 14 * time.Second; t.Tags = []string{"srv"} }},
		// Authority.
		{"consul:///user-srv", func(t *Target) { t.Addr = "" }},
		{"consul://consul.internal/user-srv", func(t *Target) { t.Addr = "consul.internal" }},
		{"consul://[::1]:8500/user-srv", func(t *Target) { t.Addr = "[::1]:8500" }},
		{"consul://alice:s3cret@127.0.0.1:8500/user-srv", func(t *Target) { t.User, t.Password = "alice", "s3cret" }},
		{"consul://alice@127.0.0.1:8500/user-srv", func(t *Target) { t.User = "alice" }},
		// A trailing slash, as in "/%s/?wait=14s".
		{base + "/?wait=14s", func(t *Target) { t.Wait = 14 * time.Second }},
		// Tags: repeated, comma-separated, deduplicated, empty ones ignored.
		{base + "?tag=a&tag=b,c&tag=a", func(t *Target) { t.Tags = []string{"a", "b", "c"} }},
		{base + "?tag=", func(*Target) {}},
		{base + "?tag=a,,b,", func(t *Target) { t.Tags = []string{"a", "b"} }},
		// Every other parameter.
		{base + "?healthy=false", func(t *Target) { t.Healthy = false }},
		{base + "?healthy=true", func(*Target) {}},
		{base + "?healthy=1", func(*Target) {}},
		{base + "?near=node-7", func(t *Target) { t.Near = "node-7" }},
		{base + "?near=", func(*Target) {}},
		{base + "?limit=3", func(t *Target) { t.Limit = 3 }},
		{base + "?limit=0", func(*Target) {}},
		{base + "?wait=10m", func(t *Target) { t.Wait = 10 * time.Minute }},
		{base + "?timeout=1m30s", func(t *Target) { t.Timeout = 90 * time.Second }},
		{base + "?max-backoff=1s", func(t *Target) { t.MaxBackoff = time.Second }},
		{base + "?token=abc-123", func(t *Target) { t.Token = "abc-123" }},
		{base + "?dc=eu-west", func(t *Target) { t.Datacenter = "eu-west" }},
		{base + "?allow-stale=true", func(t *Target) { t.AllowStale = true }},
		{base + "?require-consistent=true", func(t *Target) { t.RequireConsistent = true }},
		{base + "?allow-stale=false&require-consistent=true", func(t *Target) { t.RequireConsistent = true }},
		{base + "?insecure=true", func(t *Target) { t.Insecure = true }},
		{base + "?lb=off", func(t *Target) { t.LB = false }},
		{base + "?lb=false", func(t *Target) { t.LB = false }},
		{base + "?lb=ON", func(*Target) {}},
		{base + "?lb-service=lookaside-eu", func(t *Target) { t.LBService = "lookaside-eu" }},
		// Escapes are decoded.
		{"consul://127.0.0.1:8500/user%2Dsrv?tag=a%2Cb", func(t *Target) { t.Tags = []string{"a", "b"} }},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			got, err := ParseTarget(tt.target)
			if err != nil {
				t.Fatalf("ParseTarget: %v", err)
			}
			want := defaults()
			tt.change(&want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ParseTarget (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseTargetErrors(t *testing.T) {
	const base = "consul://127.0.0.1:8500/user-srv"
	tests := []struct {
		target string
		want   []string // substrings of the error, by meaning
	}{
		{"dns:///user-srv", []string{"scheme"}},
		{"consul:user-srv", []string{"want consul://"}},
		{"consul://127.0.0.1:8500", []string{"service name is empty"}},
		{"consul://127.0.0.1:8500/", []string{"service name is empty"}},
		{"consul://127.0.0.1:8500//user-srv", []string{"contains '/'"}},
		{"consul://127.0.0.1:8500/a/b", []string{"contains '/'"}},
		{"consul://127.0.0.1:8500/user%20srv", []string{"contains ' '"}},
		{"consul://127.0.0.1:8500/user-srv:50051", []string{"contains ':'"}},
		{"consul://127.0.0.1:8500/" + strings.Repeat("a", 256), []string{"longer than 255"}},
		{"consul://127.0.0.1:8500/%ff", []string{"UTF-8"}},
		{"consul://127.0.0.1:bad/user-srv", []string{"invalid port"}},
		{base + "?tga=srv", []string{"tga", "unknown", "tag, healthy"}},
		{base + "?wait=14s&wait=15s", []string{"wait", "given 2 times"}},
		{base + "?wait=14", []string{"wait", "duration"}},
		{base + "?wait=0s", []string{"wait", "not in (0, 10m0s]"}},
		{base + "?wait=-1s", []string{"wait", "not in"}},
		{base + "?wait=11m", []string{"wait", "not in"}},
		{base + "?timeout=soon", []string{"timeout", "duration"}},
		{base + "?timeout=0s", []string{"timeout", "not in"}},
		{base + "?max-backoff=0s", []string{"max-backoff", "not in"}},
		{base + "?max-backoff=1h", []string{"max-backoff", "not in"}},
		{base + "?healthy=yes", []string{"healthy", "true or false"}},
		{base + "?healthy=", []string{"healthy", "true or false"}},
		{base + "?allow-stale=maybe", []string{"allow-stale", "true or false"}},
		{base + "?require-consistent=2", []string{"require-consistent", "true or false"}},
		{base + "?insecure=on", []string{"insecure", "true or false"}},
		{base + "?limit=-1", []string{"limit", "whole number"}},
		{base + "?limit=ten", []string{"limit", "whole number"}},
		{base + "?dc=eu%20west", []string{"dc", "datacenter"}},
		{base + "?lb=maybe", []string{"lb", "on or off"}},
		{base + "?lb-service=", []string{"lb-service", "empty"}},
		{base + "?lb-service=lb/x", []string{"lb-service", "contains '/'"}},
		{base + "?allow-stale=true&require-consistent=true", []string{"exclude each other"}},
		{base + "?wait=%zz", []string{"parameters", "invalid URL escape"}},
		// Every problem is reported.
		{base + "?wait=x&limit=y", []string{"wait", "limit"}},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			got, err := ParseTarget(tt.target)
			if err == nil {
				t.Fatalf("ParseTarget = %+v, want an error", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestSecretsRedacted: neither the password nor the token appears in
// String or in errors.
func TestSecretsRedacted(t *testing.T) {
	tg, err := ParseTarget("consul://alice:s3cret@127.0.0.1:8500/user-srv?token=t0ken&tag=srv&lb=off")
	if err != nil {
		t.Fatal(err)
	}
	s := tg.String()
	if strings.Contains(s, "s3cret") || strings.Contains(s, "t0ken") {
		t.Errorf("String() = %q reveals a secret", s)
	}
	if want := "consul://alice:redacted@127.0.0.1:8500/user-srv?lb=off&tag=srv&token=redacted"; s != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
	for _, bad := range []string{
		"consul://alice:s3cret@127.0.0.1:8500/user-srv?token=t0ken&wait=x",
		"consul://alice:s3cret@127.0.0.1:bad/user-srv?token=t0ken",
		"http://alice:s3cret@127.0.0.1:8500/user-srv?token=t0ken",
	} {
		_, err := ParseTarget(bad)
		if err == nil || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "t0ken") {
			t.Errorf("ParseTarget(%q) error %v: want an error without secrets", bad, err)
		}
	}
}

// TestStringRoundTrip: String gives a target that parses to the same
// Target, secrets aside.
func TestStringRoundTrip(t *testing.T) {
	for _, s := range []string{
		"consul://127.0.0.1:8500/user-srv",
		"consul:///user-srv?tag=a&tag=b&healthy=false&near=n1&limit=2&wait=14s&timeout=3s&max-backoff=2s&dc=dc2&allow-stale=true&insecure=true&lb=off&lb-service=lb2",
		"consul://h/user-srv?require-consistent=true",
	} {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseTarget(tg.String())
		if err != nil {
			t.Fatalf("ParseTarget(%q): %v", tg.String(), err)
		}
		if diff := cmp.Diff(tg, again); diff != "" {
			t.Errorf("%s: round trip (-want +got):\n%s", s, diff)
		}
	}
}
