package consul

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/lookaside-lb/lookaside/discovery"
)

// with returns a copy of e changed by the functions.
func with(e *api.ServiceEntry, fs ...func(*api.ServiceEntry)) *api.ServiceEntry {
	c := *e
	n, s := *e.Node, *e.Service
	c.Node, c.Service = &n, &s
	c.Checks = append(api.HealthChecks(nil), e.Checks...)
	for _, f := range fs {
		f(&c)
	}
	return &c
}

func weights(passing, warning int) func(*api.ServiceEntry) {
	return func(e *api.ServiceEntry) { e.Service.Weights = api.AgentWeights{Passing: passing, Warning: warning} }
}

func meta(kv ...string) func(*api.ServiceEntry) {
	return func(e *api.ServiceEntry) {
		e.Service.Meta = map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			e.Service.Meta[kv[i]] = kv[i+1]
		}
	}
}

// check adds a service check with the given status.
func check(status string) func(*api.ServiceEntry) {
	return func(e *api.ServiceEntry) {
		e.Checks = append(e.Checks, &api.HealthCheck{
			Node: e.Node.Node, CheckID: "service:" + e.Service.ID, Status: status, ServiceID: e.Service.ID,
		})
	}
}

func maintenance(e *api.ServiceEntry) {
	e.Checks = append(e.Checks, &api.HealthCheck{
		Node: e.Node.Node, CheckID: api.ServiceMaintPrefix + e.Service.ID, Status: api.HealthCritical,
	})
}

func epw(id, addr string, weight int, meta map[string]string) discovery.Endpoint {
	return discovery.Endpoint{ID: id, Addr: netip.MustParseAddrPort(addr), Weight: weight, Meta: meta}
}

func withInstance(e discovery.Endpoint, instance string) discovery.Endpoint {
	e.Instance = instance
	return e
}

