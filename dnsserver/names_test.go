package dnsserver

import (
	"net/netip"
	"strings"
	"testing"
)

func TestTargetLabel(t *testing.T) {
	tests := []struct{ ip, label string }{
		{"10.0.0.5", "10-0-0-5"},
		{"127.0.0.1", "127-0-0-1"},
		{"::ffff:10.0.0.5", "10-0-0-5"},
		{"::1", "0000-0000-0000-0000-0000-0000-0000-0001"},
		{"2001:db8::5", "2001-0db8-0000-0000-0000-0000-0000-0005"},
		{"fe80::1%eth0", "fe80-0000-0000-0000-0000-0000-0000-0001"},
	}
	for _, tc := range tests {
		ip := netip.MustParseAddr(tc.ip)
		got := targetLabel(ip)
		if got != tc.label {
			t.Errorf("targetLabel(%s) = %q, want %q", tc.ip, got, tc.label)
		}
		back, ok := parseTargetLabel(got)
		if want := ip.Unmap().WithZone(""); !ok || back != want {
			t.Errorf("parseTargetLabel(%q) = %v, %v; want %v", got, back, ok, want)
		}
		if len(got) > 63 || strings.HasPrefix(got, "-") || strings.HasSuffix(got, "-") {
			t.Errorf("label %q is not a valid host label", got)
		}
	}
	for _, bad := range []string{"", "10-0-0", "10-0-0-256", "010-0-0-1", "10-0-0-+1", "a-b-c-d",
		"2001-db8-0-0-0-0-0-5", "0000-0000-0000-0000-0000-ffff-0a00-0005", "2001-0DB8-0000-0000-0000-0000-0000-0005",
		"10-0-0-1-", "-10-0-0-1"} {
		if ip, ok := parseTargetLabel(bad); ok {
			t.Errorf("parseTargetLabel(%q) = %v, want rejected", bad, ip)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		rel   string
		kind  nameKind
		label string
	}{
		{"", kindApex, ""},
		{"user-srv", kindService, "user-srv"},
		{"user_srv2", kindService, "user_srv2"},
		{BalancerLabel, kindService, BalancerLabel},
		{"_grpclb._tcp.user-srv", kindSRV, "user-srv"},
		{"_grpc_config.user-srv", kindTXT, "user-srv"},
		{"_tcp.user-srv", kindEmpty, "user-srv"},
		{"10-0-0-5." + BalancerLabel, kindBalancer, "10-0-0-5"},
		{"x." + BalancerLabel, kindNone, ""},
		{"_grpclb._udp.user-srv", kindNone, ""},
		{"_grpclb._tcp._tcp", kindNone, ""},
		{"-bad", kindNone, ""},
		{"bad-", kindNone, ""},
		{"_x", kindNone, ""},
		{`a\.b`, kindNone, ""},
		{"a*", kindNone, ""},
		{strings.Repeat("a", 64), kindNone, ""},
		{"a.b", kindNone, ""},
		{"a.b.c.d", kindNone, ""},
	}
	for _, tc := range tests {
		kind, label := classify(tc.rel)
		if kind != tc.kind || label != tc.label {
			t.Errorf("classify(%q) = %v, %q; want %v, %q", tc.rel, kind, label, tc.kind, tc.label)
		}
	}
}
