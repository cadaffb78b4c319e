package consul

import "testing"

// FuzzParseTarget: a target either is rejected or parses to a Target
// whose String (with secrets redacted) parses again to the same service.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"consul://127.0.0.1:8500/user-srv?wait=14s&tag=srv",
		"consul://u:p@[::1]:8500/svc?healthy=false&dc=dc1&limit=3&lb=off",
		"consul:///svc?tag=a,b&tag=c&max-backoff=2s&timeout=1s",
		"consul://h/", "consul://h/svc?wait=-1s", "consul://h/svc?nope=1", "consul://h/a/b", "%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		tg, err := ParseTarget(target)
		if err != nil {
			return
		}
		again, err := ParseTarget(tg.String())
		if err != nil {
			t.Fatalf("ParseTarget(%q) = %v, whose String %q does not parse: %v", target, tg, tg.String(), err)
		}
		if again.Service != tg.Service {
			t.Fatalf("round trip of %q changed the service: %q → %q", target, tg.Service, again.Service)
		}
	})
}
