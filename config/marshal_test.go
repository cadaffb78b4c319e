package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestMarshalRoundTrip(t *testing.T) {
	c, err := Load("../examples/lookaside.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse(Marshal()): %v\n%s", err, out)
	}
	if diff := cmp.Diff(c, back, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Parse(Marshal(c)) (-c +back):\n%s", diff)
	}
	for _, want := range []string{"\nlisten: 10.0.0.5:7000\n", "\n  wait: 1m\n", "\n  max_stream_age: 30m\n", "\n  interval: 1s\n",
		"\n  user-srv:\n    policy: least_load\n"} {
		if !strings.Contains("\n"+string(out), want) {
			t.Errorf("Marshal output lacks %q:\n%s", want, out)
		}
	}
	// Services print what they set, not the zero values they inherit.
	if strings.Contains(string(out), "    rate_limit: 0\n") || strings.Contains(string(out), "null") {
		t.Errorf("Marshal prints inherited service fields:\n%s", out)
	}
}

func TestMarshalRedactsSecrets(t *testing.T) {
	c := Default()
	c.Consul.Token = "s3cr3t-token"
	out := c.String()
	if strings.Contains(out, "s3cr3t") {
		t.Errorf("String() shows the Consul token:\n%s", out)
	}
	if !strings.Contains(out, "  token: "+Redacted+"\n") {
		t.Errorf("String() does not say the token is set:\n%s", out)
	}
	if c.Consul.Token != "s3cr3t-token" {
		t.Error("String() changed the config")
	}
	if d := Default().String(); !strings.Contains(d, "  token: \"\"\n") {
		t.Errorf("String() of an unset token:\n%s", d)
	}
}

func TestNames(t *testing.T) {
	c := Default()
	c.Balancer.Zones = []string{"lb.example", "LB.internal"}
	c.DNS.Listen = ":53"
	c.Services = map[string]Service{
		"User-Srv": {Aliases: []string{"Users.", "users:443"}, Tags: []string{"V2", "canary"}, ChildPolicy: "pick_first"},
		"orders":   {Aliases: []string{"ord"}},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	wantAliases := map[string]string{
		"user-srv":  "user-srv@canary,v2",
		"users":     "user-srv@canary,v2",
		"users:443": "user-srv@canary,v2",
		"ord":       "orders",
	}
	if diff := cmp.Diff(wantAliases, c.Aliases()); diff != "" {
		t.Errorf("Aliases (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"lb.example", "LB.internal"}, c.Zones()); diff != "" {
		t.Errorf("Zones (-want +got):\n%s", diff)
	}
	c.DNS.Zone = "dns.example"
	if diff := cmp.Diff([]string{"lb.example", "LB.internal", "dns.example"}, c.Zones()); diff != "" {
		t.Errorf("Zones with dns.zone (-want +got):\n%s", diff)
	}
	c.DNS.Listen = ""
	if diff := cmp.Diff([]string{"lb.example", "LB.internal"}, c.Zones()); diff != "" {
		t.Errorf("Zones with DNS off (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"user-srv": "pick_first"}, c.ChildPolicies()); diff != "" {
		t.Errorf("ChildPolicies (-want +got):\n%s", diff)
	}
	canon := c.Canonical()
	wantServices := map[string]Service{
		"user-srv": {Aliases: []string{"users", "users:443"}, Tags: []string{"canary", "v2"}, ChildPolicy: "pick_first"},
		"orders":   {Aliases: []string{"ord"}},
	}
	if diff := cmp.Diff(wantServices, canon.Services); diff != "" {
		t.Errorf("Canonical().Services (-want +got):\n%s", diff)
	}
	if c.Services["User-Srv"].Aliases[0] != "Users." {
		t.Error("Canonical changed the config it was called on")
	}
}

// Two service names the encoder cannot order (invalid UTF-8 that decodes
// alike) still print one way, so that a configuration parsed twice prints
// the same.
func TestMarshalOrdersServicesByKey(t *testing.T) {
	c := Default()
	c.Services = map[string]Service{"0000\xfa": {Aliases: []string{"2"}}, "0000\x9b": {Aliases: []string{"c"}}, "b": {}, "a": {}}
	first := c.String()
	for range 50 {
		if got := c.String(); got != first {
			t.Fatalf("printed two ways:\n%s\n---\n%s", first, got)
		}
	}
	if a, b := strings.Index(first, "\n  a:"), strings.Index(first, "\n  b:"); a < 0 || b < a {
		t.Errorf("services not in key order:\n%s", first)
	}
}
