// Package lbtoken derives the grpclb load-balance token (lb-token) of a
// backend instance and checks it on the backend side.
//
// # What an lb-token is
//
// The balancer puts a token in every server-list entry; grpclb clients send
// it to that backend as the "lb-token" metadata of each call. A token is a
// routing check: it lets a backend see that a call reached the instance the
// balancer meant, and not, say, a new instance that took over the address
// of one that left, or a backend a client dialled from a stale list. It is
// not authentication: any client that received a list holds the tokens of
// every instance in it, and sends them in clear metadata. Use TLS and real
// credentials to decide who may call a backend.
//
// Tokens derive from the ID the instance knows itself by (its Consul
// service ID, discovery.Endpoint.TokenID), so every balancer replica gives
// the same instance the same token and a backend computes its own without
// asking anyone, even when two nodes register the same service ID.
//
// # Unkeyed and keyed tokens
//
// ForID gives an unkeyed token, "be-" and 24 hex digits of the ID's
// SHA-256: anyone who knows an instance's ID can compute it. It is the
// default, for compatibility.
//
// With a Key, a secret shared by the balancers and the backends (read with
// LoadKey from a file, -lb-token-key-file on both commands), Key.ForID gives
// a keyed token, "bk-" and 32 hex digits of the HMAC-SHA256 of the ID:
// someone without the key cannot compute the token of an instance, so a
// backend whose Verifier has the key rejects calls with a made-up or unkeyed
// token. Both kinds are under grpclb's 50-byte limit.
package lbtoken

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MetadataKey is the metadata key under which grpclb clients send the token.
const MetadataKey = "lb-token"

// MaxLength is grpclb's limit on a token's length, in bytes.
const MaxLength = 50

// Prefixes mark tokens of backends, so they never collide with drop tokens
// and a verifier can tell which kind it was sent.
const (
	unkeyedPrefix = "be-"
	keyedPrefix   = "bk-"
)

// Bounds on the length of a key, after surrounding white space is trimmed.
const (
	MinKeyLength = 16
	MaxKeyLength = 4096
)

// ForID returns the unkeyed token of the instance with the given ID: "be-"
// and 24 hex digits of the ID's SHA-256, 27 bytes in all. It does not reveal
// the ID, but anyone who knows the ID can compute it. Safe for concurrent
// use.
func ForID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return unkeyedPrefix + hex.EncodeToString(sum[:12])
}

// Key is the secret from which keyed tokens derive. A nil or empty Key
// gives unkeyed tokens. Its String and LogValue never show the secret.
type Key []byte

// ForID returns the token of the instance with the given ID: with a key,
// "bk-" and 32 hex digits of HMAC-SHA256(key, id), 35 bytes in all; without
// one, the unkeyed ForID(id). Safe for concurrent use.
func (k Key) ForID(id string) string {
	if len(k) == 0 {
		return ForID(id)
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte(id))
	return keyedPrefix + hex.EncodeToString(m.Sum(nil)[:16])
}

// Keyed reports whether k gives keyed tokens.
func (k Key) Keyed() bool { return len(k) > 0 }

// String hides the secret.
func (k Key) String() string {
	if len(k) == 0 {
		return "none"
	}
	return "[redacted]"
}

// LogValue hides the secret from slog.
func (k Key) LogValue() slog.Value { return slog.StringValue(k.String()) }

// ParseKey checks a key's bytes, as read from a key file: surrounding
// white space (a trailing newline) is dropped, and what remains must hold
// MinKeyLength to MaxKeyLength bytes.
func ParseKey(b []byte) (Key, error) {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("lbtoken: key is empty")
	case len(b) < MinKeyLength:
		return nil, fmt.Errorf("lbtoken: key has %d bytes, want at least %d (for example: head -c 32 /dev/urandom | base64)", len(b), MinKeyLength)
	case len(b) > MaxKeyLength:
		return nil, fmt.Errorf("lbtoken: key has %d bytes, want at most %d", len(b), MaxKeyLength)
	}
	return Key(bytes.Clone(b)), nil
}

