package static

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"

	"github.com/lookaside-lb/lookaside/discovery"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testTimeout = 10 * time.Second

var cmpAddr = cmpopts.EquateComparable(netip.AddrPort{})

func ep(id, addr string, weight int, meta map[string]string) discovery.Endpoint {
	return discovery.Endpoint{ID: id, Addr: netip.MustParseAddrPort(addr), Weight: weight, Meta: meta}
}

func TestParseSpec(t *testing.T) {
	tests := []struct {
		spec    string
		want    map[string][]discovery.Endpoint
		wantErr string // substring
	}{
		{
			spec: "user-srv=127.0.0.1:50051,127.0.0.1:50052*3;other=[::1]:9000",
			want: map[string][]discovery.Endpoint{
				"user-srv": {
					ep("user-srv-127.0.0.1:50051", "127.0.0.1:50051", 1, nil),
					ep("user-srv-127.0.0.1:50052", "127.0.0.1:50052", 3, nil),
				},
				"other": {ep("other-[::1]:9000", "[::1]:9000", 1, nil)},
			},
		},
		{spec: "", want: map[string][]discovery.Endpoint{}},
		{spec: " ; ", want: map[string][]discovery.Endpoint{}},
		{
			spec: " a = 10.0.0.2:1 * 2 , [::ffff:10.0.0.1]:65535 ,; ",
			want: map[string][]discovery.Endpoint{"a": {
				ep("a-10.0.0.1:65535", "10.0.0.1:65535", 1, nil),
				ep("a-10.0.0.2:1", "10.0.0.2:1", 2, nil),
			}},
		},
		{
			spec: "a=[2001:DB8:0::1]:80*10000",
			want: map[string][]discovery.Endpoint{"a": {ep("a-[2001:db8::1]:80", "[2001:db8::1]:80", 10000, nil)}},
		},
		{spec: "a", wantErr: "name=addr"},
		{spec: "=10.0.0.1:80", wantErr: "empty service name"},
		{spec: "a b=10.0.0.1:80", wantErr: "not allowed"},
		{spec: "a/b=10.0.0.1:80", wantErr: "not allowed"},
		{spec: "a=", wantErr: "no address"},
		{spec: "a=,", wantErr: "no address"},
		{spec: "a=10.0.0.1:80;a=10.0.0.2:80", wantErr: "twice"},
		{spec: "a=10.0.0.1:80,10.0.0.1:80*2", wantErr: "twice"},
		{spec: "a=[::ffff:10.0.0.1]:80,10.0.0.1:80", wantErr: "twice"},
		{spec: "a=10.0.0.1", wantErr: `"10.0.0.1"`},
		{spec: "a=localhost:80", wantErr: "IP literal"},
		{spec: "a=::1:80", wantErr: "IP literal"},
		{spec: "a=10.0.0.1:0", wantErr: "port 0"},
		{spec: "a=10.0.0.1:65536", wantErr: "IP literal"},
		{spec: "a=[fe80::1%eth0]:80", wantErr: "zones"},
		{spec: "a=10.0.0.1:80*0", wantErr: "weight 0 out of range"},
		{spec: "a=10.0.0.1:80*10001", wantErr: "weight 10001 out of range"},
		{spec: "a=10.0.0.1:80*-1", wantErr: "out of range"},
		{spec: "a=10.0.0.1:80*x", wantErr: "not a number"},
		{spec: "a=10.0.0.1:80*", wantErr: "not a number"},
	}
	for _, tt := range tests {
		got, err := ParseSpec(tt.spec)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSpec(%q) error = %v, want one containing %q", tt.spec, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tt.spec, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
			t.Errorf("ParseSpec(%q) mismatch (-want +got):\n%s", tt.spec, diff)
		}
	}
}

