package h2bidi

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// rawClient is a bare HTTP/2 client for what a grpc-go client will not do
// (ping floods, silence, protocol errors).
type rawClient struct {
	conn   net.Conn
	fr     *http2.Framer
	frames chan any // copies of the frames read; closed when reading fails
}

type (
	pingAck struct{ data [8]byte }
	ping    struct{ data [8]byte }
	goAway  struct {
		last  uint32
		code  http2.ErrCode
		debug string
	}
	headers struct {
		id     uint32
		fields []hpack.HeaderField
		end    bool
	}
	data struct {
		id  uint32
		n   int
		end bool
	}
	rst struct {
		id   uint32
		code http2.ErrCode
	}
	settings struct {
		values map[http2.SettingID]uint32
	}
	windowUpdate struct {
		id, incr uint32
	}
)

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawClient{conn: conn, fr: http2.NewFramer(conn, conn), frames: make(chan any, 1000)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	conn.Write([]byte(http2.ClientPreface))
	c.fr.WriteSettings()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.frames)
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			var v any
			switch f := f.(type) {
			case *http2.PingFrame:
				if f.IsAck() {
					v = &pingAck{f.Data}
				} else {
					v = &ping{f.Data}
				}
			case *http2.GoAwayFrame:
				v = &goAway{f.LastStreamID, f.ErrCode, string(f.DebugData())}
			case *http2.MetaHeadersFrame:
				v = &headers{f.StreamID, append([]hpack.HeaderField(nil), f.Fields...), f.StreamEnded()}
			case *http2.DataFrame:
				v = &data{f.StreamID, len(f.Data()), f.StreamEnded()}
			case *http2.RSTStreamFrame:
				v = &rst{f.StreamID, f.ErrCode}
			case *http2.SettingsFrame:
				if f.IsAck() {
					continue
				}
				s := &settings{values: map[http2.SettingID]uint32{}}
				f.ForeachSetting(func(x http2.Setting) error { s.values[x.ID] = x.Val; return nil })
				v = s
			case *http2.WindowUpdateFrame:
				v = &windowUpdate{f.StreamID, f.Increment}
			default:
				continue
			}
			select {
			case c.frames <- v:
			default: // a test that does not look at them
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return c
}

// next returns the next frame read that match accepts, or nil if the
// connection ends or nothing matches within 10 s.
func (c *rawClient) next(t testing.TB, match func(any) bool) any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return nil
			}
			if match(f) {
				return f
			}
		case <-timeout:
			return nil
		}
	}
}

// requestBlock is the header block of a request for path.
// Extra fields replace the defaults of the same name.
func requestBlock(path string, extra ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	fields := []string{":method", "POST", ":scheme", "http", ":path", path, ":authority", "test",
		"content-type", "application/grpc", "te", "trailers"}
	for i := 0; i < len(extra); i += 2 {
		found := false
		for j := 0; j < len(fields); j += 2 {
			if fields[j] == extra[i] {
				fields[j+1], found = extra[i+1], true
			}
		}
		if !found {
			fields = append(fields, extra[i], extra[i+1])
		}
	}
	for i := 0; i < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b.Bytes()
}

// open opens stream id for method.
func (c *rawClient) open(id uint32) {
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: requestBlock(method), EndHeaders: true})
}

func isGoAway(f any) bool { _, ok := f.(*goAway); return ok }

func TestTooManyPings(t *testing.T) {
	e := start(t, Config[req]{MinPingInterval: time.Hour, Handler: func(st *Stream[req]) error {
		<-st.Context().Done()
		return nil
	}})
	c := dialRaw(t, e.addr)
	c.open(1)
	for i := range 10 {
		if c.fr.WritePing(false, [8]byte{byte(i)}) != nil {
			break
		}
	}
	f, _ := c.next(t, isGoAway).(*goAway)
	if f == nil || f.code != http2.ErrCodeEnhanceYourCalm || f.debug != "too_many_pings" {
		t.Fatalf("GOAWAY = %+v, want ENHANCE_YOUR_CALM too_many_pings", f)
	}
	if c.next(t, func(any) bool { return false }) != nil {
		t.Fatal("the connection stayed open")
	}
	waitFor(t, "the connection to be gone", func() bool { return e.srv.Stats().Conns == 0 })
}

