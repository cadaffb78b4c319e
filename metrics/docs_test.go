package metrics

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestDocsListEveryMetric: docs/metrics.md has a table row for every
// lookaside_ metric, and no row for a metric that does not exist.
func TestDocsListEveryMetric(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	row := regexp.MustCompile("^\\| `(lookaside_[a-z_]+)` \\|")
	for _, line := range strings.Split(string(doc), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			documented = append(documented, m[1])
		}
	}
	descs := make(chan *prometheus.Desc, 100)
	go func() {
		(*collector)(New(Sources{})).Describe(descs)
		close(descs)
	}()
	var exported []string
	name := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range descs {
		if m := name.FindStringSubmatch(d.String()); m != nil {
			exported = append(exported, m[1])
		}
	}
	slices.Sort(documented)
	slices.Sort(exported)
	for _, n := range exported {
		if !slices.Contains(documented, n) {
			t.Errorf("%s is not in docs/metrics.md", n)
		}
	}
	for _, n := range documented {
		if !slices.Contains(exported, n) {
			t.Errorf("docs/metrics.md lists %s, which is not exported", n)
		}
	}
	if len(exported) < 30 {
		t.Errorf("only %d metrics described: %v", len(exported), exported)
	}
}
