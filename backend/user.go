package backend

import (
	"context"
	"fmt"

	"github.com/lookaside-lb/lookaside/lbtoken"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Page sizes of GetUserList.
const (
	// DirectorySize is the number of users in the fake directory, with IDs
	// user-0001 to user-1000.
	DirectorySize = 1000
	// DefaultPageSize is the page size a request with p_size 0 gets.
	DefaultPageSize = 10
	// MaxPageSize is the largest page size accepted.
	MaxPageSize = 100
)

// UserService implements the User service over a fixed, deterministic
// directory of DirectorySize users, the same in every instance. It is safe
// for concurrent use.
type UserService struct {
	userpb.UnimplementedUserServer

	// ID and Addr identify the instance in every response.
	ID   string
	Addr string
}

var _ userpb.UserServer = (*UserService)(nil)

// GetUserList returns page pn (from 1; 0 means 1) of p_size users (0 means
// DefaultPageSize; above MaxPageSize is InvalidArgument). A page past the
// end is empty.
func (s *UserService) GetUserList(ctx context.Context, in *userpb.PageInfo) (*userpb.UserListResponse, error) {
	pn, size := in.GetPn(), in.GetPSize()
	if pn == 0 {
		pn = 1
	}
	switch {
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		return nil, status.Errorf(codes.InvalidArgument, "p_size %d is above the maximum %d", size, MaxPageSize)
	}
	resp := &userpb.UserListResponse{
		Total:       DirectorySize,
		BackendId:   s.ID,
		BackendAddr: s.Addr,
		LbToken:     lbtoken.FromContext(ctx),
		Pn:          pn,
		PSize:       size,
	}
	// In 64 bits, (pn-1)*size cannot overflow.
	first := uint64(pn-1)*uint64(size) + 1
	last := min(first+uint64(size)-1, DirectorySize)
	for i := first; i <= last; i++ {
		resp.Users = append(resp.Users, user(int(i)))
	}
	return resp, nil
}

// user returns the i-th user of the directory, 1 ≤ i ≤ DirectorySize.
func user(i int) *userpb.UserInfo {
	id := fmt.Sprintf("user-%04d", i)
	return &userpb.UserInfo{
		Id:    id,
		Name:  fmt.Sprintf("User %04d", i),
		Email: id + "@example.com",
	}
}
