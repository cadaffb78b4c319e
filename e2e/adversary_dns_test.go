package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/dnsserver"
	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
)

// countingSource counts the watches started through it, per name.
type countingSource struct {
	discovery.Source
	mu      sync.Mutex
	watches map[string]int // guarded by mu
}

func (c *countingSource) Watch(ctx context.Context, service string, publish func(discovery.Snapshot)) error {
	c.mu.Lock()
	c.watches[service]++
	c.mu.Unlock()
	return c.Source.Watch(ctx, service, publish)
}

// others returns the number of watches started for names not in known.
func (c *countingSource) others(known ...string) (n int, names []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, k := range c.watches {
		isKnown := false
		for _, kn := range known {
			isKnown = isKnown || name == kn
		}
		if !isKnown {
			n += k
			names = append(names, name)
		}
	}
	return n, names
}

// countingDirSource is a countingSource that keeps its source's
// Directory.
type countingDirSource struct {
	*countingSource
	dir discovery.Directory
}

func (c countingDirSource) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	return c.dir.Lookup(service)
}

// catalogDirectory is a discovery.Directory that reads Consul's catalog
// of services every 200 ms, for sources that are not a Directory
// themselves. Run it with run.
type catalogDirectory struct {
	mu       sync.Mutex
	services map[string]bool // guarded by mu
	ready    bool            // guarded by mu
	changed  chan struct{}   // guarded by mu
}

func (d *catalogDirectory) Lookup(service string) (exists, ready bool, changed <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.services[service], d.ready, d.changed
}

// run reads the catalog until ctx is done. Blocks.
func (d *catalogDirectory) run(ctx context.Context) {
	for {
		services, _, err := agent.Client().Catalog().Services((&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			d.mu.Lock()
			d.services = map[string]bool{}
			for s := range services {
				d.services[s] = true
			}
			d.ready = true
			close(d.changed)
			d.changed = make(chan struct{})
			d.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// udpFlood is one source of UDP questions; every answer's size is
// compared with its question's.
type udpFlood struct {
	sent, sentBytes, got, gotBytes, truncated atomic.Int64
	qlen                                      [65536]atomic.Int32 // by message ID
	mu                                        sync.Mutex
	maxRatio                                  float64 // guarded by mu
	maxWhat                                   string  // guarded by mu
}

// run sends questions from src (an IP on loopback) to addr at about pps
// per second until stop or until it sent count (0: no limit), then reads
// answers for 300 ms more. gen makes the i-th question. Blocks.
func (f *udpFlood) run(t *testing.T, src, addr string, pps, count int, stop <-chan struct{}, gen func(i int) *dns.Msg) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0)))
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			f.got.Add(1)
			f.gotBytes.Add(int64(n))
			if m.Truncated {
				f.truncated.Add(1)
			}
			if ql := f.qlen[m.Id].Load(); ql > 0 {
				if r := float64(n) / float64(ql); r > f.maxRatio {
					f.mu.Lock()
					if r > f.maxRatio {
						f.maxRatio = r
						f.maxWhat = fmt.Sprintf("%s %s: %d bytes for %d", m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], n, ql)
					}
					f.mu.Unlock()
				}
			}
		}
	})
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	i := 0
loop:
	for {
		select {
		case <-stop:
			break loop
		case <-tick.C:
		}
		for range max(pps/100, 1) {
			if count > 0 && i == count {
				break loop
			}
			m := gen(i)
			m.Id = uint16(i)
			i++
			b, err := m.Pack()
			if err != nil {
				t.Error(err)
				break loop
			}
			f.qlen[m.Id].Store(int32(len(b)))
			if _, err := conn.WriteToUDP(b, to); err == nil {
				f.sent.Add(1)
				f.sentBytes.Add(int64(len(b)))
			}
		}
	}
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	wg.Wait()
}

func (f *udpFlood) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("sent %d (%d B), answers %d (%d B, %d truncated), largest answer/question ×%.1f (%s)",
		f.sent.Load(), f.sentBytes.Load(), f.got.Load(), f.gotBytes.Load(), f.truncated.Load(), f.maxRatio, f.maxWhat)
}

