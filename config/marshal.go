package config

import (
	"bytes"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/lookaside-lb/lookaside/discovery"
)

// Redacted replaces secrets (consul.token) in Marshal's output.
const Redacted = "<redacted>"

// Marshal writes c as YAML, every field included (the effective
// configuration, for lbserver -validate -print), secrets replaced by
// Redacted. Service fields left to inherit are omitted. Parse reads it
// back to c (but for the secrets). Safe for concurrent use.
func (c Config) Marshal() ([]byte, error) {
	if c.Consul.Token != "" {
		c.Consul.Token = Redacted
	}
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return nil, err
	}
	sortServices(&doc)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// sortServices orders the services section of doc (a Config encoded as a
// mapping) by the keys' encoded values, byte by byte. The encoder's own
// order ranks two names of invalid UTF-8 alike and leaves them in the map's
// random order, so that one configuration would print two ways.
func sortServices(doc *yaml.Node) {
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value != "services" || doc.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		m := doc.Content[i+1]
		type pair struct{ k, v *yaml.Node }
		pairs := make([]pair, 0, len(m.Content)/2)
		for j := 0; j+1 < len(m.Content); j += 2 {
			pairs = append(pairs, pair{m.Content[j], m.Content[j+1]})
		}
		slices.SortStableFunc(pairs, func(a, b pair) int { return strings.Compare(a.k.Value, b.k.Value) })
		for j, p := range pairs {
			m.Content[2*j], m.Content[2*j+1] = p.k, p.v
		}
	}
}

// String is Marshal's output, or the error it met.
func (c Config) String() string {
	b, err := c.Marshal()
	if err != nil {
		return "config: " + err.Error()
	}
	return string(b)
}

// Canonical returns a copy of c with names in the form the balancer
// matches them: service keys canonical (discovery.Canonical: lower case),
// aliases in lower case without a trailing dot, service tags in lower case,
// sorted and unique. Call it on a config that passed Validate (which
// rejects names that would collide); of two colliding keys, one is kept.
// Safe for concurrent use.
func (c Config) Canonical() Config {
	out := c
	out.Services = make(map[string]Service, len(c.Services))
	for _, k := range sortedKeys(c.Services) {
		s := c.Services[k]
		s.Aliases = slices.Clone(s.Aliases)
		for i, a := range s.Aliases {
			s.Aliases[i] = aliasKey(a)
		}
		s.Tags = canonicalTags(s.Tags)
		out.Services[discovery.Canonical(k)] = s
	}
	if c.Services == nil {
		out.Services = nil
	}
	return out
}

func canonicalTags(tags []string) []string {
	if len(tags) == 0 {
		return nil
	}
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = strings.ToLower(t)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Watched returns the name the balancer watches for the service at key:
// its canonical name, with its tags as a filter ("user-srv@canary,v2")
// when it has tags. Safe for concurrent use.
func (c Config) Watched(key string) string {
	s := c.Services[key]
	return discovery.JoinName(discovery.Canonical(key), canonicalTags(s.Tags))
}

// Aliases returns the client names that map to services, as
// lbserver's NameMapper takes them: each alias (lower case, without a
// trailing dot) to its service's watched name (see Watched), and for a
// service with tags, its own name to its watched name too, so that
// clients naming it get only the tagged instances. Call it on a config
// that passed Validate. Safe for concurrent use.
func (c Config) Aliases() map[string]string {
	out := map[string]string{}
	for _, k := range sortedKeys(c.Services) {
		w := c.Watched(k)
		if len(c.Services[k].Tags) > 0 {
			out[discovery.Canonical(k)] = w
		}
		for _, a := range c.Services[k].Aliases {
			out[aliasKey(a)] = w
		}
	}
	return out
}

// Zones returns the DNS zones whose names map to services: balancer.zones,
// and dns.zone when the DNS responder is on (dns.listen set), each once
// (zones match case-insensitively). Safe for concurrent use.
func (c Config) Zones() []string {
	var out []string
	seen := map[string]bool{}
	add := func(z string) {
		if k := strings.ToLower(z); !seen[k] {
			seen[k] = true
			out = append(out, z)
		}
	}
	for _, z := range c.Balancer.Zones {
		add(z)
	}
	if c.DNS.Listen != "" {
		add(c.DNS.Zone)
	}
	return out
}

// ChildPolicies returns the child policy of each service that sets one,
// by canonical service name, as dnsserver.Config.ServiceChildPolicies
// takes them. Safe for concurrent use.
func (c Config) ChildPolicies() map[string]string {
	out := map[string]string{}
	for k, s := range c.Services {
		if s.ChildPolicy != "" {
			out[discovery.Canonical(k)] = s.ChildPolicy
		}
	}
	return out
}
