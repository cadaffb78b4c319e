package h2bidi

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Stream is one call of Config.Method, given to Config.Handler.
type Stream[Req any] struct {
	c      *conn[Req]
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	// ready (buffered 1) tells the handler that Next may have something.
	ready chan struct{}
	// wake (buffered 1) wakes a Send waiting for flow-control window or
	// for the stream's end.
	wake chan struct{}
	// deadline resets the stream at its grpc-timeout, if it has one.
	deadline *time.Timer
	// onReady is called after each Ready signal (OnReady).
	onReady atomic.Pointer[func()]

	// Fields under c.mu. headersSent and trailersSent change only with
	// c.wmu held too, so that what they say was decided matches the order
	// of frames on the wire.
	sendWin      int64
	halfClosed   bool  // the client sent END_STREAM
	ended        bool  // Sends fail with endErr
	endErr       error //
	noWrite      bool  // reset, or the connection closed: nothing more is written
	headersSent  bool
	trailersSent bool
	// midMessage: a Send wrote part of a message (changed with c.wmu held
	// too). finishing: the handler returned; no new message may start.
	// idle, if set, is closed when midMessage turns false or the stream
	// ends (finish waits on it).
	midMessage bool
	finishing  bool
	idle       chan struct{}

	// Receiving, under c.mu too: the reader appends, Next takes.
	// rbuf holds the DATA received and not yet taken: whole gRPC messages,
	// prefix included, then at most one partial message (nil when empty).
	// scanned is the offset in rbuf of the next message prefix the reader
	// has not yet checked (past len(rbuf) while a message is incomplete).
	// recvWin is the stream window the client has left, as we granted it;
	// recvEnd, once set, is the error that ends receiving (io.EOF after
	// the half-close), given by Next after the messages before it.
	rbuf    []byte
	scanned int
	recvWin int64
	recvEnd error
	// wuIncr is a stream WINDOW_UPDATE decided by Next and not yet written
	// (see conn.wunlock).
	wuIncr uint32

	// other is set for a stream of another method, served by
	// Config.Other: rbuf holds its request body's bytes as they come.
	other *otherStream
}

// Context is cancelled when the stream ends (its handler returned, the
// client reset it, the connection closed, Stop). It carries the
// peer.Peer, the incoming metadata (as grpc-go gives them: lower-case
// keys, "-bin" values decoded, ":authority") and the grpc-timeout as a
// deadline.
func (st *Stream[Req]) Context() context.Context { return st.ctx }

// Ready returns a channel (buffered 1) signalled when Next may have
// something for the handler: a message, or the end of the receiving side.
func (st *Stream[Req]) Ready() <-chan struct{} { return st.ready }

// Next takes the next message received (ok true, err nil); or, once every
// message received before it was taken, the error that ends receiving (ok
// false): io.EOF after the client's half-close, or the stream's failure as
// a grpc status error (Canceled when the client resets it, Unavailable when
// the connection goes, ResourceExhausted for a message too large, Internal
// for a message that is compressed or does not decode, DeadlineExceeded at
// the grpc-timeout); ok false and err nil when nothing waits yet (wait on
// Ready). The message is decoded here, on the caller's goroutine, with
// Config.Unmarshal. When more waits after what it returns, Ready is
// signalled again. Only one goroutine may call Next at a time.
//
// The stream's receive window is given back to the client as Next takes
// the bytes, so a client sending faster than the handler takes is held by
// flow control: a stream holds at most Config.InitialWindowSize bytes
// received and not taken (or one message, when a message is larger). The
// WINDOW_UPDATE is written without waiting for other writers: if the
// connection is busy, the writer that holds it writes the update too.
func (st *Stream[Req]) Next() (msg Req, ok bool, err error) {
	c := st.c
	c.mu.Lock()
	n, whole := frontMessage(st.rbuf)
	if !whole {
		err := st.recvEnd
		c.mu.Unlock()
		return msg, false, err
	}
	payload := st.rbuf[5 : 5+n]
	st.rbuf = st.rbuf[5+n:]
	st.scanned -= 5 + n
	if len(st.rbuf) == 0 {
		st.rbuf = nil // the decode below reads the old array; appends go to a new one
	}
	_, more := frontMessage(st.rbuf)
	more = more || st.recvEnd != nil
	incr := st.grantLocked(int64(c.s.cfg.InitialWindowSize))
	c.mu.Unlock()
	if more {
		st.signal()
	}
	c.giveWindow(st, incr)
	m, derr := c.s.cfg.Unmarshal(payload)
	if derr != nil {
		err := status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", derr)
		c.failStream(st, err)
		return msg, false, err
	}
	return m, true, nil
}

