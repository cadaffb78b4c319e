package lbserver

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lookaside-lb/lookaside/discovery"
)

// recObserver records Observer calls as strings: "started svc",
// "ended svc ok", "list svc 2/0 change" (entries/drops, "change" when
// sinceChange ≥ 0, else "other"), "fallback svc reason", "refused limit".
type recObserver struct {
	mu     sync.Mutex
	events []string
}

func (o *recObserver) add(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf(format, args...))
}

func (o *recObserver) StreamStarted(svc string)        { o.add("started %s", svc) }
func (o *recObserver) StreamEnded(svc, outcome string) { o.add("ended %s %s", svc, outcome) }
func (o *recObserver) ListSent(svc string, entries, drops int, since time.Duration) {
	cause := "other"
	if since >= 0 {
		cause = "change"
	}
	o.add("list %s %d/%d %s", svc, entries, drops, cause)
}
func (o *recObserver) FallbackSent(svc, reason string) { o.add("fallback %s %s", svc, reason) }
func (o *recObserver) Refused(limit string)            { o.add("refused %s", limit) }

// take returns the events recorded since the last take.
func (o *recObserver) take() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	ev := o.events
	o.events = nil
	return ev
}

// await waits up to 5 s until the events recorded since the last take
// include want (as a multiset), then returns them all.
func (o *recObserver) await(t *testing.T, want ...string) []string {
	t.Helper()
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		got = append(got, o.take()...)
		if containsAll(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("observer events %q, want them to include %q", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func containsAll(got, want []string) bool {
	left := slices.Clone(got)
	for _, w := range want {
		i := slices.Index(left, w)
		if i < 0 {
			return false
		}
		left = slices.Delete(left, i, i+1)
	}
	return true
}

// TestObserver: each stream is started and ended once under a bounded
// service label with its outcome; lists carry whether a discovery change
// caused them; fallbacks their reason; refusals their limit.
func TestObserver(t *testing.T) {
	src := newFakeSource(snap("svc", ep("a", "127.0.0.1:1")), snap("empty"))
	dir := newFakeDir(true, "svc", "empty")
	cfg := testConfig(dirSrc{src, dir})
	cfg.LoadReports = false
	obs := &recObserver{}
	cfg.Observer = obs
	s, c := startServer(t, cfg)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, err := c.BalanceLoad(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var others []lbStream
	steps := []struct {
		name string
		do   func(t *testing.T)
		want []string
	}{
		{"a stream's first list", func(t *testing.T) {
			if err := first.Send(initial("SVC:80")); err != nil {
				t.Fatal(err)
			}
			recv(t, first)
			recvList(t, first)
		}, []string{"started svc", "list svc 1/0 other"}},
		{"a list after a discovery change", func(t *testing.T) {
			src.Push(snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")))
			recvList(t, first)
		}, []string{"list svc 2/0 change"}},
		{"an unknown service", func(t *testing.T) {
			st := openOK(t, c, "no-such-service:80")
			if r := recv(t, st); r.GetFallbackResponse() == nil {
				t.Fatalf("got %v, want a fallback", r)
			}
			others = append(others, st)
		}, []string{"started _unknown", "fallback _unknown unknown_service"}},
		{"a service without instances", func(t *testing.T) {
			st := openOK(t, c, "empty")
			if r := recv(t, st); r.GetFallbackResponse() == nil {
				t.Fatalf("got %v, want a fallback", r)
			}
			others = append(others, st)
		}, []string{"started empty", "fallback empty no_instances"}},
		{"an invalid name", func(t *testing.T) {
			st := open(t, c, "has space")
			if _, err := st.Recv(); codes.InvalidArgument != status.Code(err) {
				t.Fatalf("Recv: %v, want InvalidArgument", err)
			}
		}, []string{"started ", "ended  invalid"}},
		{"the client ends its stream", func(t *testing.T) {
			cancel()
		}, []string{"ended svc ok"}},
		{"a refusal by a limit lowered below the streams open", func(t *testing.T) {
			set := s.Settings()
			set.MaxStreams, set.MaxStreamsPerIP, set.MaxStreamsPerConn = 1, 1, 1
			if err := s.Reconfigure(set); err != nil {
				t.Fatal(err)
			}
			st := open(t, c, "svc")
			if _, err := st.Recv(); status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("Recv: %v, want ResourceExhausted", err)
			}
		}, []string{"refused max_streams_per_conn"}},
		{"the server closes", func(t *testing.T) {
			s.Close()
		}, []string{"ended _unknown shutdown", "ended empty shutdown"}},
	}
	var all []string
	for _, step := range steps {
		step.do(t)
		got := obs.await(t, step.want...)
		all = append(all, got...)
	}
	// Every stream started was ended once, under the same label.
	open := map[string]int{}
	for _, e := range all {
		f := strings.Split(e, " ")
		switch f[0] {
		case "started":
			open[f[1]]++
		case "ended":
			open[f[1]]--
		}
	}
	for svc, n := range open {
		if n != 0 {
			t.Errorf("service %q: %d more starts than ends in %q", svc, n, all)
		}
	}
	for _, e := range all {
		f := strings.Split(e, " ")
		if f[0] == "ended" && !slices.Contains(Outcomes, f[2]) {
			t.Errorf("outcome %q is not in Outcomes", f[2])
		}
		if f[0] == "fallback" && !slices.Contains(FallbackReasons, f[2]) {
			t.Errorf("reason %q is not in FallbackReasons", f[2])
		}
		if f[0] == "refused" && !slices.Contains(LimitNames, f[1]) {
			t.Errorf("limit %q is not in LimitNames", f[1])
		}
	}
	if len(others) != 2 {
		t.Errorf("%d streams kept, want 2", len(others))
	}
}

// TestObserverStreamMovesWithAlias: a stream whose alias a reconfiguration
// points at another service ends under the old label as "moved" and
// starts under the new one, where it gets the new service's list.
func TestObserverStreamMovesWithAlias(t *testing.T) {
	src := newFakeSource(snap("one", ep("a", "127.0.0.1:1")), snap("two", ep("b", "127.0.0.1:2")))
	cfg := testConfig(dirSrc{src, newFakeDir(true, "one", "two")})
	cfg.LoadReports = false
	cfg.Aliases = map[string]string{"users": "one"}
	obs := &recObserver{}
	cfg.Observer = obs
	s, c := startServer(t, cfg)
	st := openOK(t, c, "users:80")
	if got := recvList(t, st); !cmpEqual(got, []string{"127.0.0.1:1"}) {
		t.Fatalf("list %v, want one's; events %q", got, obs.take())
	}
	set := s.Settings()
	set.Aliases = map[string]string{"users": "two"}
	if err := s.Reconfigure(set); err != nil {
		t.Fatal(err)
	}
	if got := recvList(t, st); !cmpEqual(got, []string{"127.0.0.1:2"}) {
		t.Fatalf("list %v after the alias moved, want two's", got)
	}
	obs.await(t, "started one", "ended one moved", "started two", "list two 1/0 other")
	if n := s.Stats().StreamsActive; n != 1 {
		t.Errorf("%d streams active, want the one", n)
	}
}

// TestObserverLabelAfterDirectoryRead: a stream that comes before the
// directory was read is counted under UnknownServiceLabel; when the
// directory is read (~200 ms later) and lists its service, the stream
// moves to the service's label ("moved", then started again), and what
// it reports from then on (lists, its end) is counted there. Status
// counts it under the service all along. A service the directory does not
// list keeps its stream under UnknownServiceLabel.
func TestObserverLabelAfterDirectoryRead(t *testing.T) {
	for _, tc := range []struct {
		name string
		// snapshot: the source answers at once (else only after the
		// directory was read, so the read comes while the stream waits
		// for its first list); listed: the directory lists svc.
		snapshot, listed bool
		want             []string
	}{
		{"read after the first list", true, true, []string{
			"started _unknown", "list _unknown 1/0 other", "ended _unknown moved", "started svc",
			"list svc 2/0 change", "ended svc ok"}},
		{"read while waiting for the first list", false, true, []string{
			"started _unknown", "ended _unknown moved", "started svc", "list svc 1/0 other",
			"list svc 2/0 change", "ended svc ok"}},
		{"read, not listed", true, false, []string{
			"started _unknown", "list _unknown 1/0 other", "list _unknown 2/0 change", "ended _unknown ok"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var snaps []discovery.Snapshot
			if tc.snapshot {
				snaps = append(snaps, snap("svc", ep("a", "127.0.0.1:1")))
			}
			src := newFakeSource(snaps...)
			dir := newFakeDir(false)
			cfg := testConfig(dirSrc{src, dir})
			cfg.LoadReports = false
			cfg.FirstListTimeout = time.Minute
			obs := &recObserver{}
			cfg.Observer = obs
			s, c := startServer(t, cfg)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := c.BalanceLoad(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(initial("SVC:80")); err != nil {
				t.Fatal(err)
			}
			var seen []string
			if tc.snapshot {
				recv(t, st)
				recvList(t, st)
			} else {
				seen = obs.await(t, "started _unknown")
			}
			if got := streamsOf(s.Status()); got["svc"] != 1 {
				t.Errorf("before the directory was read: Status streams %v, want svc: 1", got)
			}
			time.Sleep(200 * time.Millisecond)
			dir.set("svc", tc.listed)
			if !tc.snapshot {
				seen = append(seen, obs.await(t, "started svc")...) // before the first list
				src.Push(snap("svc", ep("a", "127.0.0.1:1")))
				recv(t, st)
				recvList(t, st)
			}
			src.Push(snap("svc", ep("a", "127.0.0.1:1"), ep("b", "127.0.0.1:2")))
			recvList(t, st)
			if got := streamsOf(s.Status()); got["svc"] != 1 {
				t.Errorf("after the directory was read: Status streams %v, want svc: 1", got)
			}
			cancel()
			// One stream's events come in order, from its handler.
			got := append(seen, obs.await(t, tc.want[len(tc.want)-1])...)
			if !slices.Equal(got, tc.want) {
				t.Errorf("observer events %q, want %q", got, tc.want)
			}
		})
	}
}

// streamsOf returns the streams of each service of st.
func streamsOf(st []ServiceStatus) map[string]int {
	out := map[string]int{}
	for _, s := range st {
		out[s.Service] = s.Streams
	}
	return out
}
