package xds

import (
	"context"
	"io"
	"net/netip"

	"google.golang.org/grpc/peer"
)

// errEOF is how a stream's Recv reports that the client closed its side.
var errEOF = io.EOF

// peerOf returns the address of the stream's client; zero when unknown.
func peerOf(ctx context.Context) netip.AddrPort {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.AddrPort{}
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}