// frontMessage returns the payload length of the message at the start of
// b (whose prefix the reader checked) and whether it is whole in b.
func frontMessage(b []byte) (int, bool) {
	if len(b) < 5 {
		return 0, false
	}
	n := int(uint32(b[1])<<24 | uint32(b[2])<<16 | uint32(b[3])<<8 | uint32(b[4]))
	return n, 5+n <= len(b)
}

// grantLocked decides the stream WINDOW_UPDATE due, if any, and counts it
// in recvWin: the client's window is what brings the bytes held to iw (the
// receive window), or to the size of the first message when it is larger
// and incomplete; an update is due when a quarter of iw is owed, or when
// the client could not complete the first message without it. c.mu is
// held.
func (st *Stream[Req]) grantLocked(iw int64) uint32 {
	if st.halfClosed || st.ended || (st.other != nil && st.other.bodyClosed) {
		return 0
	}
	held := int64(len(st.rbuf))
	target := iw
	stuck := false
	if n, whole := frontMessage(st.rbuf); st.other == nil && !whole && len(st.rbuf) >= 5 {
		size := int64(5 + n)
		target = max(target, size)
		stuck = st.recvWin < size-held
	}
	owe := target - held - st.recvWin
	if owe <= 0 || (owe < iw/4 && !stuck) {
		return 0
	}
	st.recvWin += owe
	return uint32(owe)
}

// giveWindow writes a stream WINDOW_UPDATE of incr (if not 0) decided by
// the handler's side (Next, an Other stream's body): at once if the
// connection is not being written to, else by the writer holding wmu when
// it releases it (conn.wunlock), so that the handler does not wait.
func (c *conn[Req]) giveWindow(st *Stream[Req], incr uint32) {
	if incr == 0 {
		return
	}
	c.mu.Lock()
	st.wuIncr += incr
	c.wuPending.Store(true)
	c.mu.Unlock()
	if c.wmu.TryLock() {
		c.flushWindowUpdatesLocked()
		c.wunlock()
	}
}

// signal signals Ready, then calls the function of OnReady.
func (st *Stream[Req]) signal() {
	select {
	case st.ready <- struct{}{}:
	default:
	}
	if f := st.onReady.Load(); f != nil {
		(*f)()
	}
}

// OnReady makes f be called each time Ready is signalled, after it is,
// the stream's end included: a parked stream's handler has no goroutine
// to wait on Ready. f must not block, nor call the stream's methods: it
// may run with the connection's lock held. Call it from the handler
// before it first parks.
func (st *Stream[Req]) OnReady(f func()) {
	st.onReady.Store(&f)
}

// Park, returned by a Handler (or a function given to Resume), leaves the
// stream open without a goroutine: the handler's goroutine ends, the
// stream stays counted against MaxConcurrentStreams and in Stop's wait,
// and nothing more happens to it until Resume. A handler that parks must
// arrange to be resumed on whatever it waits for (OnReady, the stream's
// context with context.AfterFunc, its own events), and must not touch the
// stream once it returned Park, since a Resume may already run.
var Park = errors.New("h2bidi: the handler parked the stream")

// Resume runs f on a new goroutine as the handler of st, parked: what f
// returns ends the stream as a Handler's result does (Park parks it
// again). Call it once per Park.
func (st *Stream[Req]) Resume(f func() error) {
	go func() { st.c.handled(st, f()) }()
}

// idleLocked releases a finish waiting for a half-written message. c.mu
// is held.
func (st *Stream[Req]) idleLocked() {
	if st.idle != nil {
		close(st.idle)
		st.idle = nil
	}
}