// TestAdversaryDNSFlood sends 500 random names from 20 sources, then
// floods the DNS responder for 5 s from loopback sources (ANY, large
// answers and random names with EDNS0 4096 from one source far over its
// rate, a source outside -dns-allow, 40 idle TCP connections from one IP)
// while an honest client that dialed through DNS keeps calling and a new
// client dials through DNS every 250 ms. Asserted: no honest call or dial fails; the 500 random names
// start no watch; no answer is more than 10 times its question; each
// guard counted its refusals.
func TestAdversaryDNSFlood(t *testing.T) {
	t.Parallel()
	svc := serviceName(t)
	lbSvc := svc + "-lb"
	_, port := startSamePortBackends(t, svc, 8) // a large A answer
	startDNSLB(t, lbSvc, nil)
	waitPassing(t, lbSvc, 1)

	var counting *countingSource
	var dirName string
	var dnsDir discovery.Directory
	dir := &catalogDirectory{changed: make(chan struct{})}
	wrap := func(src discovery.Source) discovery.Source {
		counting = &countingSource{Source: src, watches: map[string]int{}}
		if d, ok := src.(discovery.Directory); ok {
			dirName = "the source's own"
			dnsDir = d
			return countingDirSource{countingSource: counting, dir: d}
		}
		return counting
	}
	d := startDNSWith(t, lbSvc, func(c *dnsserver.Config) {
		// Only the lower half of 127/8: 127.0.0.200 is an outsider.
		c.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/25")}
		if dnsDir == nil {
			dnsDir = dir
		}
		c.Directory = dnsDir
	}, wrap)
	if dirName == "" {
		dirName = "a test directory reading Consul's catalog"
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); dir.run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	t.Logf("directory of services: %s", dirName)
	waitSRV(t, d.addr, svc, 1, "the balancer in SRV")

	honestClient := dnsClient(t, d.addr, svc, port)
	waitBalanced(t, honestClient, 20*time.Second, "the honest client balanced")
	ld := startLoad(t.Context(), honestClient, 5*time.Millisecond)
	before := d.srv.Stats()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var peakHandlers atomic.Int64
	wg.Go(func() {
		buf := make([]byte, 16<<20)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if n := int64(dnsHandlerGoroutines(buf)); n > peakHandlers.Load() {
				peakHandlers.Store(n)
			}
		}
	})
	// New clients dial through DNS during the flood. A UDP question can be
	// lost (the kernel drops what the responder's socket cannot hold while
	// the machine is busy); grpc-go's resolver then asks again after 5 s,
	// so a first call gets 15 s.
	var dials, dialFails atomic.Int64
	var dialMu sync.Mutex
	var dialTimes []time.Duration // guarded by dialMu
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			start := time.Now()
			c := dnsClient(t, d.addr, svc, port)
			dials.Add(1)
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			_, err := c.GetUserList(ctx, &userpb.PageInfo{Pn: 1, PSize: 1})
			cancel()
			if err != nil {
				dialFails.Add(1)
				t.Errorf("a new client dialing through DNS during the flood: %v", err)
				continue
			}
			dialMu.Lock()
			dialTimes = append(dialTimes, time.Since(start))
			dialMu.Unlock()
		}
	})
	udpErrsBefore := udpRcvbufErrors()

	zone := "." + dnsZone + "."
	q := func(name string, qtype uint16, edns int) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns > 0 {
			m.SetEdns0(uint16(edns), false)
		}
		return m
	}
	// First, 500 random names from 20 sources, 25 each: within their
	// bursts, so that every one is answered (not dropped by the rate
	// limit), and before the flood, so that the kernel loses none.
	const randomSources, perSource = 20, 25
	random := make([]*udpFlood, randomSources)
	var rwg sync.WaitGroup
	for i := range random {
		random[i] = &udpFlood{}
		src := fmt.Sprintf("127.0.0.%d", 10+i)
		rwg.Go(func() {
			random[i].run(t, src, d.addr, 100, perSource, stop, func(int) *dns.Msg {
				return q(fmt.Sprintf("rnd-%016x%s", rand.Uint64(), zone), dns.TypeA, 1232)
			})
		})
	}
	rwg.Wait()
	// Then the flood. One source far over its rate, asking what answers
	// largest, and random names.
	big := &udpFlood{}
	wg.Go(func() {
		big.run(t, "127.0.0.40", d.addr, 3000, 0, stop, func(i int) *dns.Msg {
			switch i % 5 {
			case 4:
				return q(fmt.Sprintf("rnd-%016x%s", rand.Uint64(), zone), dns.TypeA, 4096)
			case 0:
				return q(svc+zone, dns.TypeANY, 4096)
			case 1:
				return q(svc+zone, dns.TypeA, 4096)
			case 2:
				return q("_grpclb._tcp."+svc+zone, dns.TypeSRV, 4096)
			default:
				return q("_grpc_config."+svc+zone, dns.TypeTXT, 4096)
			}
		})
	})
	// A source outside the allowed networks.
	outsider := &udpFlood{}
	wg.Go(func() {
		outsider.run(t, "127.0.0.200", d.addr, 500, 0, stop, func(int) *dns.Msg { return q(svc+zone, dns.TypeA, 4096) })
	})
	// Idle TCP connections from one IP.
	var tcpOpen []net.Conn
	for range 40 {
		dl := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.50")}, Timeout: time.Second}
		if c, err := dl.Dial("tcp", d.addr); err == nil {
			tcpOpen = append(tcpOpen, c)
		}
	}

	time.Sleep(5 * time.Second)
	// Every TCP connection accepted or closed (the accept loop may lag on
	// a busy machine).
	deadline := time.Now().Add(10 * time.Second)
	for d.srv.Stats().TCPRejected-before.TCPRejected < int64(len(tcpOpen)-16) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	for _, c := range tcpOpen {
		c.Close()
	}
	counts, err := ld.finish()
	if err != nil {
		t.Errorf("honest calls failed during the DNS flood: %v", err)
	}
	after := d.srv.Stats()
	dialMu.Lock()
	slices.Sort(dialTimes)
	var slowest time.Duration
	if len(dialTimes) > 0 {
		slowest = dialTimes[len(dialTimes)-1]
	}
	dialMu.Unlock()
	t.Logf("honest client: %d calls, none failed: %v", ld.calls.Load(), counts)
	t.Logf("%d new clients dialed through DNS, %d failed; dial → first call at most %v", dials.Load(), dialFails.Load(), slowest.Round(time.Millisecond))
	t.Logf("UDP packets the kernel dropped for full socket buffers (whole machine): %d", udpRcvbufErrors()-udpErrsBefore)
	var rnd udpFlood
	for _, f := range random {
		rnd.sent.Add(f.sent.Load())
		rnd.got.Add(f.got.Load())
	}
	t.Logf("random names: %d sent, %d answered", rnd.sent.Load(), rnd.got.Load())
	t.Logf("one source over its rate: %v", big)
	t.Logf("outsider: %v", outsider)
	t.Logf("responder stats during the flood: %+v", diffStats(before, after))
	t.Logf("DNS handler goroutines (miekg/dns serveUDPPacket, serveTCPConn): at most %d during the flood", peakHandlers.Load())
	t.Logf("the source over its rate: %d bytes of answers for %d bytes of questions (×%.2f)", big.gotBytes.Load(), big.sentBytes.Load(),
		float64(big.gotBytes.Load())/float64(max(big.sentBytes.Load(), 1)))

	if n, names := counting.others(svc); n != 0 {
		t.Errorf("DNS questions started %d watches of names nobody registered: %q", n, names[:min(len(names), 5)])
	}
	if rnd.sent.Load() < randomSources*perSource || rnd.got.Load() < rnd.sent.Load()*9/10 {
		t.Errorf("random names: %d sent, %d answered; want at least %d, nearly all answered", rnd.sent.Load(), rnd.got.Load(), randomSources*perSource)
	}
	for _, f := range append([]*udpFlood{big, outsider}, random...) {
		f.mu.Lock()
		if f.maxRatio > 10 {
			t.Errorf("an answer %.1f times its question (%s), over the bound of 10", f.maxRatio, f.maxWhat)
		}
		f.mu.Unlock()
	}
	if out, in := big.gotBytes.Load(), big.sentBytes.Load(); in == 0 || out > 2*in {
		t.Errorf("the source over its rate got %d bytes for %d sent: want less than twice what it sent", out, in)
	}
	if outsider.got.Load() != 0 {
		t.Errorf("the outsider got %d answers", outsider.got.Load())
	}
	ds := diffStats(before, after)
	// The kernel may drop some of the outsider's packets before the
	// responder reads them (its socket buffer fills during the flood).
	if ds.Denied < outsider.sent.Load()/2 || ds.RateLimited == 0 || ds.Slipped == 0 || ds.TCPRejected < int64(len(tcpOpen)-16) || len(tcpOpen) < 30 || ds.MinimalANY == 0 {
		t.Errorf("stats %+v: want the outsider's questions denied, questions rate limited and slipped, %d TCP connections rejected, minimal ANY answers", ds, len(tcpOpen)-16)
	}
	if def := dnsserver.DefaultConfig(); peakHandlers.Load() > int64(def.MaxInflight+def.MaxTCPConns) {
		t.Errorf("%d DNS handler goroutines during the flood, want at most %d", peakHandlers.Load(), def.MaxInflight+def.MaxTCPConns)
	}
}

