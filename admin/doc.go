// Package admin is the balancer's admin listener: an operator's status
// page, the same data as JSON, the Prometheus metrics, pprof and channelz,
// all on one port.
//
// New builds the handler from Options; Serve runs it on a listener until
// its context ends. The routes:
//
//   - /status: an HTML page rendered on the server (html/template, inline
//     CSS and SVG, nothing fetched from elsewhere) that refreshes itself
//     every Options.Refresh: a few lines of inline script fetch the page
//     again and swap its content; without script, a meta refresh reloads it.
//     / redirects to it.
//   - /status.json: the same Status as JSON.
//   - /metrics: Options.Metrics (404 when nil).
//   - /debug/pprof/: net/http/pprof, on this handler's own mux (never
//     http.DefaultServeMux), only with Options.Pprof.
//   - gRPC: requests over HTTP/2 with content-type application/grpc go to a
//     grpc.Server of the handler's own with channelz
//     (grpc.channelz.v1.Channelz) and server reflection registered, with
//     Options.Channelz. The listener must speak HTTP/2 without TLS (h2c with
//     prior knowledge, what grpc-go clients with insecure credentials send);
//     Serve's http.Server does.
//
// The handler owns no goroutine; the data comes from Options.Status, called
// once per request from the request's goroutine.
package admin
