// Package lbtoken derives the grpclb load-balance token of a backend and
// checks it on the backend side.
//
// The balancer puts a token in every server-list entry; grpclb clients send
// it to that backend as the "lb-token" metadata of each call. Tokens are
// derived from the instance's stable ID (the Consul service ID), so every
// balancer replica gives the same instance the same token and a backend can
// compute its own without asking anyone.
package lbtoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MetadataKey is the metadata key under which grpclb clients send the token.
const MetadataKey = "lb-token"

// prefix marks tokens of backends, so they never collide with drop tokens.
const prefix = "be-"

// ForID returns the token of the instance with the given ID: "be-" and 24 hex
// digits of the ID's SHA-256, 27 bytes in all (grpclb allows up to 50). It
// does not reveal the ID. Safe for concurrent use.
func ForID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return prefix + hex.EncodeToString(sum[:12])
}

// FromContext returns the lb-token the caller sent with an incoming call, or
// "" when there is none.
func FromContext(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, MetadataKey); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Verifier checks the lb-token of incoming calls against the token of one
// instance. Calls without a token pass unless Required is set, so that
// clients that reach the backend directly (grpclb fallback, health checks)
// keep working.
type Verifier struct {
	// Token is the expected token, ForID(instanceID).
	Token string
	// Required rejects calls that carry no token.
	Required bool
	// Exempt lists full method names that are never checked, such as the
	// health service's.
	Exempt map[string]bool
}

func (v Verifier) check(ctx context.Context, method string) error {
	if v.Exempt[method] {
		return nil
	}
	got := FromContext(ctx)
	switch {
	case got == "" && !v.Required:
		return nil
	case got == "":
		return status.Error(codes.PermissionDenied, "lbtoken: call carries no lb-token")
	case got != v.Token:
		return status.Error(codes.PermissionDenied, "lbtoken: lb-token is not this backend's")
	}
	return nil
}

// UnaryInterceptor returns a server interceptor that rejects calls whose
// lb-token is wrong with PermissionDenied.
func (v Verifier) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := v.check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls.
func (v Verifier) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := v.check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return h(srv, ss)
	}
}
