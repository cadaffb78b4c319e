package clientstats

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	lbpb "google.golang.org/grpc/balancer/grpclb/grpc_lb_v1"

	"github.com/lookaside-lb/lookaside/policy"
)

// FuzzClientStats feeds a sequence of ClientStats from a few streams of two
// services (one rate-limited) into a Registry and checks that totals are
// never negative, that what the streams count for stays within the bounds
// of the Config (calls within MaxCallRate, offered calls within ShareRate),
// and that the state is pruned to nothing once every stream and service
// is forgotten.
//
// The input is read as operations of 27 bytes: stream (4 streams; stream
// 3 reports to the unlimited service), time step in ms (2 bytes), kind
// (forget the stream, or report), then started, finished (int64, so
// negative and huge counts occur) and a drop entry's token choice and count
// (a uint16 for both).
func FuzzClientStats(f *testing.F) {
	op := func(stream byte, stepMS uint16, forget bool, started, finished int64, token byte, dropped uint16) []byte {
		b := []byte{stream}
		b = binary.BigEndian.AppendUint16(b, stepMS)
		if forget {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.BigEndian.AppendUint64(b, uint64(started))
		b = binary.BigEndian.AppendUint64(b, uint64(finished))
		b = append(b, token)
		b = binary.BigEndian.AppendUint16(b, dropped)
		return append(b, 0, 0, 0, 0, 0) // padding to 27
	}
	cat := func(ops ...[]byte) []byte {
		var b []byte
		for _, o := range ops {
			b = append(b, o...)
		}
		return b
	}
	f.Add(cat(op(0, 10000, false, 100, 100, 1, 5), op(1, 10000, false, 1<<40, 1<<40, 0, 1), op(0, 0, true, 0, 0, 0, 0)))
	f.Add(cat(op(0, 0, false, -1, 3, 2, 0), op(2, 1, false, 1<<62, -1<<62, 3, 65535), op(3, 65535, false, 1<<40, 0, 1, 9)))
	f.Add(cat(op(1, 1, false, 5, 5, 0, 0), op(1, 1, false, 5, 5, 0, 0), op(1, 1, false, 5, 5, 0, 0), op(1, 1, false, 5, 5, 0, 0)))
	f.Fuzz(func(t *testing.T, data []byte) {
		const shareRate = 50.0
		cfg := Config{
			MaxCallRate:   1000,
			Burst:         20 * time.Second,
			MaxReportRate: 0.2,
			ReportBurst:   3,
			ShareRate: func(svc string) float64 {
				if svc == "limited" {
					return shareRate
				}
				return 0
			},
			ShareBurst: 10 * time.Second,
		}
		r := New(cfg)
		tokens := []string{policy.DropTokenOverload, policy.DropTokenRateLimit, "be-x", ""}
		key := func(s byte) ClientKey {
			// Streams 0 and 1 share an address.
			k := ClientKey{Service: "limited", Stream: uint64(s % 4), Peer: []string{"10.0.0.1:1", "10.0.0.1:2", "[2001:db8::1]:3", "10.0.0.3:4"}[s%4]}
			if s%4 == 3 {
				k.Service = "free"
			}
			return k
		}
		now := t0
		// Per stream slot: the time its current stream started, and the
		// budget of the streams that held it and went.
		type slot struct {
			live             bool
			since            time.Time
			callBudget       float64 // calls the slot's ended streams could count
			shareBudget      float64 // offered calls the same
			streamGeneration uint64
		}
		var slots [4]slot
		for len(data) >= 27 {
			b := data[:27]
			data = data[27:]
			s := b[0] % 4
			now = now.Add(time.Duration(binary.BigEndian.Uint16(b[1:3])) * time.Millisecond)
			sl := &slots[s]
			k := key(s)
			k.Stream += 4 * sl.streamGeneration
			if b[3]%2 == 1 {
				if sl.live {
					d := now.Sub(sl.since).Seconds()
					sl.callBudget += cfg.MaxCallRate * (d + cfg.Burst.Seconds())
					sl.shareBudget += shareRate * d
				}
				r.Forget(k)
				sl.live = false
				sl.streamGeneration++
				continue
			}
			if !sl.live {
				sl.live, sl.since = true, now
			}
			cs := &lbpb.ClientStats{
				NumCallsStarted:  int64(binary.BigEndian.Uint64(b[4:12])),
				NumCallsFinished: int64(binary.BigEndian.Uint64(b[12:20])),
				CallsFinishedWithDrop: []*lbpb.ClientStatsPerToken{{
					LoadBalanceToken: tokens[b[20]%4] + fmt.Sprint(b[20]/4%2),
					NumCalls:         int64(binary.BigEndian.Uint16(b[21:23])),
				}},
			}
			if b[20]/4%2 == 0 {
				cs.CallsFinishedWithDrop[0].LoadBalanceToken = tokens[b[20]%4]
			}
			r.Add(k, cs, now)
		}
		var callBudget, shareBudget float64
		for s := range slots {
			sl := &slots[s]
			callBudget += sl.callBudget
			if s != 3 {
				shareBudget += sl.shareBudget
			}
			if sl.live {
				d := now.Sub(sl.since).Seconds()
				callBudget += cfg.MaxCallRate * (d + cfg.Burst.Seconds())
				if s != 3 {
					shareBudget += shareRate * d
				}
			}
		}
		var started int64
		for _, svc := range []string{"limited", "free"} {
			c := r.Service(svc)
			for name, v := range map[string]int64{"reports": c.Reports, "started": c.Started, "finished": c.Finished,
				"failed to send": c.FailedToSend, "known received": c.KnownReceived, "offered": c.Offered} {
				if v < 0 {
					t.Fatalf("%s: %s %d is negative", svc, name, v)
				}
			}
			if len(c.Dropped) > len(KnownDropTokens)+1 {
				t.Fatalf("%s: %d drop tokens kept: %v", svc, len(c.Dropped), c.Dropped)
			}
			for tok, n := range c.Dropped {
				if n < 0 || (tok != OtherDropToken && tok != policy.DropTokenOverload && tok != policy.DropTokenRateLimit) {
					t.Fatalf("%s: dropped[%q] = %d", svc, tok, n)
				}
			}
			if c.Offered > c.Started {
				t.Fatalf("%s: offered %d > started %d", svc, c.Offered, c.Started)
			}
			started += c.Started
		}
		if float64(started) > callBudget+1 {
			t.Fatalf("started %d calls, over the budget %.0f", started, callBudget)
		}
		if off := r.Service("limited").Offered; float64(off) > shareBudget+1 {
			t.Fatalf("offered %d calls to the limited service, over the share budget %.0f", off, shareBudget)
		}
		for s := range slots {
			k := key(byte(s))
			k.Stream += 4 * slots[s].streamGeneration
			r.Forget(k)
		}
		r.ForgetService("limited")
		r.ForgetService("free")
		if ns, nc, na := r.Len(); ns != 0 || nc != 0 || na != 0 {
			t.Fatalf("after forgetting all: %d services, %d clients, %d addresses", ns, nc, na)
		}
	})
}