func TestLoadFile(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    map[string][]discovery.Endpoint
		wantErr []string // substrings
	}{
		{
			name: "full",
			json: `{"services": {
				"user-srv": [
					{"id": "u2", "addr": "127.0.0.1:50052"},
					{"id": "u1", "addr": "127.0.0.1:50051", "weight": 2, "meta": {"k": "v"}},
					{"addr": "[::1]:50053", "weight": null, "meta": {}}
				],
				"empty": []
			}}`,
			want: map[string][]discovery.Endpoint{
				"user-srv": {
					ep("u1", "127.0.0.1:50051", 2, map[string]string{"k": "v"}),
					ep("u2", "127.0.0.1:50052", 1, nil),
					ep("user-srv-[::1]:50053", "[::1]:50053", 1, nil),
				},
				"empty": {},
			},
		},
		{name: "no services", json: `{"services": {}}`, want: map[string][]discovery.Endpoint{}},
		{name: "missing services", json: `{}`, wantErr: []string{`no "services"`}},
		{name: "null services", json: `{"services": null}`, wantErr: []string{`no "services"`}},
		{name: "empty file", json: ``, wantErr: []string{"empty file"}},
		{name: "syntax", json: "{\"services\": {\n  \"a\": [,]}}", wantErr: []string{"line 2, column 9", "invalid character"}},
		{name: "trailing data", json: `{"services": {}} {}`, wantErr: []string{"data after"}},
		{name: "unknown top-level field", json: `{"services": {}, "extra": 1}`, wantErr: []string{`unknown field "extra"`}},
		{
			name:    "unknown entry field",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:80", "port": 80}]}}`,
			wantErr: []string{`services["a"][0]`, `unknown field "port"`},
		},
		{
			name:    "wrong type",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:80", "weight": "2"}]}}`,
			wantErr: []string{`services["a"][0]`, `"weight": want an integer, got string`},
		},
		{
			name:    "wrong meta type",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:80", "meta": {"k": 1}}]}}`,
			wantErr: []string{`services["a"][0]`, `"meta": want a string, got number`},
		},
		{
			name:    "services not an object",
			json:    `{"services": []}`,
			wantErr: []string{"line 1, column 14", `"services": want an object, got array`},
		},
		{
			name:    "entries not a list",
			json:    `{"services": {"a": {}}}`,
			wantErr: []string{"line 1, column 20", `"services": want an array, got object`},
		},
		{name: "bad name", json: `{"services": {"a b": []}}`, wantErr: []string{`"a b"`, "not allowed"}},
		{
			name:    "missing addr",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:80"}, {"id": "x"}]}}`,
			wantErr: []string{`services["a"][1] (id "x")`, `no "addr"`},
		},
		{
			name:    "hostname",
			json:    `{"services": {"a": [{"addr": "localhost:80"}]}}`,
			wantErr: []string{`services["a"][0]`, `"localhost:80"`, "IP literal"},
		},
		{
			name:    "port 0",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:0"}]}}`,
			wantErr: []string{`services["a"][0]`, "port 0"},
		},
		{
			name:    "weight 0",
			json:    `{"services": {"a": [{"id": "w", "addr": "10.0.0.1:80", "weight": 0}]}}`,
			wantErr: []string{`services["a"][0] (id "w")`, "weight 0 out of range"},
		},
		{
			name:    "weight too large",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:80", "weight": 10001}]}}`,
			wantErr: []string{"weight 10001 out of range"},
		},
		{
			name:    "duplicate id",
			json:    `{"services": {"a": [{"id": "x", "addr": "10.0.0.1:80"}, {"id": "x", "addr": "10.0.0.2:80"}]}}`,
			wantErr: []string{`services["a"][1] (id "x")`, `already used in service "a"`},
		},
		{
			name:    "duplicate default id",
			json:    `{"services": {"a": [{"addr": "10.0.0.1:80"}, {"addr": "10.0.0.1:80"}]}}`,
			wantErr: []string{`services["a"][1]`, `"a-10.0.0.1:80" is already used`},
		},
		{
			name:    "duplicate id across services",
			json:    `{"services": {"b": [{"id": "x", "addr": "10.0.0.1:80"}], "a": [{"id": "x", "addr": "10.0.0.2:80"}]}}`,
			wantErr: []string{`services["b"][0] (id "x")`, `already used in service "a"`},
		},
		{
			name:    "id with blanks",
			json:    `{"services": {"a": [{"id": " x", "addr": "10.0.0.1:80"}]}}`,
			wantErr: []string{"blanks"},
		},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "services-"+string(rune('a'+i))+".json")
			if err := os.WriteFile(path, []byte(tt.json), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadFile(path)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("LoadFile = %v, want an error", got)
				}
				for _, sub := range append(tt.wantErr, path) {
					if !strings.Contains(err.Error(), sub) {
						t.Errorf("LoadFile error %q does not contain %q", err, sub)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadFile: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("LoadFile mismatch (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("LoadFile of a missing file: error %v", err)
	}
}

// watch runs Watch until it has published once, checks that it keeps
// blocking, cancels it and returns what it published.
func watch(t *testing.T, s *Source, service string) []discovery.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	published := make(chan discovery.Snapshot, 10)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, service, func(snap discovery.Snapshot) { published <- snap }) }()
	var got []discovery.Snapshot
	select {
	case snap := <-published:
		got = append(got, snap)
	case err := <-done:
		t.Fatalf("Watch returned %v before publishing", err)
	case <-ctx.Done():
		t.Fatal("Watch published nothing")
	}
	select {
	case err := <-done:
		t.Fatalf("Watch returned %v before its context was done", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Watch returned %v, want %v", err, context.Canceled)
	}
	for len(published) > 0 {
		got = append(got, <-published)
	}
	return got
}

