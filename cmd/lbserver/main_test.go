package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-policy", "fastest"}, `unknown policy "fastest"`},
		{[]string{"-static", "svc=localhost:80"}, "-static"},
		{[]string{"-static", "a=127.0.0.1:1", "-static-file", "x.json"}, "exclusive"},
		{[]string{"-static-file", "/nonexistent/lookaside.json"}, "-static-file"},
		{[]string{"-alias", "users"}, "-alias"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"-log-format", "xml"}, "-log-format"},
		{[]string{"-shutdown-timeout", "0s"}, "-shutdown-timeout"},
		{[]string{"-initial-request-timeout", "1ms", "-static", "a=127.0.0.1:1"}, "initial request timeout"},
		{[]string{"-no-such-flag"}, "not defined"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-register", "-listen", ":0", "-static", "a=127.0.0.1:1"}, "-advertise"},
		{[]string{"-register", "-listen", "127.0.0.1:0", "-register-service", "a b", "-static", "a=127.0.0.1:1"}, "service"},
		{[]string{"-drain-delay", "-1s"}, "-drain-delay"},
		{[]string{"-max-stream-age", "1s", "-static", "a=127.0.0.1:1"}, "max stream age"},
		{[]string{"-service-policy", "svc=fastest", "-static", "a=127.0.0.1:1"}, `service "svc": policy: unknown policy "fastest"`},
		{[]string{"-service-policy", "svc", "-static", "a=127.0.0.1:1"}, "-service-policy"},
		{[]string{"-max-list-entries", "0", "-static", "a=127.0.0.1:1"}, "max entries"},
		{[]string{"-hash-subset", "0", "-static", "a=127.0.0.1:1"}, "hash subset"},
		{[]string{"-zone", "lb..internal/", "-static", "a=127.0.0.1:1"}, "zone"},
		{[]string{"-listen", "256.0.0.1:99999", "-static", "a=127.0.0.1:1"}, "listen"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	for _, want := range []string{"-consul", "-static", "-policy", "round_robin", "weighted_round_robin", "source_hash", "least_connections", "-alias", "CONSUL_HTTP_ADDR", "lb-policy"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("help does not mention %s", want)
		}
	}
}

func TestServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-static", "svc=127.0.0.1:50051"}, &stdout, &stderr)
	}()
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after cancel; stderr:\n%s", code, stderr.String())
	}
}
