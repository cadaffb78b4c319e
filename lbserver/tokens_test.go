package lbserver

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/lbtoken"
)

var testTokenKey = lbtoken.Key("lbserver-test-key-0123456789")

// TestServerEntryToken: an entry's token derives from the ID the instance
// knows itself by (Endpoint.TokenID), which is what the backend checks, so
// two nodes registering the same service ID both get the token that
// service ID's backends expect.
func TestServerEntryToken(t *testing.T) {
	addr := netip.MustParseAddrPort("127.0.0.1:1")
	tests := []struct {
		name string
		ep   discovery.Endpoint
		key  lbtoken.Key
		want string
	}{
		{"plain ID", discovery.Endpoint{ID: "user-1", Addr: addr}, nil, lbtoken.ForID("user-1")},
		{"duplicate ID, node n1", discovery.Endpoint{ID: "n1/user-1", Instance: "user-1", Addr: addr}, nil, lbtoken.ForID("user-1")},
		{"duplicate ID, node n2", discovery.Endpoint{ID: "n2/user-1", Instance: "user-1", Addr: addr}, nil, lbtoken.ForID("user-1")},
		{"keyed, plain ID", discovery.Endpoint{ID: "user-1", Addr: addr}, testTokenKey, testTokenKey.ForID("user-1")},
		{"keyed, duplicate ID", discovery.Endpoint{ID: "n2/user-1", Instance: "user-1", Addr: addr}, testTokenKey, testTokenKey.ForID("user-1")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := serverEntry(tc.ep, tc.key).GetLoadBalanceToken()
			if got != tc.want {
				t.Errorf("token %q, want %q", got, tc.want)
			}
			// What the backend with that service ID expects.
			if v := lbtoken.NewVerifier(tc.ep.TokenID(), tc.key, true, nil); v.Token != got {
				t.Errorf("backend %q expects %q, list carries %q", tc.ep.TokenID(), v.Token, got)
			}
			if len(got) > lbtoken.MaxLength {
				t.Errorf("token %q is over grpclb's %d bytes", got, lbtoken.MaxLength)
			}
		})
	}
}

// TestKeyedTokensInLists: with Config.LBTokenKey, the lists a client
// receives carry keyed tokens of each instance's service ID.
func TestKeyedTokensInLists(t *testing.T) {
	a := discovery.Endpoint{ID: "n1/user-1", Instance: "user-1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1}
	b := discovery.Endpoint{ID: "n2/user-1", Instance: "user-1", Addr: netip.MustParseAddrPort("127.0.0.1:2"), Weight: 1}
	src := newFakeSource(snap("svc", a, b))
	cfg := testConfig(src)
	cfg.LBTokenKey = testTokenKey
	_, c := startServer(t, cfg)
	s := open(t, c, "svc")
	recv(t, s) // initial response
	var got []string
	for _, e := range recv(t, s).GetServerList().GetServers() {
		got = append(got, e.GetLoadBalanceToken())
	}
	want := []string{testTokenKey.ForID("user-1"), testTokenKey.ForID("user-1")}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("tokens (-want +got):\n%s", diff)
	}
}

func TestTokenKeyValidated(t *testing.T) {
	cfg := testConfig(newFakeSource())
	cfg.LBTokenKey = lbtoken.Key("short")
	if _, err := New(cfg); err == nil {
		t.Fatal("New accepted a 5-byte lb-token key")
	}
}