// LoadKey reads a key file (see ParseKey). A file that other users can
// read is accepted with a warning on log (which may be nil), since anyone
// who reads it can forge tokens. Blocks on the file system.
func LoadKey(path string, log *slog.Logger) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lbtoken: key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("lbtoken: key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("lbtoken: key file %s is not a regular file", path)
	}
	// Read a little more than a key may hold: white space is trimmed.
	b, err := io.ReadAll(io.LimitReader(f, 2*MaxKeyLength+1))
	if err != nil {
		return nil, fmt.Errorf("lbtoken: key file: %w", err)
	}
	if len(b) > 2*MaxKeyLength {
		return nil, fmt.Errorf("lbtoken: key file %s is longer than %d bytes", path, 2*MaxKeyLength)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w (key file %s)", err, path)
	}
	if fi.Mode().Perm()&0o004 != 0 && log != nil {
		log.Warn("lb-token key file is readable by every user; anyone who reads it can forge lb-tokens (chmod 600 or 640)", "file", path)
	}
	return k, nil
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
// keep working. A Verifier is read-only once in use, so it is safe for
// concurrent use.
type Verifier struct {
	// Token is the expected token: Key.ForID(instanceID), or
	// ForID(instanceID) for unkeyed tokens. A keyed Token rejects every
	// unkeyed or forged token.
	Token string
	// Required rejects calls that carry no token.
	Required bool
	// Accept lists other tokens that pass too, such as the instance's
	// unkeyed token while keyed tokens roll out (backends first, with both
	// accepted; then the balancers; then Accept emptied).
	Accept []string
	// Exempt lists full method names that are never checked, such as the
	// health service's.
	Exempt map[string]bool
}

// NewVerifier returns the Verifier of the instance id with tokens from key
// (unkeyed when key is empty).
func NewVerifier(id string, key Key, required bool, exempt map[string]bool) Verifier {
	return Verifier{Token: key.ForID(id), Required: required, Exempt: exempt}
}

// Check returns a PermissionDenied error if the call's token is wrong for
// the full method name, nil if it may proceed. The message says which kind
// of token was expected, never the token itself.
func (v Verifier) Check(ctx context.Context, method string) error {
	if v.Exempt[method] {
		return nil
	}
	got := FromContext(ctx)
	switch {
	case got == "" && !v.Required:
		return nil
	case got == "":
		return status.Error(codes.PermissionDenied, "lbtoken: call carries no lb-token")
	case subtle.ConstantTimeCompare([]byte(got), []byte(v.Token)) == 1:
		return nil
	case v.accepts(got):
		return nil
	case len(v.Accept) == 0 && strings.HasPrefix(v.Token, keyedPrefix) && strings.HasPrefix(got, unkeyedPrefix):
		return status.Error(codes.PermissionDenied, "lbtoken: lb-token is unkeyed; this backend expects keyed tokens (is the balancer missing the lb-token key?)")
	case len(v.Accept) == 0 && strings.HasPrefix(v.Token, unkeyedPrefix) && strings.HasPrefix(got, keyedPrefix):
		return status.Error(codes.PermissionDenied, "lbtoken: lb-token is keyed; this backend expects unkeyed tokens (is it missing the lb-token key?)")
	}
	return status.Error(codes.PermissionDenied, "lbtoken: lb-token is not this backend's")
}

func (v Verifier) accepts(got string) bool {
	for _, a := range v.Accept {
		if subtle.ConstantTimeCompare([]byte(got), []byte(a)) == 1 {
			return true
		}
	}
	return false
}

// UnaryInterceptor returns a server interceptor that rejects calls whose
// lb-token is wrong with PermissionDenied.
func (v Verifier) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := v.Check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls.
func (v Verifier) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := v.Check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return h(srv, ss)
	}
}
