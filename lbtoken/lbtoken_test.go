package lbtoken

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestForID(t *testing.T) {
	a, b := ForID("user-srv-1"), ForID("user-srv-2")
	if a == b {
		t.Fatalf("ForID gave two IDs the same token %q", a)
	}
	if a != ForID("user-srv-1") {
		t.Fatal("ForID is not stable")
	}
	if len(a) >= 50 || !strings.HasPrefix(a, "be-") {
		t.Fatalf("ForID = %q: want a be- token under 50 bytes", a)
	}
	if strings.Contains(a, "user") {
		t.Fatalf("ForID = %q reveals the ID", a)
	}
}

func TestVerifier(t *testing.T) {
	good := ForID("x")
	tests := []struct {
		name     string
		v        Verifier
		method   string
		md       metadata.MD
		wantCode codes.Code
	}{
		{"right token", Verifier{Token: good}, "/m", metadata.Pairs(MetadataKey, good), codes.OK},
		{"wrong token", Verifier{Token: good}, "/m", metadata.Pairs(MetadataKey, ForID("y")), codes.PermissionDenied},
		{"no token, optional", Verifier{Token: good}, "/m", nil, codes.OK},
		{"no token, required", Verifier{Token: good, Required: true}, "/m", nil, codes.PermissionDenied},
		{"exempt method", Verifier{Token: good, Required: true, Exempt: map[string]bool{"/h": true}}, "/h", nil, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), tc.md)
			_, err := tc.v.UnaryInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: tc.method},
				func(context.Context, any) (any, error) { return "ok", nil })
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("code = %v, want %v (err %v)", got, tc.wantCode, err)
			}
		})
	}
}