func TestPingsWithinPolicy(t *testing.T) {
	e := start(t, Config[req]{MinPingInterval: 20 * time.Millisecond, Handler: func(st *Stream[req]) error {
		<-st.Context().Done()
		return nil
	}})
	c := dialRaw(t, e.addr)
	c.open(1)
	for i := range 6 {
		time.Sleep(40 * time.Millisecond)
		c.fr.WritePing(false, [8]byte{byte(i)})
		f := c.next(t, func(f any) bool { _, ok := f.(*pingAck); return ok || isGoAway(f) })
		if _, ok := f.(*pingAck); !ok {
			t.Fatalf("ping %d: got %+v, want its ack", i, f)
		}
	}
	// With no stream and !PermitWithoutStream, pings are strikes.
	c.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	waitFor(t, "the stream to end", func() bool { return e.srv.Stats().Streams == 0 })
	for i := range 4 {
		c.fr.WritePing(false, [8]byte{byte(i)})
	}
	if f, _ := c.next(t, isGoAway).(*goAway); f == nil || f.debug != "too_many_pings" {
		t.Fatalf("GOAWAY = %+v, want too_many_pings", f)
	}
}

func TestServerKeepalive(t *testing.T) {
	e := start(t, Config[req]{KeepaliveTime: 50 * time.Millisecond, KeepaliveTimeout: 100 * time.Millisecond})
	// A client that acks (a real one) stays.
	stream, err := lbpbClient(t, e.addr)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(initial("a"))
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	stream.Send(initial("b"))
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("after pings: %v", err)
	}
	// A silent one is closed.
	c := dialRaw(t, e.addr)
	c.open(1)
	if c.next(t, func(f any) bool { _, ok := f.(*ping); return ok }) == nil {
		t.Fatal("no keepalive ping")
	}
	start := time.Now()
	if c.next(t, func(any) bool { return false }) != nil || time.Since(start) > 5*time.Second {
		t.Fatal("a silent connection stayed open")
	}
}

func TestProtocolErrors(t *testing.T) {
	e := start(t, Config[req]{})
	c := dialRaw(t, e.addr)
	c.open(1)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: requestBlock(method), EndHeaders: true})
	if f, _ := c.next(t, isGoAway).(*goAway); f == nil || f.code != http2.ErrCodeProtocol {
		t.Fatalf("GOAWAY = %+v, want PROTOCOL_ERROR", f)
	}
	waitFor(t, "the error to count", func() bool { return e.srv.Stats().ProtocolErrors == 1 })

	// A bad content-type on an owned connection: 415, as grpc-go.
	c = dialRaw(t, e.addr)
	c.open(1)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: requestBlock(method, "content-type", "text/plain"), EndHeaders: true})
	h, _ := c.next(t, func(f any) bool { h, ok := f.(*headers); return ok && h.id == 3 }).(*headers)
	if h == nil || h.fields[0].Value != "415" || !h.end {
		t.Fatalf("bad content-type: %+v", h)
	}
	// Compression on an owned connection: Unimplemented.
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: requestBlock(method, "grpc-encoding", "gzip"), EndHeaders: true})
	h, _ = c.next(t, func(f any) bool { h, ok := f.(*headers); return ok && h.id == 5 }).(*headers)
	if h == nil || !h.end || fieldValue(h.fields, "grpc-status") != "12" {
		t.Fatalf("compressed stream: %+v", h)
	}
	// A compressed message: Internal.
	c.open(7)
	c.fr.WriteData(7, false, []byte{1, 0, 0, 0, 1, 0})
	h, _ = c.next(t, func(f any) bool { h, ok := f.(*headers); return ok && h.id == 7 && h.end }).(*headers)
	if h == nil || fieldValue(h.fields, "grpc-status") != "13" {
		t.Fatalf("compressed message: %+v", h)
	}
}

func fieldValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// TestTooManyPingsBeforeFirstRequest: the policy holds while the server
// waits for a connection's first request (as grpc.Server's would).
func TestTooManyPingsBeforeFirstRequest(t *testing.T) {
	e := start(t, Config[req]{})
	c := dialRaw(t, e.addr)
	for i := range 5 {
		if c.fr.WritePing(false, [8]byte{byte(i)}) != nil {
			break
		}
	}
	if f, _ := c.next(t, isGoAway).(*goAway); f == nil || f.code != http2.ErrCodeEnhanceYourCalm || f.debug != "too_many_pings" {
		t.Fatalf("GOAWAY = %+v, want ENHANCE_YOUR_CALM too_many_pings", f)
	}
}

func TestMaxHeaderListSize(t *testing.T) {
	e := start(t, Config[req]{MaxHeaderListSize: 1 << 10})
	c := dialRaw(t, e.addr)
	c.open(1)
	// Over the limit, but not by so much that the framer gives up on the
	// connection (a block over twice the limit is a PROTOCOL_ERROR, a field
	// over the limit a COMPRESSION_ERROR).
	big := strings.Repeat("v", 600)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: requestBlock(method, "x-a", big, "x-b", big), EndHeaders: true})
	r, _ := c.next(t, func(f any) bool { r, ok := f.(*rst); return ok && r.id == 3 }).(*rst)
	if r == nil {
		t.Fatal("no RST_STREAM for a header list over the limit")
	}
	// The connection still serves.
	c.open(5)
	c.fr.WriteData(5, false, Frame(nil))
	c.fr.WriteData(5, true, nil)
	h, _ := c.next(t, func(f any) bool { h, ok := f.(*headers); return ok && h.id == 5 && h.end }).(*headers)
	if h == nil || fieldValue(h.fields, "grpc-status") != "0" {
		t.Fatalf("stream 5: %+v", h)
	}
}

// TestSettings: the first SETTINGS says only not to index; the
// connection's own come with its first request, and a connection window
// update to reach InitialWindowSize.
func TestSettings(t *testing.T) {
	e := start(t, Config[req]{InitialWindowSize: 1 << 20, MaxConcurrentStreams: 7, MaxHeaderListSize: 8 << 10})
	c := dialRaw(t, e.addr)
	first, _ := c.next(t, func(f any) bool { _, ok := f.(*settings); return ok }).(*settings)
	if first == nil || len(first.values) != 1 || first.values[http2.SettingHeaderTableSize] != 0 {
		t.Fatalf("first SETTINGS = %+v", first)
	}
	c.open(1)
	s, _ := c.next(t, func(f any) bool { _, ok := f.(*settings); return ok }).(*settings)
	want := map[http2.SettingID]uint32{http2.SettingInitialWindowSize: 1 << 20, http2.SettingMaxConcurrentStreams: 7, http2.SettingMaxHeaderListSize: 8 << 10}
	for id, v := range want {
		if s == nil || s.values[id] != v {
			t.Fatalf("SETTINGS = %+v, want %v", s, want)
		}
	}
	w, _ := c.next(t, func(f any) bool { _, ok := f.(*windowUpdate); return ok }).(*windowUpdate)
	if w == nil || w.id != 0 || w.incr != 1<<20-65535 {
		t.Fatalf("WINDOW_UPDATE = %+v", w)
	}
}

