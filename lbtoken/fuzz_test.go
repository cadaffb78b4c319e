package lbtoken

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// FuzzVerifier: whatever token a client sends, a keyed or unkeyed
// verifier lets through exactly the instance's token (and the tokens it
// accepts), refuses the rest with PermissionDenied and a fixed message
// (never the sent token), and never panics.
func FuzzVerifier(f *testing.F) {
	key := Key("fuzz-verifier-key-0123456789")
	for _, s := range []string{"", "be-", "bk-", ForID("id"), key.ForID("id"), key.ForID("other"), "be-\x00\xff", string(make([]byte, 5000))} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, sent string, keyed bool) {
		var k Key
		if keyed {
			k = key
		}
		v := NewVerifier("id", k, true, nil)
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, sent))
		err := v.Check(ctx, "/m")
		want := sent == k.ForID("id")
		switch {
		case want && err != nil:
			t.Fatalf("the instance's token %q refused: %v", sent, err)
		case !want && status.Code(err) != codes.PermissionDenied:
			t.Fatalf("token %q: %v, want PermissionDenied", sent, err)
		case err != nil && (len(status.Convert(err).Message()) > 200 || !strings.HasPrefix(status.Convert(err).Message(), "lbtoken: ")):
			t.Fatalf("the refusal is not one of the fixed messages (it may echo the token): %v", err)
		}
	})
}

// FuzzParseKey: a key file's content is accepted only with 16 to 4096
// bytes after trimming, and the key never holds surrounding white space.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"", "\n", "0123456789abcdef", " 0123456789abcdef\n", "short", string(make([]byte, 4097))} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKey(b)
		trimmed := bytes.TrimSpace(b)
		ok := len(trimmed) >= MinKeyLength && len(trimmed) <= MaxKeyLength
		if (err == nil) != ok {
			t.Fatalf("ParseKey(%d bytes, %d trimmed) err = %v", len(b), len(trimmed), err)
		}
		if err == nil && (!bytes.Equal(k, trimmed) || !k.Keyed() || len(k.ForID("x")) > MaxLength) {
			t.Fatalf("ParseKey gave %d bytes for %d trimmed", len(k), len(trimmed))
		}
	})
}
