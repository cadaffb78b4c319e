package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/lookaside-lb/lookaside/xds"
)

// bootstrapCommand is the name of the subcommand that prints an xDS
// bootstrap.
const bootstrapCommand = "xds-bootstrap"

// runBootstrap is `lbserver xds-bootstrap`: it prints the bootstrap JSON
// a gRPC xDS client reads (GRPC_XDS_BOOTSTRAP) to reach the balancer at
// -server, and returns the exit code: 0, 2 for bad flags.
func runBootstrap(args []string, stdout, stderr io.Writer) int {
	var o xds.BootstrapOptions
	fs := flag.NewFlagSet("lbserver "+bootstrapCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Server, "server", "", "the balancer's `host:port` (its -listen, as clients reach it); required")
	fs.StringVar(&o.NodeID, "node", "", "node `ID` the client sends (in the balancer's logs of its NACKs); default lookaside-client")
	fs.StringVar(&o.CAFile, "ca", "", "CA certificates `file` (PEM) the client verifies the balancer's TLS certificate with; default plaintext")
	fs.StringVar(&o.CertFile, "cert", "", "client certificate `file` (PEM) for a balancer that requires mTLS (-tls-client-ca); needs -ca and -key")
	fs.StringVar(&o.KeyFile, "key", "", "client key `file` (PEM) of -cert")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: lbserver %s -server HOST:PORT [-node ID] [-ca FILE [-cert FILE -key FILE]]

Prints the xDS bootstrap (JSON) that makes a gRPC client dialing
xds:///<service> ask this balancer for <service>'s endpoints and policy.
Write it to a file and point GRPC_XDS_BOOTSTRAP at it (docs/xds.md). The
file paths are written as given: they must be the paths on the client.

`, bootstrapCommand)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lbserver %s: unexpected arguments: %q\n", bootstrapCommand, fs.Args())
		return 2
	}
	if o.Server == "" {
		fmt.Fprintf(stderr, "lbserver %s: -server is required\n", bootstrapCommand)
		return 2
	}
	b, err := xds.Bootstrap(o)
	if err != nil {
		fmt.Fprintf(stderr, "lbserver %s: %v\n", bootstrapCommand, err)
		return 2
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}
