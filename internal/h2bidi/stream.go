package h2bidi

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Stream is one call of Config.Method, given to Config.Handler.
type Stream[Req any] struct {
	c       *conn[Req]
	id      uint32
	ctx     context.Context
	cancel  context.CancelFunc
	msgs    chan Req
	recvErr chan error
	// wake (buffered 1) wakes a Send waiting for flow-control window or
	// for the stream's end.
	wake chan struct{}
	// deadline resets the stream at its grpc-timeout, if it has one.
	deadline *time.Timer

	// Fields under c.mu. headersSent and trailersSent change only with
	// c.wmu held too, so that what they say was decided matches the order
	// of frames on the wire.
	sendWin      int64
	halfClosed   bool  // the client sent END_STREAM
	ended        bool  // Sends fail with endErr
	endErr       error //
	noWrite      bool  // reset, or the connection closed: nothing more is written
	recvErrSent  bool
	headersSent  bool
	trailersSent bool
	// midMessage: a Send wrote part of a message (changed with c.wmu held
	// too). finishing: the handler returned; no new message may start.
	// idle, if set, is closed when midMessage turns false or the stream
	// ends (finish waits on it).
	midMessage bool
	finishing  bool
	idle       chan struct{}

	// The reader's own fields.
	recvWin     int64
	recvUnacked int64
	partial     []byte // a message being received across frames
	failed      bool   // the transport ended the stream (failStream)
}

// Context is cancelled when the stream ends (its handler returned, the
// client reset it, the connection closed, Stop). It carries the
// peer.Peer, the incoming metadata (as grpc-go gives them: lower-case
// keys, "-bin" values decoded, ":authority") and the grpc-timeout as a
// deadline.
func (st *Stream[Req]) Context() context.Context { return st.ctx }

// Messages returns the messages received, in order. At most
// Config.QueueLen wait; one more ends the stream with ResourceExhausted.
// It is never closed: RecvErr says when no more will come.
func (st *Stream[Req]) Messages() <-chan Req { return st.msgs }

// RecvErr returns a channel (buffered 1) that gets, at most once, io.EOF
// when the client half-closes, or a grpc status error when the stream
// fails: Canceled when the client resets it, Unavailable when the
// connection goes, ResourceExhausted for a message too large or a queue
// full, Internal for a message that does not decode or is compressed,
// DeadlineExceeded at the grpc-timeout.
//
// Unlike internal/recvloop, whose error comes after the last message was
// taken, the value may come while messages still wait in Messages(): a
// handler that needs every message drains Messages() (without blocking)
// after RecvErr gives io.EOF.
func (st *Stream[Req]) RecvErr() <-chan error { return st.recvErr }

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
				return err
			}
			n = min(int64(len(msg)-off), st.sendWin, c.sendWin, maxSendChunk)
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
			c.wmu.Unlock()
			return err
		}
		headers := !st.headersSent
		st.headersSent = true
		st.midMessage = off+int(n) < len(msg)
		maxFrame := c.peerMaxFrame
		c.mu.Unlock()
		chunk := msg[off : off+int(n)]
		err := c.writeLocked(func(b []byte) []byte {
			if headers {
				b = appendResponseHeaders(b, st.id, maxFrame)
			}
			return appendData(b, st.id, chunk, maxFrame)
		})
		c.wmu.Unlock()
		c.resetPingStrikes.Store(true)
		if err != nil {
			c.close(err)
			return status.Errorf(codes.Unavailable, "h2bidi: writing to the connection: %v", err)
		}
		off += int(n)
	}
	return nil
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
