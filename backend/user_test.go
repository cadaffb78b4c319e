package backend

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/lookaside-lb/lookaside/lbtoken"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestGetUserListPages(t *testing.T) {
	s := &UserService{ID: "user-srv-1", Addr: "127.0.0.1:1"}
	tests := []struct {
		name         string
		pn, size     uint32
		wantPn       uint32
		wantSize     uint32
		wantFirst    string // "" for an empty page
		wantLast     string
		wantNumUsers int
	}{
		{"defaults", 0, 0, 1, DefaultPageSize, "user-0001", "user-0010", 10},
		{"first page", 1, 5, 1, 5, "user-0001", "user-0005", 5},
		{"pn 0 is page 1", 0, 5, 1, 5, "user-0001", "user-0005", 5},
		{"second page", 2, 5, 2, 5, "user-0006", "user-0010", 5},
		{"max size", 3, MaxPageSize, 3, MaxPageSize, "user-0201", "user-0300", 100},
		{"last full page", 100, 10, 100, 10, "user-0991", "user-1000", 10},
		{"partial last page", 34, 30, 34, 30, "user-0991", "user-1000", 10},
		{"past the end", 101, 10, 101, 10, "", "", 0},
		{"far past the end", 1<<32 - 1, MaxPageSize, 1<<32 - 1, MaxPageSize, "", "", 0},
		{"size 1", 1000, 1, 1000, 1, "user-1000", "user-1000", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := s.GetUserList(t.Context(), &userpb.PageInfo{Pn: tc.pn, PSize: tc.size})
			if err != nil {
				t.Fatalf("GetUserList(%d, %d): %v", tc.pn, tc.size, err)
			}
			if resp.GetPn() != tc.wantPn || resp.GetPSize() != tc.wantSize {
				t.Errorf("pn, p_size = %d, %d, want %d, %d", resp.GetPn(), resp.GetPSize(), tc.wantPn, tc.wantSize)
			}
			if resp.GetTotal() != DirectorySize {
				t.Errorf("total = %d, want %d", resp.GetTotal(), DirectorySize)
			}
			users := resp.GetUsers()
			if len(users) != tc.wantNumUsers {
				t.Fatalf("got %d users, want %d", len(users), tc.wantNumUsers)
			}
			if len(users) == 0 {
				return
			}
			if first, last := users[0].GetId(), users[len(users)-1].GetId(); first != tc.wantFirst || last != tc.wantLast {
				t.Errorf("users %s…%s, want %s…%s", first, last, tc.wantFirst, tc.wantLast)
			}
			for i := 1; i < len(users); i++ {
				if users[i-1].GetId() >= users[i].GetId() {
					t.Errorf("users not in id order at %d: %s, %s", i, users[i-1].GetId(), users[i].GetId())
				}
			}
		})
	}
}

func TestGetUserListUser(t *testing.T) {
	s := &UserService{}
	resp, err := s.GetUserList(t.Context(), &userpb.PageInfo{Pn: 42, PSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []*userpb.UserInfo{{Id: "user-0042", Name: "User 0042", Email: "user-0042@example.com"}}
	if diff := cmp.Diff(want, resp.GetUsers(), protocmp.Transform()); diff != "" {
		t.Errorf("users (-want +got):\n%s", diff)
	}
}

func TestGetUserListRejectsBadInput(t *testing.T) {
	s := &UserService{}
	for _, size := range []uint32{MaxPageSize + 1, 1000, 1<<32 - 1} {
		_, err := s.GetUserList(t.Context(), &userpb.PageInfo{Pn: 1, PSize: size})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("GetUserList(p_size %d) = %v, want InvalidArgument", size, err)
		}
	}
}

func TestGetUserListReportsBackendAndToken(t *testing.T) {
	s := &UserService{ID: "user-srv-a", Addr: "127.0.0.1:7001"}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	resp, err := s.GetUserList(ctx, &userpb.PageInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetBackendId() != "user-srv-a" || resp.GetBackendAddr() != "127.0.0.1:7001" || resp.GetLbToken() != "" {
		t.Errorf("backend_id, backend_addr, lb_token = %q, %q, %q; want user-srv-a, 127.0.0.1:7001, empty",
			resp.GetBackendId(), resp.GetBackendAddr(), resp.GetLbToken())
	}

	tok := lbtoken.ForID("user-srv-a")
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(lbtoken.MetadataKey, tok))
	resp, err = s.GetUserList(ctx, &userpb.PageInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetLbToken() != tok {
		t.Errorf("lb_token = %q, want %q", resp.GetLbToken(), tok)
	}
}
