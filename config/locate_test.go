package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLoadValidLocatesErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lookaside.yaml")
	data := `listen: nowhere
limits:
  max_streams_per_ip: 0
register:
  enabled: true
tls_defaults: &t
  enabled: true
  server_name: x
load_reports:
  tls:
    <<: *t
    enabled: false
dns:
  allow:
    - 10.0.0.0/8
    - 10.0.0.1/8
services:
  "a.b":
    aliases: [ok, "bad name"]
`
	// Anchors must sit under known keys: decoding fails first.
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadValid(path)
	want := path + `: line 6: tls_defaults: unknown key (keys of the top level: listen, shutdown_timeout, log, consul, static, register, balancer, load_reports, rate_limits, limits, dns, tls, admin, xds, services)`
	if err == nil || err.Error() != want {
		t.Fatalf("LoadValid:\n got: %v\nwant: %s", err, want)
	}
	// Decoded: every validation error, each at its line.
	data = `listen: 0.0.0.0:7000
limits:
  max_streams_per_ip: 0
register:
  enabled: true
consul:
  tls: &t
    enabled: true
load_reports:
  tls:
    <<: *t
    server_name: backend
    insecure_skip_verify: true
    ca_file: ` + filepath.Join(dir, "missing.pem") + `
dns:
  allow:
    - 10.0.0.0/8
    - 10.0.0.1/8
services:
  "a.b":
    aliases: [ok, "bad name"]
`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadValid(path)
	var got []string
	for _, e := range err.(Errors) {
		got = append(got, e.Error())
	}
	missing := filepath.Join(dir, "missing.pem")
	wantLines := []string{
		path + `: line 18: dns.allow[1]: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)`,
		path + `: line 3: limits.max_streams_per_ip: 0 is not in [1, limits.max_streams 50000]`,
		path + `: line 14: load_reports.tls.ca_file: "` + missing + `" cannot be read: no such file or directory`,
		path + `: line 13: load_reports.tls.insecure_skip_verify: true and load_reports.tls.ca_file are both set: the CA would be ignored`,
		// Not in the file: the nearest section it sets.
		path + `: line 4: register.advertise: "" is needed: listen "0.0.0.0:7000" has no host others can reach`,
		path + `: line 21: services."a.b".aliases[1]: "bad name" contains ' '`,
	}
	if diff := cmp.Diff(wantLines, got); diff != "" {
		t.Errorf("LoadValid errors (-want +got):\n%s", diff)
	}
}

func TestLocate(t *testing.T) {
	data := []byte("consul:\n  tls: &t\n    enabled: true\nload_reports:\n  tls:\n    <<: *t\n  interval: 90s\nlisten: nowhere\n")
	es := Errors{
		{Path: "load_reports.tls.enabled", Msg: "m"},              // through the merge key
		{Path: "balancer.policy", Value: `"x"`, Msg: "m"},         // a default the file does not touch
		{Path: "consul.tls", Value: "y", Msg: "m"},                // a section: no value to rewrite
		{Path: "", Msg: "m", Line: 9},                             // a line already known stays
		{Path: "load_reports.interval", Value: "1m30s", Msg: "m"}, // as written
		{Path: "listen", Value: `"nowhere"`, Msg: "m"},
	}
	got := Locate("f.yaml", data, es).(Errors)
	want := []struct {
		line  int
		value string
	}{{3, ""}, {0, `"x"`}, {2, "y"}, {9, ""}, {7, "90s"}, {8, `"nowhere"`}}
	for i, e := range got {
		if e.Line != want[i].line || e.Value != want[i].value || e.File != "f.yaml" {
			t.Errorf("Locate(%q) = line %d value %s file %q, want line %d value %s", e.Path, e.Line, e.Value, e.File, want[i].line, want[i].value)
		}
	}
	if es[0].Line != 0 {
		t.Error("Locate changed its argument")
	}
	if err := Locate("f", data, nil); err != nil {
		t.Errorf("Locate(nil) = %v", err)
	}
}

func TestSplitPath(t *testing.T) {
	got := splitPath(`services."a.b".aliases[12].x`)
	want := []segment{{key: "services"}, {key: "a.b"}, {key: "aliases"}, {index: 12}, {key: "x"}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(segment{})); diff != "" {
		t.Errorf("splitPath (-want +got):\n%s", diff)
	}
}