// dnsHandlerGoroutines counts the goroutines of this process answering a
// DNS question (UDP) or serving a TCP connection, using buf for the stacks.
func dnsHandlerGoroutines(buf []byte) int {
	stacks := string(buf[:runtime.Stack(buf, true)])
	return strings.Count(stacks, "miekg/dns.(*Server).serveUDPPacket(") + strings.Count(stacks, "miekg/dns.(*Server).serveTCPConn(")
}

// udpRcvbufErrors reads the machine's count of UDP packets dropped for a
// full receive buffer (/proc/net/snmp), or -1.
func udpRcvbufErrors() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var head []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, h := range head {
			if h == "RcvbufErrors" && i < len(f) {
				n, _ := strconv.ParseInt(f[i], 10, 64)
				return n
			}
		}
	}
	return -1
}

func diffStats(a, b dnsserver.Stats) dnsserver.Stats {
	return dnsserver.Stats{
		Queries: b.Queries - a.Queries, Answers: b.Answers - a.Answers, NoData: b.NoData - a.NoData, NXDomain: b.NXDomain - a.NXDomain,
		Refused: b.Refused - a.Refused, ServFail: b.ServFail - a.ServFail, Errors: b.Errors - a.Errors, Truncated: b.Truncated - a.Truncated,
		MinimalANY: b.MinimalANY - a.MinimalANY, Denied: b.Denied - a.Denied, RateLimited: b.RateLimited - a.RateLimited,
		Slipped: b.Slipped - a.Slipped, Overloaded: b.Overloaded - a.Overloaded, TCPRejected: b.TCPRejected - a.TCPRejected,
	}
}