func TestSnapshot(t *testing.T) {
	resolver := &fakeResolver{hosts: map[string][]netip.Addr{
		"one.example":    {netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")},
		"v6.example":     {netip.MustParseAddr("2001:db8::7")},
		"mapped.example": {netip.MustParseAddr("::ffff:192.0.2.9")},
		"empty.example":  {},
	}}
	tests := []struct {
		name           string
		includeWarning bool
		entries        []*api.ServiceEntry
		want           discovery.Snapshot
		wantWarnings   int
	}{
		{
			name: "no entries",
			want: discovery.Snapshot{Service: "svc", Index: 7},
		},
		{
			name: "service address, else node address",
			entries: []*api.ServiceEntry{
				entry("n1", "10.0.0.1", "b", "10.1.1.1", 80),
				entry("n2", "10.0.0.2", "a", "", 81),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("a", "10.0.0.2:81", 1, nil),
				epw("b", "10.1.1.1:80", 1, nil),
			}},
		},
		{
			name: "IPv6 literals",
			entries: []*api.ServiceEntry{
				entry("n1", "10.0.0.1", "a", "::1", 80),
				entry("n1", "10.0.0.1", "b", "2001:db8::1", 80),
				entry("n1", "10.0.0.1", "c", "[2001:db8::2]", 80),
				entry("n1", "10.0.0.1", "d", "fe80::1%eth0", 80),
				entry("n1", "10.0.0.1", "e", "::ffff:10.9.9.9", 80),
				entry("n1", "2001:db8::3", "f", "", 80),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("a", "[::1]:80", 1, nil),
				epw("b", "[2001:db8::1]:80", 1, nil),
				epw("c", "[2001:db8::2]:80", 1, nil),
				epw("d", "[fe80::1]:80", 1, nil),
				epw("e", "10.9.9.9:80", 1, nil),
				epw("f", "[2001:db8::3]:80", 1, nil),
			}},
		},
		{
			name: "hostnames are resolved, failures skipped",
			entries: []*api.ServiceEntry{
				entry("n1", "10.0.0.1", "a", "one.example", 80),
				entry("n1", "10.0.0.1", "b", "v6.example", 80),
				entry("n1", "10.0.0.1", "c", "mapped.example", 80),
				entry("n1", "10.0.0.1", "d", "nowhere.example", 80),
				entry("n1", "10.0.0.1", "e", "empty.example", 80),
				entry("node.example", "one.example", "f", "", 81),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("a", "192.0.2.1:80", 1, nil),
				epw("b", "[2001:db8::7]:80", 1, nil),
				epw("c", "192.0.2.9:80", 1, nil),
				epw("f", "192.0.2.1:81", 1, nil),
			}},
			wantWarnings: 2,
		},
		{
			name: "bad ports and missing fields are skipped",
			entries: []*api.ServiceEntry{
				entry("n1", "10.0.0.1", "a", "", 0),
				entry("n1", "10.0.0.1", "b", "", -1),
				entry("n1", "10.0.0.1", "c", "", 65536),
				entry("n1", "10.0.0.1", "d", "", 65535),
				entry("n1", "10.0.0.1", "e", "", 1),
				entry("n1", "", "f", "", 80),
				entry("n1", "10.0.0.1", "", "", 80),
				nil,
				{Node: &api.Node{Node: "n1"}},
				{Service: &api.AgentService{ID: "g", Address: "10.0.0.1", Port: 80}},
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("d", "10.0.0.1:65535", 1, nil),
				epw("e", "10.0.0.1:1", 1, nil),
			}},
			wantWarnings: 8,
		},
		{
			name: "weights",
			entries: []*api.ServiceEntry{
				with(entryA, weights(5, 1)),
				with(entry("n1", "10.0.0.1", "c", "", 80), weights(0, 0)),
				with(entry("n1", "10.0.0.1", "d", "", 80), weights(-3, 0)),
				with(entry("n1", "10.0.0.1", "e", "", 80), weights(20000, 0)),
				with(entry("n1", "10.0.0.1", "f", "", 80), weights(2, 1), meta(WeightMetaKey, "7")),
				with(entry("n1", "10.0.0.1", "g", "", 80), weights(2, 1), meta(WeightMetaKey, "0")),
				with(entry("n1", "10.0.0.1", "h", "", 80), weights(2, 1), meta(WeightMetaKey, "heavy")),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("a", "10.0.0.1:8080", 5, nil),
				epw("c", "10.0.0.1:80", 1, nil),
				epw("d", "10.0.0.1:80", 1, nil),
				epw("e", "10.0.0.1:80", MaxWeight, nil),
				epw("f", "10.0.0.1:80", 7, map[string]string{WeightMetaKey: "7"}),
				epw("g", "10.0.0.1:80", 2, map[string]string{WeightMetaKey: "0"}),
				epw("h", "10.0.0.1:80", 2, map[string]string{WeightMetaKey: "heavy"}),
			}},
			wantWarnings: 2,
		},
		{
			name: "passing only",
			entries: []*api.ServiceEntry{
				with(entryA, weights(5, 2), check(api.HealthPassing)),
				with(entryB, weights(5, 2), check(api.HealthWarning)),
				with(entry("n3", "10.0.0.3", "c", "", 80), check(api.HealthCritical)),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("a", "10.0.0.1:8080", 5, nil),
			}},
		},
		{
			name:           "warning included with its warning weight",
			includeWarning: true,
			entries: []*api.ServiceEntry{
				with(entryA, weights(5, 2), check(api.HealthPassing)),
				with(entryB, weights(5, 2), check(api.HealthWarning)),
				with(entry("n3", "10.0.0.3", "c", "", 80), weights(5, 0), check(api.HealthWarning)),
				with(entry("n3", "10.0.0.3", "d", "", 80), check(api.HealthWarning), check(api.HealthCritical)),
				with(entry("n3", "10.0.0.3", "e", "", 80), maintenance),
				with(entry("n3", "10.0.0.3", "f", "", 80), check("unknown")),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				epw("a", "10.0.0.1:8080", 5, nil),
				epw("b", "10.0.0.2:8080", 2, nil),
				epw("c", "10.0.0.3:80", 1, nil),
			}},
		},
		{
			name: "duplicate service IDs get the node name",
			entries: []*api.ServiceEntry{
				entry("n2", "10.0.0.2", "svc", "", 80),
				entry("n1", "10.0.0.1", "svc", "", 80),
				entry("n1", "10.0.0.1", "only", "", 81),
			},
			want: discovery.Snapshot{Service: "svc", Index: 7, Endpoints: []discovery.Endpoint{
				withInstance(epw("n1/svc", "10.0.0.1:80", 1, nil), "svc"),
				withInstance(epw("n2/svc", "10.0.0.2:80", 1, nil), "svc"),
				epw("only", "10.0.0.1:81", 1, nil),
			}},
		},
		{
			name: "meta, and the snapshot's is the first endpoint's",
			entries: []*api.ServiceEntry{
				with(entryB, meta("zone", "b")),
				with(entryA, meta("zone", "a", "version", "2")),
				with(entry("n3", "10.0.0.3", "c", "", 80), meta()),
			},
			want: discovery.Snapshot{
				Service: "svc", Index: 7,
				Meta: map[string]string{"zone": "a", "version": "2"},
				Endpoints: []discovery.Endpoint{
					epw("a", "10.0.0.1:8080", 1, map[string]string{"zone": "a", "version": "2"}),
					epw("b", "10.0.0.2:8080", 1, map[string]string{"zone": "b"}),
					epw("c", "10.0.0.3:80", 1, nil),
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness()
			cfg := testConfig(h)
			cfg.Resolver = resolver
			cfg.IncludeWarning = tt.includeWarning
			rec := &recorder{}
			cfg.Logger = slog.New(rec)
			s := newTestSource(t, h, cfg, 0.5)
			w := s.newConverter("svc")
			got, _, err := w.snapshot(context.Background(), tt.entries, 7)
			if err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpAddr); diff != "" {
				t.Errorf("snapshot mismatch (-want +got):\n%s", diff)
			}
			if warnings := rec.atLeast(slog.LevelWarn); len(warnings) != tt.wantWarnings {
				t.Errorf("got %d warnings, want %d: %q", len(warnings), tt.wantWarnings, warnings)
			}
		})
	}
}

