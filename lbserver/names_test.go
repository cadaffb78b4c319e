package lbserver

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/peer"
)

func TestNameMapperMap(t *testing.T) {
	m := NameMapper{MaxLength: 64, Zones: []string{"lb.internal"}, Aliases: map[string]string{
		"users":            "user-srv",
		"api.example:8443": "api-tls",
	}}
	tests := []struct {
		name    string
		want    string
		wantErr string
	}{
		{name: "user-srv:50051", want: "user-srv"},
		{name: "user-srv", want: "user-srv"},
		{name: "user-srv.lb.internal.:443", want: "user-srv"},
		{name: "user-srv.LB.Internal:443", want: "user-srv"},
		{name: "users.lb.internal:443", want: "user-srv"},
		{name: "lb.internal:443", want: "lb.internal"},
		{name: "user-srv.other.zone:443", want: "user-srv.other.zone"},
		{name: "user-srv.", want: "user-srv"},
		{name: "users:50051", want: "user-srv"},
		{name: "users", want: "user-srv"},
		{name: "api.example:8443", want: "api-tls"},
		{name: "api.example:443", want: "api.example"},
		{name: "[::1]:50051", want: "::1"},
		{name: "", wantErr: "empty"},
		{name: strings.Repeat("a", 65), wantErr: "longer than 64"},
		{name: "a b", wantErr: "contains"},
		{name: "a/b", wantErr: "contains"},
		{name: "a\x00b", wantErr: "contains"},
		{name: "bad\xffutf8", wantErr: "UTF-8"},
		{name: ":50051", wantErr: "no host"},
		{name: "..", wantErr: "empty label"},
		{name: "user-srv@srv:50051", want: "user-srv@srv"},
		{name: "user-srv@v2,srv", want: "user-srv@srv,v2"},
		{name: "user-srv@", want: "user-srv"},
		{name: "@srv:80", wantErr: "no service"},
		{name: ".user-srv:80", wantErr: "empty label"},
		{name: "user..srv", wantErr: "empty label"},
		{name: "user-srv.@", wantErr: "empty label"},
		{name: "user-srv.@srv:80", wantErr: "empty label"},
		{name: "0@.,", wantErr: "empty label"},
		{name: "user-srv@v1.2,srv", want: "user-srv@srv,v1.2"},
		{name: "USER-SRV:50051", want: "user-srv"},
		{name: "User-Srv@V2,SRV:80", want: "user-srv@srv,v2"},
		{name: "USERS:443", want: "user-srv"},
		{name: "Users.LB.Internal:443", want: "user-srv"},
		{name: "API.Example:8443", want: "api-tls"},
		{name: strings.Repeat("Ⱥ", 32), wantErr: "longer than 64"}, // 64 bytes; 96 in lower case
	}
	for _, tc := range tests {
		got, err := m.Map(tc.name)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Map(%q) = %q, %v; want error containing %q", tc.name, got, err, tc.wantErr)
			}
		case err != nil || got != tc.want:
			t.Errorf("Map(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestParseAliases(t *testing.T) {
	got, err := ParseAliases("users=user-srv, api.example:8443=api-tls", 255)
	if err != nil || got["users"] != "user-srv" || got["api.example:8443"] != "api-tls" || len(got) != 2 {
		t.Fatalf("ParseAliases = %v, %v", got, err)
	}
	if got, err := ParseAliases("", 255); err != nil || len(got) != 0 {
		t.Fatalf("ParseAliases(\"\") = %v, %v", got, err)
	}
	if got, err := ParseAliases("Users.=User-Srv", 255); err != nil || got["users"] != "User-Srv" {
		t.Errorf("ParseAliases keeps a name's case or trailing dot: %v, %v", got, err)
	}
	for _, bad := range []string{"users", "users=", "=svc", "a=b,a=c", "a=svc:80", "a b=c", "a=b,A=c"} {
		if _, err := ParseAliases(bad, 255); err == nil {
			t.Errorf("ParseAliases(%q) succeeded", bad)
		}
	}
}

func TestPeerOfUnmaps(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 5000}, "10.1.2.3:5000"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3").To4(), Port: 5000}, "10.1.2.3:5000"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5000}, "[2001:db8::1]:5000"},
	}
	for _, tc := range tests {
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: tc.addr})
		if got := peerOf(ctx).String(); got != tc.want {
			t.Errorf("peerOf(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	if got := peerOf(context.Background()); got.IsValid() {
		t.Errorf("peerOf without a peer = %v, want the zero AddrPort", got)
	}
}
