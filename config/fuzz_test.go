package config

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
)

// FuzzParse feeds Parse arbitrary files: Parse, Validate, Locate, Marshal
// and Reloadable never panic, an error is Errors with a line or path, and
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
		"load_reports:\n  latency_outliers: {factor: 1.5, readmit_factor: 2, eject_after: -1s}\nservices:\n  a: {latency_outliers: false}\n",
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
		if verr := c.Validate(); verr == nil {
			agrees(t, c)
		} else if located := Locate("f.yaml", data, verr); len(located.(Errors)) != len(verr.(Errors)) {
			t.Fatalf("Locate changed the errors: %v", located)
		}
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

// agrees fails t if a package rejects what Validate accepted in c.
func agrees(t *testing.T, c Config) {
	t.Helper()
	b := c.Balancer
	opts := policy.Options{MaxEntries: b.MaxListEntries, HashSubset: b.HashSubset}
	if _, err := policy.Build(b.Policy, opts); err != nil {
		t.Fatalf("Validate accepted balancer %+v: %v", b, err)
	}
	for name, s := range c.Services {
		o := opts
		if s.MaxListEntries != 0 {
			o.MaxEntries = s.MaxListEntries
		}
		if s.HashSubset != 0 {
			o.HashSubset = s.HashSubset
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("Validate accepted service %q %+v: %v", name, s, err)
		}
	}
	lw := loadweight.DefaultConfig()
	lw.BlackoutPeriod, lw.OverloadThreshold, lw.MaxDropShare = c.LoadReports.Blackout.D(), c.LoadReports.OverloadThreshold, c.LoadReports.MaxDropShare
	if err := lw.Validate(); err != nil {
		t.Fatalf("Validate accepted load_reports %+v: %v", c.LoadReports, err)
	}
	if _, err := dnsserver.ParseAllow(strings.Join(c.DNS.Allow, ",")); err != nil {
		t.Fatalf("Validate accepted dns.allow %q: %v", c.DNS.Allow, err)
	}
	if _, err := lbserver.CanonicalAliases(c.Aliases()); err != nil {
		t.Fatalf("Validate accepted aliases %v: %v", c.Aliases(), err)
	}
	for alias, svc := range c.Aliases() {
		if lbserver.ValidateName(alias, b.MaxNameLength) != nil || lbserver.ValidateName(svc, b.MaxNameLength) != nil {
			t.Fatalf("Validate accepted alias %q -> %q", alias, svc)
		}
	}
	if c.Consul.MaxConns < consul.ConnsNeeded(c.Consul.MaxFetches) && !c.staticSet() {
		t.Fatalf("Validate accepted consul %+v", c.Consul)
	}
}
