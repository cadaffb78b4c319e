package lbserver

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"

	"github.com/lookaside-lb/lookaside/policy"
	"github.com/lookaside-lb/lookaside/policy/weightedroundrobin"
)

// listWatcher collects the lists a stream receives.
type listWatcher struct {
	name  string
	lists chan []string // closed when the stream ends
}

func watchLists(t *testing.T, name string, st lbStream) *listWatcher {
	t.Helper()
	w := &listWatcher{name: name, lists: make(chan []string, 100)}
	go func() {
		defer close(w.lists)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			if l := r.GetServerList(); l != nil {
				w.lists <- addrs(l)
			}
		}
	}()
	return w
}

// next waits up to 5 s for a list that satisfies ok, skipping others.
func (w *listWatcher) next(t *testing.T, what string, ok func([]string) bool) []string {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case l, open := <-w.lists:
			if !open {
				t.Fatalf("%s: stream ended, want %s", w.name, what)
			}
			if ok(l) {
				return l
			}
		case <-timeout:
			t.Fatalf("%s: no list within 5s: want %s", w.name, what)
		}
	}
}

// quiet fails if a list (or the stream's end) arrives within d.
func (w *listWatcher) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case l, open := <-w.lists:
		if !open {
			t.Errorf("%s: stream ended; want it untouched", w.name)
		} else {
			t.Errorf("%s: got list %v; want none", w.name, l)
		}
	case <-time.After(d):
	}
}

func countOf(list []string, entry string) int {
	n := 0
	for _, e := range list {
		if e == entry {
			n++
		}
	}
	return n
}

// TestReconfigureUnderLiveStreams: each change of settings reaches the
// streams of the services it concerns as a new list, and only them; no
// stream is dropped; a limit lowered below the streams open refuses new
// streams only; bad settings change nothing.
func TestReconfigureUnderLiveStreams(t *testing.T) {
	a, b, c := ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2"), ep("c", "127.0.0.1:3")
	b.Weight = 3
	src := newFakeSource(snap("svc", a, b, c), snap("other", ep("d", "127.0.0.4:1")))
	cfg := testConfig(dirSrc{src, newFakeDir(true, "svc", "other")})
	cfg.LoadReports = false
	cfg.ClientStatsInterval = time.Second // a 5 s window for the rate limit
	cfg.MaxClientRateShare = 100          // one test client may drive it
	cfg.Aliases = map[string]string{"users": "svc"}
	s, client := startServer(t, cfg)

	streams := map[string]lbStream{}
	w := map[string]*listWatcher{}
	for _, o := range []struct{ key, name string }{{"s1", "svc:80"}, {"s2", "svc:80"}, {"s3", "users:80"}, {"s4", "other:80"}} {
		st := openOK(t, client, o.name)
		streams[o.key] = st
		w[o.key] = watchLists(t, o.key, st)
		w[o.key].next(t, "a first list", func([]string) bool { return true })
	}
	const open = 4

	tests := []struct {
		name   string
		change func(*Settings)
		// during runs after Reconfigure, while the lists are awaited.
		during func(t *testing.T, stop <-chan struct{})
		want   map[string]func([]string) bool // streams that get a new list, and what it must satisfy
		quiet  []string                       // streams that must get none
		check  func(t *testing.T)
	}{
		{
			name: "policy of svc → weighted_round_robin",
			change: func(set *Settings) {
				set.Services = map[string]ServiceSettings{"svc": {Policy: weightedroundrobin.Name}}
			},
			want: map[string]func([]string) bool{
				"s1": func(l []string) bool { return len(l) == 5 && countOf(l, "127.0.0.1:2") == 3 },
				"s2": func(l []string) bool { return len(l) == 5 && countOf(l, "127.0.0.1:2") == 3 },
				"s3": func(l []string) bool { return len(l) == 5 && countOf(l, "127.0.0.1:2") == 3 },
			},
			quiet: []string{"s4"},
			check: func(t *testing.T) {
				if got := s.Settings().Services["svc"].Policy; got != weightedroundrobin.Name {
					t.Errorf("Settings: policy of svc %q, want the one in force", got)
				}
			},
		},
		{
			name: "alias users → other",
			change: func(set *Settings) {
				set.Aliases = map[string]string{"users": "other"}
			},
			want: map[string]func([]string) bool{
				"s3": func(l []string) bool { return cmpEqual(l, []string{"127.0.0.4:1"}) },
			},
			quiet: []string{"s1", "s2", "s4"},
		},
		{
			name: "rate limit on svc, exceeded",
			change: func(set *Settings) {
				set.Services = map[string]ServiceSettings{"svc": {Policy: weightedroundrobin.Name, RateLimit: 1}}
			},
			during: func(t *testing.T, stop <-chan struct{}) {
				// s1 reports 100 calls every 600 ms (within its report rate).
				tick := time.NewTicker(600 * time.Millisecond)
				defer tick.Stop()
				for {
					if err := streams["s1"].Send(clientStats(100)); err != nil {
						return
					}
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			},
			want: map[string]func([]string) bool{
				"s1": func(l []string) bool { return countOf(l, "drop:"+policy.DropTokenRateLimit) > 0 },
				"s2": func(l []string) bool { return countOf(l, "drop:"+policy.DropTokenRateLimit) > 0 },
			},
			quiet: []string{"s3", "s4"},
		},
		{
			name: "stream limits lowered below the streams open",
			change: func(set *Settings) {
				set.MaxStreams, set.MaxStreamsPerIP, set.MaxStreamsPerConn = 2, 2, 2
			},
			quiet: []string{"s3", "s4"},
			check: func(t *testing.T) {
				openRefused(t, client, "svc:80", codes.ResourceExhausted, "limit max-streams-per-conn")
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := s.Settings()
			tc.change(&set)
			if err := s.Reconfigure(set); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				if tc.during != nil {
					tc.during(t, stop)
				}
			}()
			keys := make([]string, 0, len(tc.want))
			for k := range tc.want {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				w[k].next(t, "the new list", tc.want[k])
			}
			close(stop)
			<-done
			for _, k := range tc.quiet {
				w[k].quiet(t, 200*time.Millisecond)
			}
			if tc.check != nil {
				tc.check(t)
			}
			if n := s.Stats().StreamsActive; n != open {
				t.Errorf("%d streams active, want the %d open before", n, open)
			}
		})
		// The rate-limited lists may keep changing as the rate is
		// measured: drain them before the next change.
		for _, k := range []string{"s1", "s2", "s3", "s4"} {
			for len(w[k].lists) > 0 {
				<-w[k].lists
			}
		}
	}
}

