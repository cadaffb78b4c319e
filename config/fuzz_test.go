package config

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParse feeds Parse arbitrary files: Parse, Validate, Marshal and
// Reloadable never panic, an error is Errors with a line or path, and
// what Parse accepts, Marshal writes back to the same config.
func FuzzParse(f *testing.F) {
	// The minimal example only: minimizing an input found from the 5 KB
	// full one takes the fuzzer about a minute per input.
	for _, path := range []string{"../examples/lookaside-minimal.yaml"} {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"listen: :1\n---\nlisten: :2\n",
		"services:\n  a:\n    max_drop_share: ~\n    aliases: [b, B.]\n  A: {}\n",
		"consul: &c\n  tags: [x]\nstatic:\n  services:\n    a: ['1.2.3.4:5*2']\n",
		"load_reports:\n  tls:\n    <<: {enabled: true}\n",
		"limits: {max_streams: 1e3, max_conns: 0x10}\n",
		"dns:\n  allow: [10.0.0.1/8, '::1']\n  ttl: 1.5s\n",
		"rate_limits:\n  max_drop_share: .nan\n",
		"? [a]\n: b\n",
		"a: &a [*a]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			es, ok := err.(Errors)
			if !ok || len(es) == 0 {
				t.Fatalf("Parse error %T %v is not Errors", err, err)
			}
			for _, e := range es {
				if e.Msg == "" {
					t.Fatalf("error without a message: %#v", e)
				}
			}
			return
		}
		_ = c.Validate()
		_ = Default().Reloadable(c)
		_ = c.Aliases()
		_ = c.Zones()
		_ = c.Canonical()
		c.Consul.Token = "" // redacted by Marshal
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(Marshal(c)): %v\n%s", err, out)
		}
		if d := Diff(c, back); d != nil {
			t.Fatalf("Parse(Marshal(c)) differs at %v:\n%s", d, cmp.Diff(c, back))
		}
	})
}
