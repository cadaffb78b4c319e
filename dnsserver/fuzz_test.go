package dnsserver

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

// recorder is a dns.ResponseWriter that keeps what the server writes.
type recorder struct {
	network string
	msgs    []*dns.Msg
}

func (r *recorder) LocalAddr() net.Addr {
	if r.network == "tcp" {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (r *recorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 5353}
}
func (r *recorder) WriteMsg(m *dns.Msg) error { r.msgs = append(r.msgs, m); return nil }
func (r *recorder) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	r.msgs = append(r.msgs, m)
	return len(b), nil
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

// FuzzServeDNS: whatever message arrives, the server answers at most once,
// with the query's ID, in a message that packs, and within the UDP size
// when over UDP; it never panics.
func FuzzServeDNS(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"_grpclb._tcp.user-srv.lb.internal.", dns.TypeSRV},
		{"user-srv.lb.internal.", dns.TypeA},
		{"user-srv.lb.internal.", dns.TypeAAAA},
		{"_grpc_config.user-srv.lb.internal.", dns.TypeTXT},
		{"lb.internal.", dns.TypeSOA},
		{"nope.lb.internal.", dns.TypeA},
		{"example.com.", dns.TypeA},
		{"lb.internal.", dns.TypeAXFR},
		{"user-srv.lb.internal.", dns.TypeANY},
		{"127-0-0-1.balancer.lb.internal.", dns.TypeANY},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		m.SetEdns0(4096, false)
		b, _ = m.Pack()
		f.Add(b, true)
	}
	cfg := testConfig()
	s, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte, tcp bool) {
		// The rate limiter's truncated answer, built from the raw bytes.
		if b := truncatedReply(raw, cfg.MaxUDPSize); b != nil {
			tr := new(dns.Msg)
			if err := tr.Unpack(b); err != nil || !tr.Truncated || len(tr.Answer)+len(tr.Ns) != 0 {
				t.Fatalf("truncated reply %v does not unpack as an empty TC answer: %v", tr, err)
			}
			if len(b) > len(raw)+11 {
				t.Fatalf("truncated reply of %d bytes to a %d-byte query", len(b), len(raw))
			}
		}
		req := new(dns.Msg)
		if err := req.Unpack(raw); err != nil {
			return
		}
		w := &recorder{network: "udp"}
		if tcp {
			w.network = "tcp"
		}
		s.ServeDNS(w, req)
		if len(w.msgs) > 1 {
			t.Fatalf("%d answers to one query", len(w.msgs))
		}
		if len(w.msgs) == 0 {
			return
		}
		resp := w.msgs[0]
		if resp.Id != req.Id {
			t.Fatalf("answer ID %d, query ID %d", resp.Id, req.Id)
		}
		b, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, resp)
		}
		if !tcp {
			limit := dns.MinMsgSize
			if o := req.IsEdns0(); o != nil {
				limit = max(min(int(o.UDPSize()), cfg.MaxUDPSize), dns.MinMsgSize)
			}
			// Nor more than MaxUDPRatio times the question (as the server
			// sizes it), unless the answer is empty but for the question
			// and the OPT record, which is no larger than the question.
			limit = min(limit, cfg.MaxUDPRatio*req.Len())
			if len(resp.Answer)+len(resp.Ns) == 0 && len(b) <= req.Len()+11 {
				limit = max(limit, len(b))
			}
			if len(b) > limit {
				t.Fatalf("UDP answer of %d bytes, over the client's %d", len(b), limit)
			}
		}
	})
}
