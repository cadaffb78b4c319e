package consul

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
)

// ClientConfig holds the overrides that NewClient applies on top of the
// Consul API's defaults. Empty fields keep the defaults, which come from the
// standard environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY,
// CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, ...) and otherwise
// from 127.0.0.1:8500 over plain HTTP.
type ClientConfig struct {
	// Address of the Consul agent: "host:port", or with a scheme prefix
	// "http://", "https://" or "unix://".
	Address string
	// Token is the ACL token. Prefer TokenFile or the environment: command
	// lines are visible to other users of the machine.
	Token string
	// TokenFile is a file holding the ACL token; it wins over Token.
	TokenFile string
	// Datacenter is the default datacenter of requests.
	Datacenter string
	// MaxConns bounds the TCP connections the client opens to Consul (and
	// keeps idle), from 1 to MaxMaxConns; requests beyond it wait for a
	// free connection. 0 means DefaultMaxConns. Over a unix:// address
	// the API builds its own transport and the bound does not apply.
	MaxConns int
}

// LogValue keeps the token out of logs.
func (c ClientConfig) LogValue() slog.Value {
	token := ""
	if c.Token != "" {
		token = "<redacted>"
	}
	return slog.GroupValue(
		slog.String("address", c.Address),
		slog.String("token", token),
		slog.String("token_file", c.TokenFile),
		slog.String("datacenter", c.Datacenter),
		slog.Int("max_conns", c.MaxConns),
	)
}

// NewClient builds a Consul API client from api.DefaultConfig, so that the
// standard environment variables are honoured, with the non-empty fields of
// cfg applied on top, and a transport that opens at most cfg.MaxConns
// connections. Use API(client) as Config.Client. It does not contact
// Consul.
func NewClient(cfg ClientConfig) (*api.Client, error) {
	if cfg.MaxConns < 0 || cfg.MaxConns > MaxMaxConns {
		return nil, fmt.Errorf("consul: ClientConfig.MaxConns %d out of range [1, %d] (or 0 for %d)", cfg.MaxConns, MaxMaxConns, DefaultMaxConns)
	}
	maxConns := cfg.MaxConns
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	ac := api.DefaultConfig()
	ac.Transport = boundedTransport(maxConns)
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
		// A token given explicitly wins over CONSUL_HTTP_TOKEN_FILE.
		ac.TokenFile = ""
	}
	if cfg.TokenFile != "" {
		ac.TokenFile = cfg.TokenFile
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul: new client: %w", err)
	}
	return c, nil
}

// boundedTransport is go-cleanhttp's pooled transport with a bound on the
// connections per host: every blocking query holds one connection (HTTP/1.1
// does not multiplex), so the bound is the number of queries in flight.
func boundedTransport(maxConns int) *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          maxConns,
		MaxIdleConnsPerHost:   maxConns,
		MaxConnsPerHost:       maxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
}