// wakeLocked wakes a waiting Send. c.mu is held.
func (st *Stream[Req]) wakeLocked() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// Send writes msg, a whole gRPC message with its 5-byte prefix (see
// Frame), as DATA frames, preceded on the first Send by the response
// HEADERS. It blocks until the bytes are written to the socket, waiting
// as the client's flow control requires, or until the stream ends (then
// it returns the stream's error). Only one Send may run at a time on a
// stream, on any goroutine. msg is neither modified nor retained.
func (st *Stream[Req]) Send(msg []byte) error {
	return st.send(msg, appendResponseHeaders)
}

// TrySend is Send if the client's flow control lets msg go whole at once:
// it returns true and what Send would. Otherwise it writes nothing and
// returns false, and the caller may Send msg, which waits for the window.
// Once under way it can still wait for another stream's write on the
// connection and for the socket, at most WriteTimeout, after which the
// connection closes. The same rules as Send's apply.
func (st *Stream[Req]) TrySend(msg []byte) (bool, error) {
	return st.trySend(msg, appendResponseHeaders, true)
}

// send is Send, with headers appending the response HEADERS.
func (st *Stream[Req]) send(msg []byte, headers func(b []byte, streamID, maxFrame uint32) []byte) error {
	_, err := st.trySend(msg, headers, false)
	return err
}

// trySend is send; with try, it returns false without writing when the
// send windows cannot take msg whole in one chunk.
func (st *Stream[Req]) trySend(msg []byte, headers func(b []byte, streamID, maxFrame uint32) []byte, try bool) (bool, error) {
	c := st.c
	defer func() {
		// Whether the message went whole or not, a finish waiting for it
		// goes on.
		c.mu.Lock()
		st.idleLocked()
		c.mu.Unlock()
	}()
	for off := 0; off < len(msg); {
		c.mu.Lock()
		var n int64
		for {
			if st.ended || st.noWrite || st.trailersSent || (off == 0 && st.finishing) {
				err := st.sendErrLocked()
				c.mu.Unlock()
				return true, err
			}
			n = min(int64(len(msg)-off), st.sendWin, c.sendWin, maxSendChunk)
			if try && n < int64(len(msg)) {
				c.mu.Unlock()
				return false, nil
			}
			if n > 0 {
				break
			}
			c.mu.Unlock()
			<-st.wake // woken by WINDOW_UPDATE, SETTINGS or the stream's end
			c.mu.Lock()
		}
		st.sendWin -= n
		c.sendWin -= n
		c.mu.Unlock()

		c.wmu.Lock()
		c.mu.Lock()
		if st.ended || st.noWrite || st.trailersSent || c.closed {
			// Too late: give the window back to the others.
			c.sendWin += n
			for _, o := range c.streams {
				o.wakeLocked()
			}
			err := st.sendErrLocked()
			c.mu.Unlock()
			c.wunlock()
			return true, err
		}
		withHeaders := !st.headersSent
		st.headersSent = true
		st.midMessage = off+int(n) < len(msg)
		maxFrame := c.peerMaxFrame
		c.mu.Unlock()
		chunk := msg[off : off+int(n)]
		err := c.writeLocked(func(b []byte) []byte {
			if withHeaders {
				b = headers(b, st.id, maxFrame)
			}
			return appendData(b, st.id, chunk, maxFrame)
		})
		c.wunlock()
		c.resetPingStrikes.Store(true)
		if err != nil {
			c.close(err)
			return true, status.Errorf(codes.Unavailable, "h2bidi: writing to the connection: %v", err)
		}
		off += int(n)
	}
	return true, nil
}

// sendErrLocked is the error of a Send on a stream that ended. c.mu is
// held.
func (st *Stream[Req]) sendErrLocked() error {
	if st.endErr != nil {
		return st.endErr
	}
	if st.c.closed {
		return status.Error(codes.Unavailable, "h2bidi: the connection closed")
	}
	return status.Error(codes.Canceled, "h2bidi: the stream ended")
}
