package static

import "testing"

// FuzzParseSpec: a spec either is rejected or gives endpoints that the
// balancer can put in a list: IPs, ports 1-65535, weights in range, IDs
// unique per service.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"user-srv=127.0.0.1:50051,127.0.0.1:50052*3;other=[::1]:9000",
		"a=", "=1.2.3.4:5", "a=host:80", "a=1.2.3.4:0", "a=1.2.3.4:1*0", "a=1.2.3.4:1*99999", ";;", "a=[::ffff:1.2.3.4]:8",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		services, err := ParseSpec(spec)
		if err != nil {
			return
		}
		for svc, eps := range services {
			ids := map[string]bool{}
			for _, ep := range eps {
				if !ep.Addr.Addr().IsValid() || ep.Addr.Port() == 0 || ep.Weight < 1 || ep.Weight > MaxWeight || ep.ID == "" || ids[ep.ID] {
					t.Fatalf("ParseSpec(%q): service %q has a bad endpoint %+v", spec, svc, ep)
				}
				ids[ep.ID] = true
			}
		}
	})
}
