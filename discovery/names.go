package discovery

import (
	"slices"
	"strings"
)

// TagSeparator separates a service from the tags its instances must carry,
// in the name a client asks for: "user-srv@srv" watches the instances of
// user-srv tagged srv, "user-srv@srv,v2" those tagged both. Clients that
// filter by tag (the consul:// resolver's tag parameter) send such names
// as their grpclb serviceName, so the balancer lists the same instances
// the client would.
const TagSeparator = "@"

// SplitName splits a watched name into its service and tags. Empty tags
// are dropped.
func SplitName(name string) (service string, tags []string) {
	service, list, ok := strings.Cut(name, TagSeparator)
	if !ok {
		return name, nil
	}
	for _, t := range strings.Split(list, ",") {
		if t != "" {
			tags = append(tags, t)
		}
	}
	return service, tags
}

// JoinName is the inverse of SplitName, in a canonical form: tags sorted
// and unique, so that the same filter always gives the same name.
func JoinName(service string, tags []string) string {
	tags = slices.Clone(tags)
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if i := slices.Index(tags, ""); i >= 0 {
		tags = slices.Delete(tags, i, i+1)
	}
	if len(tags) == 0 {
		return service
	}
	return service + TagSeparator + strings.Join(tags, ",")
}

// Canonical returns the canonical form of a watched name: the service and
// its tags in lower case (Consul matches both case-insensitively), tags
// sorted and unique. Names that differ only in case or tag order watch
// the same instances, so they share one watch, one plan and one set of
// per-service settings. Safe for concurrent use.
func Canonical(name string) string {
	base, tags := SplitName(strings.ToLower(name))
	return JoinName(base, tags)
}
