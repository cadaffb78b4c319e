package admin

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"google.golang.org/grpc"
	channelzsvc "google.golang.org/grpc/channelz/service"
	"google.golang.org/grpc/reflection"
)

// DefaultRefresh is how often the status page refreshes itself.
const DefaultRefresh = 2 * time.Second

// Options configure the admin handler.
type Options struct {
	// Status returns what /status and /status.json show. It is called
	// once per request, from the request's goroutine, so it must be safe
	// for concurrent use; each open page calls it every Refresh. Required.
	Status func() Status
	// Metrics serves /metrics (the Prometheus handler); nil answers 404.
	Metrics http.Handler
	// Pprof serves net/http/pprof under /debug/pprof/. Profiles cost CPU
	// while they run and show the process's internals: turn it on where
	// the admin listener is reachable by operators only.
	Pprof bool
	// Channelz serves gRPC channelz (grpc.channelz.v1.Channelz) and server
	// reflection on the same port, over HTTP/2 without TLS, for tools such
	// as grpcdebug and grpcurl. Channelz lists every gRPC channel, server
	// and socket of the process, with peer addresses.
	Channelz bool
	// Refresh is how often the status page refreshes itself; negative
	// turns it off. Default DefaultRefresh; at least 500 ms.
	Refresh time.Duration
	// Logger receives the handler's errors (a failed template or
	// encoding). Default slog.Default().
	Logger *slog.Logger
}

// Handler is the admin listener's http.Handler. Create it with New; Close
// it when done. Safe for concurrent use.
type Handler struct {
	opts Options
	mux  *http.ServeMux
	grpc *grpc.Server // nil without Options.Channelz
	log  *slog.Logger
}

// New validates o and returns the admin handler. It starts no goroutine.
func New(o Options) (*Handler, error) {
	if o.Status == nil {
		return nil, errors.New("admin: Options.Status is required")
	}
	switch {
	case o.Refresh == 0:
		o.Refresh = DefaultRefresh
	case o.Refresh > 0 && o.Refresh < 500*time.Millisecond:
		return nil, errors.New("admin: Options.Refresh must be at least 500ms (or negative: off), got " + o.Refresh.String())
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &Handler{opts: o, mux: http.NewServeMux(), log: o.Logger.With("component", "admin")}
	h.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/status", http.StatusFound)
	})
	h.mux.HandleFunc("GET /status", h.serveStatusPage)
	h.mux.HandleFunc("GET /status.json", h.serveStatusJSON)
	if o.Metrics != nil {
		h.mux.Handle("/metrics", o.Metrics)
	}
	if o.Pprof {
		h.mux.HandleFunc("/debug/pprof/", pprof.Index)
		h.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		h.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		h.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		h.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if o.Channelz {
		h.grpc = grpc.NewServer()
		channelzsvc.RegisterChannelzServiceToServer(h.grpc)
		reflection.Register(h.grpc)
	}
	return h, nil
}

// ServeHTTP routes gRPC requests (HTTP/2, content-type application/grpc)
// to the channelz server and everything else to the admin routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.grpc != nil && r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		h.grpc.ServeHTTP(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// Close stops the channelz server, ending its RPCs in flight. Safe to call
// twice.
func (h *Handler) Close() {
	if h.grpc != nil {
		h.grpc.Stop()
	}
}

// status returns the current Status with Now set.
func (h *Handler) status() Status {
	st := h.opts.Status()
	if st.Now.IsZero() {
		st.Now = time.Now()
	}
	return st
}

func (h *Handler) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	st := h.status()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		h.log.Error("encoding status", "err", err)
		http.Error(w, "encoding status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	w.Write(append(b, '\n'))
}

// newNonce returns a random nonce for the page's Content-Security-Policy.
func newNonce() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
