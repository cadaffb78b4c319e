package dnsserver

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// BalancerLabel is the label, right under the zone, of the balancer
// replicas' names: the replica at 10.0.0.5 is 10-0-0-5.balancer.<zone>.
const BalancerLabel = "balancer"

// Labels of the records A5 and A2 define.
const (
	grpclbLabel = "_grpclb"
	tcpLabel    = "_tcp"
	configLabel = "_grpc_config"
)

// targetLabel encodes ip as one DNS label: 10-0-0-5 for IPv4, eight groups
// of four hex digits for IPv6 (2001-0db8-0000-0000-0000-0000-0000-0001),
// so that no label starts or ends with '-', which resolvers reject.
func targetLabel(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return strings.ReplaceAll(ip.String(), ".", "-")
	}
	b := ip.As16()
	var sb strings.Builder
	for i := 0; i < 16; i += 2 {
		if i > 0 {
			sb.WriteByte('-')
		}
		fmt.Fprintf(&sb, "%02x%02x", b[i], b[i+1])
	}
	return sb.String()
}

// parseTargetLabel is the inverse of targetLabel; it accepts only the
// canonical form, so each IP has exactly one name.
func parseTargetLabel(label string) (netip.Addr, bool) {
	parts := strings.Split(label, "-")
	var ip netip.Addr
	switch len(parts) {
	case 4:
		var b [4]byte
		for i, p := range parts {
			n, err := strconv.ParseUint(p, 10, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			b[i] = byte(n)
		}
		ip = netip.AddrFrom4(b)
	case 8:
		var b [16]byte
		for i, p := range parts {
			n, err := strconv.ParseUint(p, 16, 16)
			if err != nil || len(p) != 4 {
				return netip.Addr{}, false
			}
			b[2*i], b[2*i+1] = byte(n>>8), byte(n)
		}
		ip = netip.AddrFrom16(b)
		if ip.Is4In6() {
			return netip.Addr{}, false // named by its IPv4 form
		}
	default:
		return netip.Addr{}, false
	}
	if targetLabel(ip) != label {
		return netip.Addr{}, false
	}
	return ip, true
}

// validServiceLabel reports whether label (lowercase) can name a service:
// 1 to 63 bytes of a-z, 0-9, '-' and '_', not starting with '_' (those are
// the record labels) nor with or ending in '-'.
func validServiceLabel(label string) bool {
	if label == "" || len(label) > 63 || label[0] == '_' || label[0] == '-' || label[len(label)-1] == '-' {
		return false
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// nameKind says what a name of the zone holds.
type nameKind int

const (
	kindNone     nameKind = iota // NXDOMAIN
	kindApex                     // SOA
	kindService                  // A/AAAA of the service's instances
	kindSRV                      // SRV of the balancers
	kindTXT                      // TXT service config
	kindEmpty                    // an empty non-terminal: _tcp.<svc>
	kindBalancer                 // A/AAAA of one replica
)

// classify says what rel, a lowercase name relative to the zone ("" for
// the apex, "user-srv", "_grpclb._tcp.user-srv"), holds. label is the
// service label, or the replica label for kindBalancer.
func classify(rel string) (kind nameKind, label string) {
	if rel == "" {
		return kindApex, ""
	}
	if strings.Contains(rel, `\`) {
		return kindNone, "" // escaped bytes: never one of our names
	}
	l := strings.Split(rel, ".")
	switch {
	case len(l) == 1 && validServiceLabel(l[0]):
		return kindService, l[0]
	case len(l) == 2 && l[0] == configLabel && validServiceLabel(l[1]):
		return kindTXT, l[1]
	case len(l) == 2 && l[0] == tcpLabel && validServiceLabel(l[1]):
		return kindEmpty, l[1]
	case len(l) == 2 && l[1] == BalancerLabel:
		if _, ok := parseTargetLabel(l[0]); ok {
			return kindBalancer, l[0]
		}
	case len(l) == 3 && l[0] == grpclbLabel && l[1] == tcpLabel && validServiceLabel(l[2]):
		return kindSRV, l[2]
	}
	return kindNone, ""
}