func TestWatch(t *testing.T) {
	meta := map[string]string{"k": "v"}
	input := map[string][]discovery.Endpoint{
		"a": {
			ep("a2", "10.0.0.2:80", 0, nil),
			ep("a1", "10.0.0.1:80", 3, meta),
			ep("a1", "10.0.0.9:80", 1, nil),
			ep("a3", "10.0.0.3:80", 20000, map[string]string{}),
		},
		"empty": nil,
	}
	s := New(input)
	// New copied its input.
	input["a"][0].ID = "changed"
	meta["k"] = "changed"

	tests := []struct {
		service string
		want    discovery.Snapshot
	}{
		{service: "a", want: discovery.Snapshot{Service: "a", Endpoints: []discovery.Endpoint{
			ep("a1", "10.0.0.1:80", 3, map[string]string{"k": "v"}),
			ep("a2", "10.0.0.2:80", 1, nil),
			ep("a3", "10.0.0.3:80", MaxWeight, nil),
		}}},
		{service: "empty", want: discovery.Snapshot{Service: "empty"}},
		{service: "unknown", want: discovery.Snapshot{Service: "unknown"}},
		{service: "a@srv", want: discovery.Snapshot{Service: "a@srv"}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			got := watch(t, s, tt.service)
			if diff := cmp.Diff([]discovery.Snapshot{tt.want}, got, cmpAddr); diff != "" {
				t.Errorf("published mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWatchFromSpec(t *testing.T) {
	services, err := ParseSpec("user-srv=127.0.0.1:50051,127.0.0.1:50052*3")
	if err != nil {
		t.Fatal(err)
	}
	got := watch(t, New(services), "user-srv")
	want := []discovery.Snapshot{{Service: "user-srv", Endpoints: []discovery.Endpoint{
		ep("user-srv-127.0.0.1:50051", "127.0.0.1:50051", 1, nil),
		ep("user-srv-127.0.0.1:50052", "127.0.0.1:50052", 3, nil),
	}}}
	if diff := cmp.Diff(want, got, cmpAddr); diff != "" {
		t.Errorf("published mismatch (-want +got):\n%s", diff)
	}
}

func TestWatchErrors(t *testing.T) {
	s := New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := s.Watch(ctx, "", func(discovery.Snapshot) {}); err == nil {
		t.Error("Watch of an empty name: nil error")
	}
	if err := s.Watch(ctx, "a", nil); err == nil {
		t.Error("Watch with a nil publish: nil error")
	}
	cancel()
	published := false
	if err := s.Watch(ctx, "a", func(discovery.Snapshot) { published = true }); !errors.Is(err, context.Canceled) || published {
		t.Errorf("Watch with a done context: err %v, published %v; want %v and nothing", err, published, context.Canceled)
	}
}

func TestDirectoryAndCase(t *testing.T) {
	ep := discovery.Endpoint{ID: "a", Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1}
	s := New(map[string][]discovery.Endpoint{"User-Srv": {ep}})
	for _, tc := range []struct {
		name   string
		exists bool
	}{{"user-srv", true}, {"USER-SRV", true}, {"other", false}, {"user-srv@tag", false}} {
		exists, ready, changed := s.Lookup(tc.name)
		if exists != tc.exists || !ready || changed == nil {
			t.Errorf("Lookup(%q) = %v, %v, %v; want %v, true, a channel", tc.name, exists, ready, changed, tc.exists)
		}
	}
	got := watch(t, s, "USER-srv")
	want := []discovery.Snapshot{{Service: "USER-srv", Endpoints: []discovery.Endpoint{ep}}}
	if diff := cmp.Diff(want, got, cmpAddr); diff != "" {
		t.Errorf("Watch in another case (-want +got):\n%s", diff)
	}
}
