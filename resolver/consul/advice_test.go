package consul

import (
	"strings"
	"testing"

	"github.com/lookaside-lb/lookaside/internal/consulwatch"
)

// TestAdviceNamesTargetParameters: the ERROR lines of a resolver tell its
// users to fix the target, not to set lbserver's flags.
func TestAdviceNamesTargetParameters(t *testing.T) {
	for _, tc := range []struct {
		kind consulwatch.Kind
		want string
	}{
		{consulwatch.ACLDenied, `the target's "token" parameter`},
		{consulwatch.NoDatacenter, `the target's "dc" parameter`},
	} {
		got := tc.kind.Advice(adviceHints)
		if !strings.Contains(got, tc.want) || strings.Contains(got, "-consul-") {
			t.Errorf("%v advice = %q, want it to name %s and no lbserver flag", tc.kind, got, tc.want)
		}
	}
}
