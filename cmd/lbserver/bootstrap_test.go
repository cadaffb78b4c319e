package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

func TestXDSBootstrap(t *testing.T) {
	type creds struct {
		Type   string            `json:"type"`
		Config map[string]string `json:"config"`
	}
	type doc struct {
		XDSServers []struct {
			ServerURI      string   `json:"server_uri"`
			ChannelCreds   []creds  `json:"channel_creds"`
			ServerFeatures []string `json:"server_features"`
		} `json:"xds_servers"`
		Node struct {
			ID string `json:"id"`
		} `json:"node"`
	}
	tests := []struct {
		args     []string
		code     int
		server   string
		node     string
		creds    string
		certFile string
		stderr   string
	}{
		{args: []string{"-server", "lb.internal:7000"}, server: "lb.internal:7000", node: "lookaside-client", creds: "insecure"},
		{args: []string{"-server", "10.0.0.1:7000", "-node", "orders-1", "-ca", "/etc/ca.pem"}, server: "10.0.0.1:7000", node: "orders-1", creds: "tls"},
		{args: []string{"-server", "[::1]:7000", "-ca", "ca.pem", "-cert", "c.pem", "-key", "k.pem"}, server: "[::1]:7000", node: "lookaside-client", creds: "tls", certFile: "c.pem"},
		{args: nil, code: 2, stderr: "-server is required"},
		{args: []string{"-server", "lb.internal"}, code: 2, stderr: "missing port"},
		{args: []string{"-server", "a:1", "-cert", "c.pem", "-key", "k.pem"}, code: 2, stderr: "without a CA file"},
		{args: []string{"-server", "a:1", "-ca", "ca.pem", "-cert", "c.pem"}, code: 2, stderr: "both a certificate and a key"},
		{args: []string{"-server", "a:1", "extra"}, code: 2, stderr: "unexpected arguments"},
		{args: []string{"-h"}, code: 0, stderr: "GRPC_XDS_BOOTSTRAP"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"xds-bootstrap"}, tc.args...), &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("%q: code %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.stderr)
			continue
		}
		if tc.server == "" {
			if stdout.Len() != 0 {
				t.Errorf("%q: printed %q on failure", tc.args, stdout.String())
			}
			continue
		}
		var d doc
		if err := json.Unmarshal(stdout.Bytes(), &d); err != nil {
			t.Fatalf("%q: %v in %s", tc.args, err, stdout.String())
		}
		if len(d.XDSServers) != 1 || d.XDSServers[0].ServerURI != tc.server || d.Node.ID != tc.node ||
			len(d.XDSServers[0].ChannelCreds) != 1 || d.XDSServers[0].ChannelCreds[0].Type != tc.creds ||
			d.XDSServers[0].ChannelCreds[0].Config["certificate_file"] != tc.certFile ||
			len(d.XDSServers[0].ServerFeatures) != 1 || d.XDSServers[0].ServerFeatures[0] != "xds_v3" {
			t.Errorf("%q: bootstrap %s", tc.args, stdout.String())
		}
	}
}