// TestResetAfterTrailers: as grpc-go, a stream the client has not
// half-closed gets RST_STREAM NO_ERROR after its trailers; one it has does
// not.
func TestResetAfterTrailers(t *testing.T) {
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error { return nil }})
	c := dialRaw(t, e.addr)
	c.open(1)
	h, _ := c.next(t, func(f any) bool { h, ok := f.(*headers); return ok && h.id == 1 }).(*headers)
	if h == nil || !h.end || fieldValue(h.fields, ":status") != "200" || fieldValue(h.fields, "grpc-status") != "0" {
		t.Fatalf("trailers-only response = %+v", h)
	}
	if r, _ := c.next(t, func(f any) bool { _, ok := f.(*rst); return ok }).(*rst); r == nil || r.id != 1 || r.code != http2.ErrCodeNo {
		t.Fatalf("RST_STREAM = %+v, want stream 1 NO_ERROR", r)
	}
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: requestBlock(method), EndHeaders: true, EndStream: true})
	c.open(5)
	// Stream 3's trailers, then stream 5's RST (and none for stream 3).
	for {
		f := c.next(t, func(f any) bool { _, ok := f.(*rst); return ok })
		r, _ := f.(*rst)
		if r == nil {
			t.Fatal("no RST_STREAM for stream 5")
		}
		if r.id == 3 {
			t.Fatal("RST_STREAM for stream 3, which the client half-closed")
		}
		if r.id == 5 {
			break
		}
	}
}

// TestNextDoesNotWaitForWrites: Next owing the client window while
// another writer holds the connection returns at once; the writer that
// holds it writes the WINDOW_UPDATE when it releases it.
func TestNextDoesNotWaitForWrites(t *testing.T) {
	const n, size = 20, 1000
	streams := make(chan *Stream[req], 1)
	take := make(chan struct{})
	taken := make(chan int, 1)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		streams <- st
		<-take
		k := 0
		for k < n {
			if _, ok, err := st.Next(); err != nil {
				return err
			} else if ok {
				k++
			} else {
				<-st.Ready()
			}
		}
		taken <- k
		<-st.Context().Done()
		return nil
	}})
	c := dialRaw(t, e.addr)
	c.open(1)
	st := <-streams
	b, err := proto.Marshal(initial(strings.Repeat("x", size)))
	if err != nil {
		t.Fatal(err)
	}
	msg := Frame(b)
	for range n {
		c.fr.WriteData(1, false, msg)
	}
	waitFor(t, "the messages", func() bool { return held(st) == n*len(msg) })
	isStreamUpdate := func(f any) bool { w, ok := f.(*windowUpdate); return ok && w.id == 1 }

	st.c.wmu.Lock()
	close(take)
	select {
	case <-taken:
	case <-time.After(10 * time.Second):
		st.c.wunlock()
		t.Fatal("Next waited for the connection's writer")
	}
	select {
	case f := <-c.frames:
		if isStreamUpdate(f) {
			t.Fatalf("%+v written while another writer held the connection", f)
		}
	case <-time.After(50 * time.Millisecond):
	}
	st.c.wunlock()
	// Due once a quarter of the window is owed.
	if w, _ := c.next(t, isStreamUpdate).(*windowUpdate); w == nil || w.incr < 65535/4 || w.incr > n*uint32(len(msg)) {
		t.Fatalf("stream WINDOW_UPDATE = %+v, want a quarter of the window or more, at most %d", w, n*len(msg))
	}
}

// TestUndecodable: the messages before one that does not decode are
// taken, then Next gives Internal, which the trailers carry.
func TestUndecodable(t *testing.T) {
	got := make(chan error, 2)
	e := start(t, Config[req]{Handler: func(st *Stream[req]) error {
		_, err := recv(st)
		got <- err
		_, err = recv(st)
		got <- err
		return nil
	}})
	c := dialRaw(t, e.addr)
	c.open(1)
	c.fr.WriteData(1, false, append(Frame([]byte{0x0a, 0x03, 0x0a, 0x01, 'a'}), Frame([]byte{0xff, 0xff})...))
	if err := <-got; err != nil {
		t.Fatalf("first message: %v", err)
	}
	if err := <-got; status.Code(err) != codes.Internal {
		t.Fatalf("Next: %v, want Internal", err)
	}
	h, _ := c.next(t, func(f any) bool { h, ok := f.(*headers); return ok && h.end }).(*headers)
	if h == nil || fieldValue(h.fields, "grpc-status") != "13" {
		t.Fatalf("trailers: %+v", h)
	}
}
