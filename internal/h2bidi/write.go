package h2bidi

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Frames are built by hand into pooled buffers, so that an idle
// connection holds none.

// maxPooledBuf is the largest buffer kept in bufPool.
const maxPooledBuf = 80 << 10

// maxSendChunk bounds the DATA bytes one write of Send carries.
const maxSendChunk = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > maxPooledBuf {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// appendFrameHeader appends a frame header.
func appendFrameHeader(b []byte, length int, typ http2.FrameType, flags http2.Flags, streamID uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(typ), byte(flags),
		byte(streamID>>24)&0x7f, byte(streamID>>16), byte(streamID>>8), byte(streamID))
}

func appendSettings(b []byte, settings ...http2.Setting) []byte {
	b = appendFrameHeader(b, 6*len(settings), http2.FrameSettings, 0, 0)
	for _, s := range settings {
		b = binary.BigEndian.AppendUint16(b, uint16(s.ID))
		b = binary.BigEndian.AppendUint32(b, s.Val)
	}
	return b
}

func appendSettingsAck(b []byte) []byte {
	return appendFrameHeader(b, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
}

func appendPing(b []byte, ack bool, data [8]byte) []byte {
	var flags http2.Flags
	if ack {
		flags = http2.FlagPingAck
	}
	b = appendFrameHeader(b, 8, http2.FramePing, flags, 0)
	return append(b, data[:]...)
}

func appendWindowUpdate(b []byte, streamID, incr uint32) []byte {
	b = appendFrameHeader(b, 4, http2.FrameWindowUpdate, 0, streamID)
	return binary.BigEndian.AppendUint32(b, incr&0x7fffffff)
}

func appendRSTStream(b []byte, streamID uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 4, http2.FrameRSTStream, 0, streamID)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

func appendGoAway(b []byte, lastStreamID uint32, code http2.ErrCode, debug string) []byte {
	b = appendFrameHeader(b, 8+len(debug), http2.FrameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lastStreamID&0x7fffffff)
	b = binary.BigEndian.AppendUint32(b, uint32(code))
	return append(b, debug...)
}

// appendData appends data as DATA frames of at most maxFrame bytes.
func appendData(b []byte, streamID uint32, data []byte, maxFrame uint32) []byte {
	for len(data) > 0 {
		n := min(len(data), int(maxFrame))
		b = appendFrameHeader(b, n, http2.FrameData, 0, streamID)
		b = append(b, data[:n]...)
		data = data[n:]
	}
	return b
}

// hpackEnc is an encoder writing into buf. Every field is encoded
// never-indexed, so an encoder has no state between header blocks and one
// pool serves every connection.
type hpackEnc struct {
	enc *hpack.Encoder
	buf []byte
}

func (h *hpackEnc) Write(p []byte) (int, error) {
	h.buf = append(h.buf, p...)
	return len(p), nil
}

var encPool = sync.Pool{New: func() any {
	h := &hpackEnc{}
	h.enc = hpack.NewEncoder(h)
	return h
}}

// appendHeaders appends fields as a header block: a HEADERS frame and as
// many CONTINUATION frames as maxFrame requires.
func appendHeaders(b []byte, streamID uint32, endStream bool, maxFrame uint32, fields ...hpack.HeaderField) []byte {
	h := encPool.Get().(*hpackEnc)
	h.buf = h.buf[:0]
	for _, f := range fields {
		f.Sensitive = true
		h.enc.WriteField(f)
	}
	block := h.buf
	typ, flags := http2.FrameHeaders, http2.Flags(0)
	if endStream {
		flags = http2.FlagHeadersEndStream
	}
	for {
		n := min(len(block), int(maxFrame))
		if n == len(block) {
			flags |= http2.FlagHeadersEndHeaders
		}
		b = appendFrameHeader(b, n, typ, flags, streamID)
		b = append(b, block[:n]...)
		block = block[n:]
		if len(block) == 0 {
			break
		}
		typ, flags = http2.FrameContinuation, 0
	}
	if cap(h.buf) > 16<<10 {
		h.buf = nil
	}
	encPool.Put(h)
	return b
}

var (
	hfStatus200 = hpack.HeaderField{Name: ":status", Value: "200"}
	hfGRPC      = hpack.HeaderField{Name: "content-type", Value: "application/grpc"}
)

// appendResponseHeaders appends the response's HEADERS.
func appendResponseHeaders(b []byte, streamID uint32, maxFrame uint32) []byte {
	return appendHeaders(b, streamID, false, maxFrame, hfStatus200, hfGRPC)
}

// appendStatus appends the trailers carrying st (END_STREAM), or, when
// httpStatus is not 0, a trailers-only response with that :status.
func appendStatus(b []byte, streamID uint32, maxFrame uint32, st *status.Status, httpStatus int) []byte {
	fields := make([]hpack.HeaderField, 0, 5)
	if httpStatus != 0 {
		fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(httpStatus)}, hfGRPC)
	}
	fields = append(fields, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(st.Code()))})
	if m := st.Message(); m != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-message", Value: encodeGrpcMessage(m)})
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if bin, err := proto.Marshal(p); err == nil {
			fields = append(fields, hpack.HeaderField{Name: "grpc-status-details-bin", Value: base64.RawStdEncoding.EncodeToString(bin)})
		}
	}
	return appendHeaders(b, streamID, true, maxFrame, fields...)
}

// encodeGrpcMessage percent-encodes msg as the gRPC spec says (and as
// grpc-go does): bytes outside printable ASCII, and '%'.
func encodeGrpcMessage(msg string) string {
	clean := true
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < ' ' || c > '~' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return msg
	}
	var sb strings.Builder
	for len(msg) > 0 {
		r, size := utf8.DecodeRuneInString(msg)
		for _, c := range []byte(string(r)) {
			if size == 1 && c >= ' ' && c <= '~' && c != '%' {
				sb.WriteByte(c)
			} else {
				fmt.Fprintf(&sb, "%%%02X", c)
			}
		}
		msg = msg[size:]
	}
	return sb.String()
}

// Frame returns payload with the 5-byte gRPC message prefix
// (uncompressed, big-endian length), as Send takes it.
func Frame(payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}
