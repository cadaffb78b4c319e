package admin

import (
	"strings"
	"testing"
	"time"

	"github.com/lookaside-lb/lookaside/lbserver"
)

// FuzzStatusPage renders the page with strings from Consul (service name,
// instance IDs, node, address, policy source, fallback reason, replica
// and error text) set to the fuzzer's and checks that they add no markup:
// the page has as many '<', '>' and '"' as the same status with each
// non-empty such string replaced by "x" (an empty one stays empty: the
// page leaves out what is empty).
func FuzzStatusPage(f *testing.F) {
	for _, s := range []string{"user-srv", evilName, xssName, `"><svg onload=alert(1)>`, "</style><script>", "é\xff\x00", "{{.Nonce}}", "]]><!--"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, name, id string) {
		count := func(st Status) [3]int {
			v := viewOf(st)
			v.Nonce = "n"
			var b strings.Builder
			if err := page.Execute(&b, v); err != nil {
				t.Fatalf("rendering with name %q, id %q: %v", name, id, err)
			}
			out := b.String()
			return [3]int{strings.Count(out, "<"), strings.Count(out, ">"), strings.Count(out, `"`)}
		}
		if got, want := count(statusWith(name, id)), count(statusWith(safe(name), safe(id))); got != want {
			t.Errorf("name %q, id %q add markup: '<', '>', '\"' counts %v, want %v", name, id, got, want)
		}
	})
}

// safe is "x" for a non-empty s, "" for an empty one.
func safe(s string) string {
	if s == "" {
		return ""
	}
	return "x"
}

// statusWith is a status whose strings from outside are name and id.
func statusWith(name, id string) Status {
	now := time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)
	ep := lbserver.EndpointStatus{ID: id, InstanceID: id, Node: name, Address: id, Weight: 1, Health: name, LoadStream: name,
		CallsAttributed: 3, FirstOf: 1}
	return Status{
		Now:      now,
		Build:    BuildInfo{Version: name, Revision: id},
		Listen:   name,
		Ready:    true,
		Consul:   &ConsulStatus{Address: name, LastError: id, LastErrorAt: now, LastContact: now},
		Replicas: []Replica{{Address: name, ID: id, Node: name, Health: id}},
		Services: []lbserver.ServiceStatus{{
			Service: name, Policy: id, PolicySource: name, ChildPolicy: id, Fallback: true, FallbackReason: name,
			Ready: true, RateLimitDropShare: 0.1, DropToken: id, Endpoints: []lbserver.EndpointStatus{ep},
			RoundRobinList: []lbserver.ListEntry{{ID: id, Address: name}, {Drop: true, DropToken: id}},
			PickFirst:      lbserver.ListEntry{ID: id, Address: name},
		}},
	}
}