func TestSnapshotResolvesEachHostOnce(t *testing.T) {
	h := newHarness()
	cfg := testConfig(h)
	r := &fakeResolver{hosts: map[string][]netip.Addr{"one.example": {netip.MustParseAddr("192.0.2.1")}}}
	cfg.Resolver = r
	s := newTestSource(t, h, cfg, 0.5)
	w := s.newConverter("svc")
	entries := []*api.ServiceEntry{
		entry("n1", "10.0.0.1", "a", "one.example", 80),
		entry("n1", "10.0.0.1", "b", "one.example", 81),
		entry("n1", "10.0.0.1", "c", "two.example", 80),
		entry("n1", "10.0.0.1", "d", "two.example", 81),
	}
	if _, _, err := w.snapshot(context.Background(), entries, 1); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"one.example": 1, "two.example": 1}, r.calls); diff != "" {
		t.Errorf("lookups mismatch (-want +got):\n%s", diff)
	}
}

func TestSnapshotCancelled(t *testing.T) {
	h := newHarness()
	cfg := testConfig(h)
	s := newTestSource(t, h, cfg, 0.5)
	w := s.newConverter("svc")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := w.snapshot(ctx, []*api.ServiceEntry{entry("n1", "10.0.0.1", "a", "host.example", 80)}, 1); err != context.Canceled {
		t.Errorf("snapshot with a cancelled context: err = %v, want %v", err, context.Canceled)
	}
}

func TestValidateServiceName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"user-srv", true},
		{"User_Srv.v2:grpc", true},
		{"ünïcode", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{strings.Repeat("a", 256), false},
		{"a/b", false},
		{"../x", false},
		{"a?b", false},
		{"a#b", false},
		{"a b", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a\u00a0b", false},
		{"a\x7fb", false},
		{"a\x00b", false},
		{"\xff", false},
	}
	for _, tt := range tests {
		err := ValidateServiceName(tt.name)
		if gotOK := err == nil; gotOK != tt.ok {
			t.Errorf("ValidateServiceName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
