package discovery

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSplitJoinName(t *testing.T) {
	tests := []struct {
		name      string
		service   string
		tags      []string
		canonical string
	}{
		{"user-srv", "user-srv", nil, "user-srv"},
		{"user-srv@srv", "user-srv", []string{"srv"}, "user-srv@srv"},
		{"user-srv@v2,srv,v2", "user-srv", []string{"v2", "srv", "v2"}, "user-srv@srv,v2"},
		{"user-srv@", "user-srv", nil, "user-srv"},
		{"user-srv@,a,,b", "user-srv", []string{"a", "b"}, "user-srv@a,b"},
	}
	for _, tc := range tests {
		svc, tags := SplitName(tc.name)
		if svc != tc.service || !cmp.Equal(tags, tc.tags) {
			t.Errorf("SplitName(%q) = %q, %q; want %q, %q", tc.name, svc, tags, tc.service, tc.tags)
		}
		if got := JoinName(svc, tags); got != tc.canonical {
			t.Errorf("JoinName(SplitName(%q)) = %q, want %q", tc.name, got, tc.canonical)
		}
	}
}

func TestCanonical(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"user-srv", "user-srv"},
		{"USER-SRV", "user-srv"},
		{"User-Srv@V2,SRV", "user-srv@srv,v2"},
		{"user-srv@srv,,srv", "user-srv@srv"},
		{"user-srv@", "user-srv"},
	} {
		if got := Canonical(tc.in); got != tc.want {
			t.Errorf("Canonical(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
