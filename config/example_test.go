package config

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestExamples loads the example files the docs point to: they must pass
// Validate as shipped.
func TestExamples(t *testing.T) {
	for _, path := range []string{"../examples/lookaside.yaml", "../examples/lookaside-minimal.yaml"} {
		t.Run(path, func(t *testing.T) {
			c, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate:\n%v", err)
			}
			if len(c.Services) == 0 || !c.Register.Enabled || c.Admin.Listen != "127.0.0.1:9090" {
				t.Errorf("Load(%s) lost settings: services %v, register %v, admin %q", path, c.Services, c.Register.Enabled, c.Admin.Listen)
			}
		})
	}
}

// typePaths lists the YAML paths of t's leaves; a map of sections is
// written with <name> for its keys ("services.<name>.policy").
func typePaths(t reflect.Type, prefix string) []string {
	switch {
	case t == durationType:
	case t.Kind() == reflect.Struct:
		var out []string
		for i := range t.NumField() {
			if name := yamlName(t.Field(i)); name != "" {
				out = append(out, typePaths(t.Field(i).Type, joinPath(prefix, name))...)
			}
		}
		return out
	case t.Kind() == reflect.Map && t.Elem().Kind() == reflect.Struct:
		return typePaths(t.Elem(), prefix+".<name>")
	case t.Kind() == reflect.Pointer:
		return typePaths(t.Elem(), prefix)
	}
	return []string{prefix}
}

// nodePaths lists the paths of the keys set in a YAML tree, section maps'
// keys written <name>.
func nodePaths(n *yaml.Node, t reflect.Type, prefix string, out map[string]bool) {
	if n.Kind == yaml.DocumentNode {
		nodePaths(n.Content[0], t, prefix, out)
		return
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind != yaml.MappingNode || t == durationType || (t.Kind() != reflect.Struct && !(t.Kind() == reflect.Map && t.Elem().Kind() == reflect.Struct)) {
		out[prefix] = true
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if t.Kind() == reflect.Map {
			nodePaths(v, t.Elem(), prefix+".<name>", out)
			continue
		}
		f := yamlFields(t)[k.Value]
		nodePaths(v, t.FieldByIndex(f).Type, joinPath(prefix, k.Value), out)
	}
}

// TestFullExampleSetsEveryKey keeps examples/lookaside.yaml complete:
// every key of the tree appears in it, but for the commented-out ones
// (files that must exist, secrets, static backends).
func TestFullExampleSetsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../examples/lookaside.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var n yaml.Node
	if err := yaml.Unmarshal(data, &n); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	nodePaths(&n, reflect.TypeFor[Config](), "", set)
	var missing []string
	for _, p := range typePaths(reflect.TypeFor[Config](), "") {
		if !set[p] {
			missing = append(missing, p)
		}
	}
	commented := []string{
		"balancer.lb_token_key_file",
		"consul.tls.ca_file", "consul.tls.cert_file", "consul.tls.insecure_skip_verify", "consul.tls.key_file", "consul.tls.server_name",
		"consul.token", "consul.token_file",
		"load_reports.tls.ca_file", "load_reports.tls.cert_file", "load_reports.tls.insecure_skip_verify", "load_reports.tls.key_file", "load_reports.tls.server_name",
		"static.file", "static.services",
		"tls.cert_file", "tls.client_ca_file", "tls.key_file",
	}
	slices.Sort(missing)
	if strings.Join(missing, "\n") != strings.Join(commented, "\n") {
		t.Errorf("keys missing from examples/lookaside.yaml:\n got: %v\nwant: %v (commented out there)", missing, commented)
	}
	for _, p := range commented {
		key := p[strings.LastIndex(p, ".")+1:]
		if !strings.Contains(string(data), "# "+key+":") && !strings.Contains(string(data), "#   "+key+":") && !strings.Contains(string(data), "# "+p) {
			t.Errorf("examples/lookaside.yaml does not show %s, even commented out", p)
		}
	}
}

// TestDocsListEveryKey keeps docs/config.md complete: every path of the
// tree appears there in backquotes.
func TestDocsListEveryKey(t *testing.T) {
	data, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range typePaths(reflect.TypeFor[Config](), "") {
		if !strings.Contains(string(data), "`"+p+"`") {
			t.Errorf("docs/config.md does not describe `%s`", p)
		}
	}
}