// TestReconfigureValidates: bad settings are refused with every error,
// each naming the setting and its value, and nothing changes.
func TestReconfigureValidates(t *testing.T) {
	cfg := testConfig(newFakeSource())
	cfg.MaxStreamsPerConn = 50
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := s.Settings()
	tests := []struct {
		name   string
		change func(*Settings)
		want   []string
	}{
		{"unknown default policy", func(set *Settings) { set.Policy = "fastest" }, []string{`unknown policy "fastest"`}},
		{"per-service errors, all at once", func(set *Settings) {
			set.Services = map[string]ServiceSettings{"svc": {Policy: "nope", RateLimit: -1, MaxDropShare: 2, MaxRateLimitDropShare: 1.5, ChildPolicy: "grpclb"}}
		}, []string{`service "svc"`, `unknown policy "nope"`, "rate limit -1", "max drop share 2", "max rate-limit drop share 1.5", `child policy "grpclb"`}},
		{"per-service options", func(set *Settings) {
			set.Services = map[string]ServiceSettings{"svc": {PolicyOptions: policy.Options{MaxEntries: 4, HashSubset: 9}}}
		}, []string{"hash subset 9"}},
		{"service name with a tag filter", func(set *Settings) {
			set.Services = map[string]ServiceSettings{"svc@v2": {}}
		}, []string{`service "svc@v2" is not a service name`}},
		{"limits", func(set *Settings) { set.MaxStreams, set.MaxStreamsPerIP = 10, 20 }, []string{"max streams per IP 20"}},
		{"raising per-connection streams over the HTTP/2 bound", func(set *Settings) { set.MaxStreamsPerConn = 60 },
			[]string{"max streams per connection 60 is above 50"}},
		{"load weights", func(set *Settings) { set.LoadWeight.MaxDropShare = 1 }, []string{"max drop share 1 is not in"}},
		{"rate-limit knobs", func(set *Settings) { set.MaxClientRateShare = 0 }, []string{"max client rate share 0"}},
		{"send timeout", func(set *Settings) { set.SendTimeout = time.Millisecond }, []string{"send timeout 1ms"}},
		{"alias", func(set *Settings) { set.Aliases = map[string]string{"a b": "svc"} }, []string{`alias "a b"`}},
		{"names differing in case", func(set *Settings) {
			set.Services = map[string]ServiceSettings{"svc": {}, "SVC": {}}
		}, []string{"case-insensitively"}},
	}
	for _, tc := range tests {
		set := s.Settings()
		tc.change(&set)
		err := s.Reconfigure(set)
		if err == nil {
			t.Errorf("%s: Reconfigure accepted it", tc.name)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, want)
			}
		}
		if diff := cmp.Diff(before, s.Settings()); diff != "" {
			t.Errorf("%s: settings changed though refused (-before +after):\n%s", tc.name, diff)
		}
	}
}

// TestReconfigureReachesStreamsPromptly: a policy change reaches 200 live
// streams of the service as new lists within a second (it logs how long
// the last one took: docs/RELIABILITY.md).
func TestReconfigureReachesStreamsPromptly(t *testing.T) {
	a, b := ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")
	b.Weight = 3
	cfg := testConfig(newFakeSource(snap("svc", a, b)))
	cfg.LoadReports = false
	cfg.MaxStreamsPerConn = 300
	s, client := startServer(t, cfg)
	const n = 200
	var ws []*listWatcher
	for i := range n {
		st := openOK(t, client, "svc")
		w := watchLists(t, fmt.Sprint(i), st)
		w.next(t, "a first list", func([]string) bool { return true })
		ws = append(ws, w)
	}
	set := s.Settings()
	set.Services = map[string]ServiceSettings{"svc": {Policy: weightedroundrobin.Name}}
	start := time.Now()
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		w.next(t, "the weighted list", func(l []string) bool { return len(l) == 4 })
	}
	took := time.Since(start)
	t.Logf("a policy change reached %d streams in %v", n, took)
	if took > time.Second {
		t.Errorf("a policy change took %v to reach %d streams, want under 1s", took, n)
	}
}
