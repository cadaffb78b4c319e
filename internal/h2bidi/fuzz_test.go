package h2bidi

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// pipeListener accepts the connections given to it, then fails once
// closed.
type pipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn, 1), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }

// fuzzSeeds are frame sequences (after the preface) worth starting from.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	frames := func(write func(fr *http2.Framer)) {
		var b bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		write(fr)
		seeds = append(seeds, b.Bytes())
	}
	open := func(fr *http2.Framer, id uint32, end bool) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: requestBlock(method), EndHeaders: true, EndStream: end})
	}
	msg := Frame([]byte{0x0a, 0x03, 0x0a, 0x01, 'a'}) // an initial request for "a"
	frames(func(fr *http2.Framer) { fr.WriteSettings(); open(fr, 1, false); fr.WriteData(1, false, msg) })
	frames(func(fr *http2.Framer) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
		open(fr, 1, false)
		fr.WriteData(1, false, msg[:3])
		fr.WriteData(1, true, msg[3:])
		fr.WriteWindowUpdate(0, 100)
		fr.WriteWindowUpdate(1, 100)
	})
	frames(func(fr *http2.Framer) {
		fr.WritePing(false, [8]byte{1})
		open(fr, 1, true)
		open(fr, 3, false)
		fr.WriteRSTStream(3, http2.ErrCodeCancel)
		fr.WriteData(3, false, msg)
		fr.WritePriority(5, http2.PriorityParam{StreamDep: 1})
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	})
	frames(func(fr *http2.Framer) {
		block := requestBlock(method)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:4]})
		fr.WriteContinuation(1, true, block[4:])
		fr.WriteData(1, false, []byte{1, 0, 0, 0, 1, 0})
	})
	frames(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: requestBlock("/grpc.health.v1.Health/Check"), EndHeaders: true})
	})
	// Other methods on a connection served here.
	frames(func(fr *http2.Framer) {
		open(fr, 1, false)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: requestBlock("/grpc.health.v1.Health/Check", "grpc-timeout", "1S"), EndHeaders: true})
		fr.WriteData(3, false, msg[:2])
		fr.WriteData(3, true, msg[2:])
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: requestBlock("/other", ":method", "GET"), EndHeaders: true, EndStream: true})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, BlockFragment: requestBlock("/other"), EndHeaders: true})
		fr.WriteData(7, false, make([]byte, 100))
		fr.WriteRSTStream(7, http2.ErrCodeCancel)
	})
	frames(func(fr *http2.Framer) {
		open(fr, 1, false)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: requestBlock(method, "grpc-timeout", "1m", "x-bin", "!!"), EndHeaders: true})
		fr.WriteRawFrame(0x20, 0, 1, []byte("unknown"))
		for i := range 5 {
			fr.WritePing(false, [8]byte{byte(i)})
		}
	})
	return seeds
}

// fuzzOther is the fuzz target's Config.Other: it reads some of the body,
// writes headers, data and trailers.
var fuzzOther = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Trailer", "X-Declared")
	w.Header().Set("Content-Type", "application/grpc")
	n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	if n > 10 {
		w.WriteHeader(http.StatusAccepted)
	}
	w.Write(make([]byte, n%70000))
	w.(http.Flusher).Flush()
	w.Header().Set("X-Declared", "d")
	w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
})

// FuzzServerConn feeds arbitrary frames after a valid client preface to
// a connection of a Server and checks that it neither panics, nor blocks
// (Stop returns within a bound), nor leaks (no connection or stream left;
// goleak checks the goroutines at the end).
func FuzzServerConn(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		srv, err := New(Config[req]{
			Method: method, Unmarshal: unmarshalReq, Handler: echo, Other: fuzzOther,
			MaxRecvMsgSize: 1 << 10, WriteTimeout: time.Second,
			MinPingInterval: time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		lis := newPipeListener()
		client, server := net.Pipe()
		lis.ch <- server
		served := make(chan error, 1)
		go func() { served <- srv.Serve(lis) }()
		// A grpc.Server stand-in: handed-off connections are closed.
		othersDone := make(chan struct{})
		go func() {
			defer close(othersDone)
			for {
				c, err := srv.Others().Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		readDone := make(chan struct{})
		go func() { defer close(readDone); io.Copy(io.Discard, client) }()
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write([]byte(http2.ClientPreface))
		client.Write(in)
		time.Sleep(time.Millisecond)
		client.Close()

		stopped := make(chan struct{})
		go func() { srv.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Fatal("Stop blocked")
		}
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		<-othersDone
		<-readDone
		if s := srv.Stats(); s.Conns != 0 || s.Streams != 0 {
			t.Fatalf("after Stop: %+v", s)
		}
	})
}
