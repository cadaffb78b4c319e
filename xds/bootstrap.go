package xds

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
)

// BootstrapOptions describe the xDS server a client's bootstrap names.
type BootstrapOptions struct {
	// Server is the host:port of the balancer's xDS listener.
	Server string
	// NodeID identifies the client to the server (logs, NACK reports).
	// Empty: "lookaside-client".
	NodeID string
	// CAFile, when set, makes the client verify the server over TLS with
	// this CA bundle. With CertFile and KeyFile it also presents its own
	// certificate (mutual TLS). Empty: plaintext.
	CAFile, CertFile, KeyFile string
}

// Bootstrap returns the bootstrap JSON a gRPC client reads from the file
// GRPC_XDS_BOOTSTRAP names (or GRPC_XDS_BOOTSTRAP_CONFIG holds) to reach
// the server: one xDS server with the xds_v3 feature, channel credentials
// "insecure" or "tls" (gRFC A65), and a node ID.
func Bootstrap(o BootstrapOptions) ([]byte, error) {
	if _, _, err := net.SplitHostPort(o.Server); err != nil {
		return nil, fmt.Errorf("xds: bootstrap server %q: %w", o.Server, err)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("xds: bootstrap needs both a certificate and a key file, or neither")
	}
	if o.CertFile != "" && o.CAFile == "" {
		return nil, errors.New("xds: bootstrap client certificate without a CA file")
	}
	if o.NodeID == "" {
		o.NodeID = "lookaside-client"
	}
	type creds struct {
		Type   string            `json:"type"`
		Config map[string]string `json:"config,omitempty"`
	}
	c := creds{Type: "insecure"}
	if o.CAFile != "" {
		c = creds{Type: "tls", Config: map[string]string{"ca_certificate_file": o.CAFile}}
		if o.CertFile != "" {
			c.Config["certificate_file"] = o.CertFile
			c.Config["private_key_file"] = o.KeyFile
		}
	}
	doc := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      o.Server,
			"channel_creds":   []creds{c},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]string{"id": o.NodeID},
	}
	return json.MarshalIndent(doc, "", "  ")
}
