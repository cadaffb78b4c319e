package lbserver

import (
	"fmt"
	"net"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lookaside-lb/lookaside/discovery"
)

// DefaultMaxNameLength bounds the name in an initial request.
const DefaultMaxNameLength = 255

// NameMapper maps the name a grpclb client sends to the service to watch.
//
// Clients send their dial target's host with its port ("user-srv:50051"),
// or the serviceName of their grpclb config. Map looks the name up in
// Aliases as sent, then without its port, then uses the host itself: so an
// alias may be specific to one port ("users:443" → "user-srv") or cover all
// ("users" → "user-srv"). A trailing dot of a fully qualified name is removed
// first, and so is a DNS zone the balancer serves ("user-srv.lb.internal"
// → "user-srv"), before the host is looked up. A tag filter after the
// service ("user-srv@srv", see discovery.SplitName) is kept, with its tags
// sorted.
//
// Names are matched and returned in canonical form (discovery.Canonical):
// Consul matches services and tags case-insensitively, so "USER-SRV:80"
// maps to "user-srv", and case variants share one watch and the same
// per-service settings. Read-only after construction; safe for concurrent
// use.
type NameMapper struct {
	// Aliases maps client names to service names. Keys must be in lower
	// case without a trailing dot (ParseAliases, CanonicalAliases and New
	// make them so); they match client names case-insensitively.
	Aliases map[string]string
	// Zones are DNS zones (without trailing dot, such as "lb.internal")
	// whose names map to the service named by their first labels.
	Zones []string
	// MaxLength is the longest name accepted, in bytes.
	MaxLength int
}

// ValidateName checks that name is a plausible dial target or service name:
// non-empty, at most max bytes of valid UTF-8, with no whitespace, control
// characters or URL delimiters ('/', '?', '#', '%', '\\').
func ValidateName(name string, max int) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty")
	case len(name) > max:
		return fmt.Errorf("name is %d bytes, longer than %d", len(name), max)
	case !utf8.ValidString(name):
		return fmt.Errorf("name is not valid UTF-8")
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("/?#%\\", r) {
			return fmt.Errorf("name contains %q", r)
		}
	}
	return nil
}

// Map returns the canonical service for a client name, or an error if the
// name is invalid. It does not say whether the service exists.
func (m NameMapper) Map(name string) (string, error) {
	if err := ValidateName(name, m.MaxLength); err != nil {
		return "", err
	}
	svc, err := m.mapValid(name)
	if err != nil {
		return "", err
	}
	// Lower case can be longer than the name sent (a few runes grow).
	if err := ValidateName(svc, m.MaxLength); err != nil {
		return "", fmt.Errorf("name maps to an invalid service: %w", err)
	}
	return svc, nil
}

func (m NameMapper) mapValid(name string) (string, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if svc, ok := m.Aliases[name]; ok {
		return discovery.Canonical(svc), nil
	}
	host := name
	if h, _, err := net.SplitHostPort(name); err == nil {
		host = strings.TrimSuffix(h, ".")
	}
	if svc, ok := m.Aliases[host]; ok {
		return discovery.Canonical(svc), nil
	}
	for _, z := range m.Zones {
		if svc, ok := strings.CutSuffix(host, "."+strings.ToLower(z)); ok && svc != "" {
			host = svc
			if svc, ok := m.Aliases[host]; ok {
				return discovery.Canonical(svc), nil
			}
			break
		}
	}
	if host == "" {
		return "", fmt.Errorf("name has no host")
	}
	// A tag filter ("user-srv@srv,v2") is kept, in canonical order, so
	// that clients asking for the same instances share one watch.
	base, tags := discovery.SplitName(host)
	if base == "" {
		return "", fmt.Errorf("name has no service before %q", discovery.TagSeparator)
	}
	if emptyLabel(base) {
		return "", fmt.Errorf("name has an empty label")
	}
	for _, t := range tags {
		if emptyLabel(t) {
			return "", fmt.Errorf("tag %q has an empty label", t)
		}
	}
	return discovery.JoinName(base, tags), nil
}

// emptyLabel reports whether a dotted name has an empty label: a leading
// or trailing dot, or two dots in a row.
func emptyLabel(s string) bool {
	return strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..")
}

// CanonicalAliases returns aliases with keys in lower case without a
// trailing dot, and services in canonical form, as NameMapper needs them.
// Two names that differ only in case are an error.
func CanonicalAliases(aliases map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(aliases))
	for name, svc := range aliases {
		key := strings.ToLower(strings.TrimSuffix(name, "."))
		if prev, dup := out[key]; dup {
			return nil, fmt.Errorf("alias %q: %q is already mapped (to %q); names match case-insensitively", name, key, prev)
		}
		out[key] = discovery.Canonical(svc)
	}
	return out, nil
}

// canonicalServiceKeys returns m with its keys (service names) in
// canonical form. Two keys that differ only in case are an error naming
// what (the setting).
func canonicalServiceKeys[V any](what string, m map[string]V) (map[string]V, error) {
	out := make(map[string]V, len(m))
	orig := make(map[string]string, len(m))
	for k, v := range m {
		c := discovery.Canonical(k)
		if prev, dup := orig[c]; dup {
			return nil, fmt.Errorf("%s: %q and %q are the same service (names match case-insensitively)", what, prev, k)
		}
		orig[c] = k
		out[c] = v
	}
	return out, nil
}

// ParseAliases parses "name=service,name2=service2" into an alias map,
// validating both sides. Names are returned in lower case without a
// trailing dot; names that differ only in case are mapped twice, an error.
func ParseAliases(spec string, max int) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(spec) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(spec, ",") {
		name, svc, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return nil, fmt.Errorf("alias %q: want name=service", kv)
		}
		if err := ValidateName(name, max); err != nil {
			return nil, fmt.Errorf("alias %q: %w", kv, err)
		}
		if err := ValidateName(svc, max); err != nil || strings.Contains(svc, ":") {
			return nil, fmt.Errorf("alias %q: service %q is not a service name", kv, svc)
		}
		key := strings.ToLower(strings.TrimSuffix(name, "."))
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("alias %q: %q is mapped twice (names match case-insensitively)", kv, name)
		}
		out[key] = svc
	}
	return out, nil
}
