package lbtoken

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var testKey = Key("0123456789abcdef-test-key")

func TestTokens(t *testing.T) {
	tests := []struct {
		name    string
		key     Key
		id      string
		prefix  string
		wantLen int
	}{
		{"unkeyed", nil, "user-srv-1", "be-", 27},
		{"unkeyed, empty key", Key{}, "user-srv-1", "be-", 27},
		{"keyed", testKey, "user-srv-1", "bk-", 35},
		{"unkeyed, long ID", nil, strings.Repeat("x", 1000), "be-", 27},
		{"keyed, long ID", testKey, strings.Repeat("x", 1000), "bk-", 35},
		{"keyed, empty ID", testKey, "", "bk-", 35},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.key.ForID(tc.id)
			if !strings.HasPrefix(tok, tc.prefix) || len(tok) != tc.wantLen || len(tok) > MaxLength {
				t.Fatalf("ForID = %q (%d bytes): want prefix %q and %d bytes, at most %d", tok, len(tok), tc.prefix, tc.wantLen, MaxLength)
			}
			if tok != tc.key.ForID(tc.id) {
				t.Fatal("ForID is not stable")
			}
			if other := tc.key.ForID(tc.id + "x"); other == tok {
				t.Fatalf("two IDs share the token %q", tok)
			}
			if tc.id != "" && strings.Contains(tok, tc.id[:1]+tc.id[:1]) {
				t.Fatalf("ForID = %q reveals the ID", tok)
			}
		})
	}
	if ForID("a") != Key(nil).ForID("a") {
		t.Error("a nil Key does not give the unkeyed token")
	}
	if testKey.ForID("a") == ForID("a") {
		t.Error("keyed and unkeyed tokens are equal")
	}
	if testKey.ForID("a") == Key("another-key-of-16+bytes").ForID("a") {
		t.Error("two keys give the same token")
	}
}

func TestKeyNeverShown(t *testing.T) {
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "key", testKey, "fmt", fmt.Sprint(testKey), "v", fmt.Sprintf("%v %s", testKey, testKey))
	if s := buf.String() + testKey.String(); strings.Contains(s, "test-key") {
		t.Fatalf("key shown: %q", s)
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"0123456789abcdef", "0123456789abcdef", ""},
		{"  0123456789abcdef\n", "0123456789abcdef", ""},
		{"", "", "empty"},
		{" \n\t", "", "empty"},
		{"short-key", "", "at least 16"},
		{strings.Repeat("k", MaxKeyLength), strings.Repeat("k", MaxKeyLength), ""},
		{strings.Repeat("k", MaxKeyLength+1), "", "at most"},
	}
	for _, tc := range tests {
		k, err := ParseKey([]byte(tc.in))
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseKey(%.20q) = %v, want error with %q", tc.in, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || string(k) != tc.want):
			t.Errorf("ParseKey(%.20q) = %.20q, %v; want %.20q", tc.in, k, err, tc.want)
		}
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	k, err := LoadKey(write("good", "0123456789abcdef0123\n", 0o600), log)
	if err != nil || string(k) != "0123456789abcdef0123" || logs.Len() != 0 {
		t.Fatalf("good key: %q, %v, logs %q", k, err, logs.String())
	}
	if _, err := LoadKey(write("open", "0123456789abcdef0123\n", 0o644), log); err != nil || !strings.Contains(logs.String(), "readable by every user") {
		t.Fatalf("world-readable key: err %v, logs %q; want a warning", err, logs.String())
	}
	for name, content := range map[string]string{"empty": "", "short": "abc\n", "huge": strings.Repeat("k", 3*MaxKeyLength)} {
		if _, err := LoadKey(write(name, content, 0o600), log); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s key file: err %v, want one naming the file", name, err)
		}
	}
	if _, err := LoadKey(filepath.Join(dir, "missing"), log); err == nil {
		t.Error("missing key file accepted")
	}
	if _, err := LoadKey(dir, log); err == nil {
		t.Error("directory accepted as key file")
	}
}

func TestVerifier(t *testing.T) {
	good := ForID("x")
	keyed := testKey.ForID("x")
	tests := []struct {
		name     string
		v        Verifier
		method   string
		md       metadata.MD
		wantCode codes.Code
		wantMsg  string
	}{
		{"right token", Verifier{Token: good}, "/m", metadata.Pairs(MetadataKey, good), codes.OK, ""},
		{"wrong token", Verifier{Token: good}, "/m", metadata.Pairs(MetadataKey, ForID("y")), codes.PermissionDenied, "not this backend's"},
		{"no token, optional", Verifier{Token: good}, "/m", nil, codes.OK, ""},
		{"no token, required", Verifier{Token: good, Required: true}, "/m", nil, codes.PermissionDenied, "no lb-token"},
		{"exempt method", Verifier{Token: good, Required: true, Exempt: map[string]bool{"/h": true}}, "/h", nil, codes.OK, ""},
		{"keyed, right token", NewVerifier("x", testKey, true, nil), "/m", metadata.Pairs(MetadataKey, keyed), codes.OK, ""},
		{"keyed, unkeyed token of the instance", NewVerifier("x", testKey, true, nil), "/m", metadata.Pairs(MetadataKey, good), codes.PermissionDenied, "unkeyed"},
		{"keyed, forged with another key", NewVerifier("x", testKey, true, nil), "/m", metadata.Pairs(MetadataKey, Key("guessed-key-0123456").ForID("x")), codes.PermissionDenied, "not this backend's"},
		{"keyed, other instance's token", NewVerifier("x", testKey, true, nil), "/m", metadata.Pairs(MetadataKey, testKey.ForID("y")), codes.PermissionDenied, "not this backend's"},
		{"keyed, made-up token", NewVerifier("x", testKey, false, nil), "/m", metadata.Pairs(MetadataKey, "bk-"+strings.Repeat("0", 32)), codes.PermissionDenied, "not this backend's"},
		{"unkeyed, keyed token", NewVerifier("x", nil, true, nil), "/m", metadata.Pairs(MetadataKey, keyed), codes.PermissionDenied, "keyed"},
		{"keyed, accepting unkeyed, unkeyed token", Verifier{Token: keyed, Required: true, Accept: []string{good}}, "/m", metadata.Pairs(MetadataKey, good), codes.OK, ""},
		{"keyed, accepting unkeyed, keyed token", Verifier{Token: keyed, Required: true, Accept: []string{good}}, "/m", metadata.Pairs(MetadataKey, keyed), codes.OK, ""},
		{"keyed, accepting unkeyed, other instance", Verifier{Token: keyed, Required: true, Accept: []string{good}}, "/m", metadata.Pairs(MetadataKey, ForID("y")), codes.PermissionDenied, "not this backend's"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), tc.md)
			_, err := tc.v.UnaryInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: tc.method},
				func(context.Context, any) (any, error) { return "ok", nil })
			if got := status.Code(err); got != tc.wantCode || !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Fatalf("code = %v (err %v), want %v with %q", got, err, tc.wantCode, tc.wantMsg)
			}
		})
	}
}
