//go:build tools

// Package tools pins the open-source Consul release that the tests run.
package tools

import _ "github.com/hashicorp/consul"
