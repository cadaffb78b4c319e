package main

import (
	"io"
	"strings"
	"testing"
)

// FuzzFlags: any command line (arguments separated by NUL) either fails
// to parse or gives a config that Validate judges without panicking, and
// parsing the same line twice gives the same config (SIGHUP parses the
// flags again onto the file).
func FuzzFlags(f *testing.F) {
	for _, seed := range []string{
		"-static\x00a=127.0.0.1:1",
		"-service-policy\x00svc=random,other=least_load\x00-rate-limit\x00svc=5",
		"-alias\x00users=user-srv,users:443=user-srv\x00-zone\x00lb.internal,corp.example",
		"-dns-child-policy\x00pick_first,orders=round_robin\x00-dns-listen\x00127.0.0.1:0",
		"-static\x00a=127.0.0.1:1*3,[::1]:2;b=10.0.0.1:80",
		"-listen=127.0.0.1:0\x00--config=/nonexistent\x00-max-streams\x001",
		"-consul-tag\x00a,,b\x00-dns-allow\x0010.0.0.0/8,::1",
		"-rate-limit\x00svc=NaN\x00-max-drop-share\x00Inf",
		"-latency-outliers=false\x00-service-latency-outliers\x00a=true,b=0\x00-outlier-probe-share\x00NaN\x00-outlier-eject-after\x000",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		cfg, _, err := load(args, io.Discard)
		if err != nil {
			return
		}
		_ = cfg.Validate()
		again, _, err := load(args, io.Discard)
		// Compared as printed: NaN is never equal to itself.
		if err != nil || again.String() != cfg.String() {
			t.Fatalf("%q: a second parse gave %v:\n%s\nwant\n%s", args, err, again, cfg)
		}
	})
}
