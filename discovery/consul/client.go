package consul

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// ClientConfig holds the overrides that NewClient applies on top of the
// Consul API's defaults. Empty fields keep the defaults, which come from the
// standard environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY,
// CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY,
// CONSUL_TLS_SERVER_NAME, ...) and otherwise from 127.0.0.1:8500 over
// plain HTTP; a field that is set wins over its variable.
//
// TLS: UseTLS, an "https://" Address, or any of CAFile, CAPath,
// CertFile, KeyFile, ServerName and InsecureSkipVerify makes the client
// speak HTTPS (as CONSUL_HTTP_SSL=true does). The files are read once, by
// NewClient; a rotated Consul client certificate takes a restart.
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

	// UseTLS speaks HTTPS to Consul, like CONSUL_HTTP_SSL=true.
	UseTLS bool
	// CAFile is a PEM bundle of the CAs that Consul's certificate must
	// chain to (CONSUL_CACERT); CAPath a directory of such files
	// (CONSUL_CAPATH). Setting either replaces both variables. Empty
	// (and no variable): the system roots.
	CAFile, CAPath string
	// CertFile and KeyFile are the client certificate and key presented
	// to Consul, for agents with verify_incoming (CONSUL_CLIENT_CERT,
	// CONSUL_CLIENT_KEY). Both or neither.
	CertFile, KeyFile string
	// ServerName is the name Consul's certificate must carry, when it is
	// not the address's host (CONSUL_TLS_SERVER_NAME), for example
	// "server.dc1.consul" when the agent is reached by IP address.
	ServerName string
	// InsecureSkipVerify accepts any certificate from Consul (like
	// CONSUL_HTTP_SSL_VERIFY=false): encryption without authentication,
	// for tests only. It cannot be combined with CAFile or CAPath.
	InsecureSkipVerify bool
}

// tls reports whether any TLS field is set.
func (c ClientConfig) tls() bool {
	return c.UseTLS || c.CAFile != "" || c.CAPath != "" || c.CertFile != "" || c.KeyFile != "" ||
		c.ServerName != "" || c.InsecureSkipVerify
}

// validateTLS checks the TLS fields against each other and the address.
func (c ClientConfig) validateTLS() error {
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return fmt.Errorf("consul: ClientConfig.CertFile %s has no KeyFile", c.CertFile)
	case c.CertFile == "" && c.KeyFile != "":
		return fmt.Errorf("consul: ClientConfig.KeyFile %s has no CertFile", c.KeyFile)
	case c.InsecureSkipVerify && (c.CAFile != "" || c.CAPath != ""):
		return errors.New("consul: ClientConfig.InsecureSkipVerify and a CA file or path are both set: the CA would be ignored")
	case c.tls() && strings.HasPrefix(c.Address, "http://"):
		return fmt.Errorf("consul: ClientConfig.Address %q is plain HTTP, but TLS settings are given: use https:// or drop the scheme", c.Address)
	case c.tls() && strings.HasPrefix(c.Address, "unix://"):
		return fmt.Errorf("consul: ClientConfig.Address %q is a unix socket, but TLS settings are given", c.Address)
	}
	return nil
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
		slog.Bool("tls", c.tls()),
		slog.String("ca_file", c.CAFile),
		slog.String("ca_path", c.CAPath),
		slog.String("cert_file", c.CertFile),
		slog.String("key_file", c.KeyFile),
		slog.String("server_name", c.ServerName),
		slog.Bool("insecure_skip_verify", c.InsecureSkipVerify),
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
	if err := cfg.validateTLS(); err != nil {
		return nil, err
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
	if cfg.tls() {
		ac.Scheme = "https"
	}
	if cfg.CAFile != "" || cfg.CAPath != "" {
		ac.TLSConfig.CAFile, ac.TLSConfig.CAPath = cfg.CAFile, cfg.CAPath
	}
	if cfg.CertFile != "" {
		ac.TLSConfig.CertFile, ac.TLSConfig.KeyFile = cfg.CertFile, cfg.KeyFile
	}
	if cfg.ServerName != "" {
		ac.TLSConfig.Address = cfg.ServerName
	}
	if cfg.InsecureSkipVerify {
		ac.TLSConfig.InsecureSkipVerify = true
		ac.TLSConfig.CAFile, ac.TLSConfig.CAPath = "", ""
	}
	if cfg.tls() {
		// Built here, since api.NewClient would fill the fields cleared
		// above from the environment again.
		hc, err := api.NewHttpClient(ac.Transport, ac.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("consul: TLS: %w", err)
		}
		ac.HttpClient = hc
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
