package consul

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Defaults and limits of the target's parameters.
const (
	// DefaultWait is the blocking-query wait when the target sets none:
	// Consul's own default.
	DefaultWait = 5 * time.Minute
	// MaxWait is Consul's cap on a blocking query's wait.
	MaxWait = 10 * time.Minute
	// DefaultTimeout bounds how long a request to Consul may take beyond
	// its blocking wait.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxBackoff caps the delay between retries after errors.
	DefaultMaxBackoff = 30 * time.Second
	// MaxDuration bounds the timeout and max-backoff parameters.
	MaxDuration = 10 * time.Minute
	// DefaultNear sorts instances by round-trip time from the queried agent.
	DefaultNear = "_agent"
	// DefaultLBService is the Consul service under which Lookaside
	// replicas register.
	DefaultLBService = "lookaside"
	// MaxNameLength is the longest service name accepted, in bytes: the
	// balancer's default limit on the name it is sent.
	MaxNameLength = 255
)

// Target is a parsed consul:// target. ParseTarget fills every field,
// defaults included. The zero value is not a valid target.
type Target struct {
	// Addr is the Consul agent's host:port, from the URL's authority.
	// Empty means Consul's default: $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Addr string
	// User and Password, from the URL's user info, are sent as HTTP basic
	// authentication when User is set.
	User, Password string
	// Service is the Consul service to resolve, from the URL's path.
	Service string

	// Tags (parameter "tag", repeatable, comma-separated): only instances
	// carrying every tag are used.
	Tags []string
	// Healthy (parameter "healthy"): true uses only instances whose checks
	// all pass; false uses every instance, whatever its checks say.
	// Default true.
	Healthy bool
	// Near (parameter "near"): Consul sorts instances by round-trip time
	// from this node before Limit keeps the first ones. Default "_agent".
	Near string
	// Limit (parameter "limit"): keep at most this many instances, the
	// nearest first. 0, the default, keeps all.
	Limit int

	// Wait (parameter "wait"): how long one blocking query waits for a
	// change, up to MaxWait. Default DefaultWait.
	Wait time.Duration
	// Timeout (parameter "timeout"): how long a request to Consul may take
	// beyond its blocking wait before it is abandoned as failed, up to
	// MaxDuration. Default DefaultTimeout.
	Timeout time.Duration
	// MaxBackoff (parameter "max-backoff"): the cap of the delay between
	// retries after Consul errors or a rejected state, up to MaxDuration.
	// Default DefaultMaxBackoff.
	MaxBackoff time.Duration

	// Token (parameter "token") is the ACL token. Default: Consul's
	// ($CONSUL_HTTP_TOKEN, $CONSUL_HTTP_TOKEN_FILE). Never logged.
	Token string
	// Datacenter (parameter "dc"). Default: the agent's.
	Datacenter string
	// AllowStale (parameter "allow-stale") lets any Consul server answer.
	AllowStale bool
	// RequireConsistent (parameter "require-consistent") makes the leader
	// confirm its leadership before answering. Exclusive with AllowStale.
	RequireConsistent bool
	// Insecure (parameter "insecure") skips the verification of Consul's
	// TLS certificate (when Consul is reached over HTTPS, for example with
	// $CONSUL_HTTP_SSL=true).
	Insecure bool

	// LB (parameter "lb", "on" or "off"): whether the channel is balanced
	// by Lookaside. Default on.
	LB bool
	// LBService (parameter "lb-service"): the Consul service of the
	// Lookaside replicas. Default DefaultLBService.
	LBService string
}

// parameters are the query parameters a target may carry.
var parameters = []string{
	"tag", "healthy", "near", "limit", "wait", "timeout", "max-backoff",
	"token", "dc", "allow-stale", "require-consistent", "insecure",
	"lb", "lb-service",
}

// String returns the target as a URL, with the password and the token
// redacted.
func (t Target) String() string {
	u := url.URL{Scheme: Scheme, Host: t.Addr, Path: "/" + t.Service}
	if t.User != "" {
		if t.Password != "" {
			u.User = url.UserPassword(t.User, "redacted")
		} else {
			u.User = url.User(t.User)
		}
	}
	q := url.Values{}
	for _, tag := range t.Tags {
		q.Add("tag", tag)
	}
	if !t.Healthy {
		q.Set("healthy", "false")
	}
	if t.Near != DefaultNear {
		q.Set("near", t.Near)
	}
	if t.Limit != 0 {
		q.Set("limit", strconv.Itoa(t.Limit))
	}
	setDur := func(k string, d, def time.Duration) {
		if d != def {
			q.Set(k, d.String())
		}
	}
	setDur("wait", t.Wait, DefaultWait)
	setDur("timeout", t.Timeout, DefaultTimeout)
	setDur("max-backoff", t.MaxBackoff, DefaultMaxBackoff)
	if t.Token != "" {
		q.Set("token", "redacted")
	}
	if t.Datacenter != "" {
		q.Set("dc", t.Datacenter)
	}
	for k, v := range map[string]bool{"allow-stale": t.AllowStale, "require-consistent": t.RequireConsistent, "insecure": t.Insecure} {
		if v {
			q.Set(k, "true")
		}
	}
	if !t.LB {
		q.Set("lb", "off")
	}
	if t.LBService != DefaultLBService {
		q.Set("lb-service", t.LBService)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// LogValue logs the target as String does, without secrets.
func (t Target) LogValue() slog.Value { return slog.StringValue(t.String()) }

// ParseTarget parses a target such as
// "consul://127.0.0.1:8500/user-srv?wait=14s&tag=srv" (see the package
// documentation). It returns an error naming the first problem: a URL that
// is not consul://[user[:password]@][host[:port]]/service, an unknown or
// repeated parameter, or a value out of its range. Safe for concurrent use.
func ParseTarget(target string) (Target, error) {
	u, err := url.Parse(target)
	if err != nil {
		// url.Error repeats the raw URL, password included: keep its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Target{}, fmt.Errorf("consul: target %q: %w", redactURL(target), err)
	}
	if u.Scheme != Scheme {
		return Target{}, fmt.Errorf("consul: target %q: scheme %q, want %q", redactURL(target), u.Scheme, Scheme)
	}
	return parseURL(u)
}

// parseURL parses a target URL of any scheme (a Builder may serve another
// one than "consul").
func parseURL(u *url.URL) (Target, error) {
	t := Target{
		Addr:       u.Host,
		Healthy:    true,
		Near:       DefaultNear,
		Wait:       DefaultWait,
		Timeout:    DefaultTimeout,
		MaxBackoff: DefaultMaxBackoff,
		LB:         true,
		LBService:  DefaultLBService,
	}
	if u.Opaque != "" {
		return Target{}, fmt.Errorf("consul: target %q: want %s://[user[:password]@][host[:port]]/service[?parameters]", redactURL(u.String()), u.Scheme)
	}
	if u.User != nil {
		t.User = u.User.Username()
		t.Password, _ = u.User.Password()
	}
	// One leading slash separates the authority from the path; one
	// trailing slash ("/user-srv/?wait=14s") is tolerated.
	t.Service = strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if err := validateServiceName(t.Service); err != nil {
		return Target{}, fmt.Errorf("consul: target service: %w", err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Target{}, fmt.Errorf("consul: target parameters: %w", err)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first problem reported is the same every time
	var errs []error
	for _, k := range keys {
		if err := t.set(k, q[k]); err != nil {
			errs = append(errs, fmt.Errorf("consul: target parameter %s: %w", k, err))
		}
	}
	if t.AllowStale && t.RequireConsistent {
		errs = append(errs, errors.New("consul: target parameters allow-stale and require-consistent exclude each other"))
	}
	if err := errors.Join(errs...); err != nil {
		return Target{}, err
	}
	return t, nil
}

// set applies one parameter.
func (t *Target) set(key string, vals []string) error {
	if key == "tag" {
		for _, v := range vals {
			for tag := range strings.SplitSeq(v, ",") {
				if tag = strings.TrimSpace(tag); tag != "" && !slices.Contains(t.Tags, tag) {
					t.Tags = append(t.Tags, tag)
				}
			}
		}
		return nil
	}
	if !slices.Contains(parameters, key) {
		return fmt.Errorf("unknown (known: %s)", strings.Join(parameters, ", "))
	}
	if len(vals) > 1 {
		return fmt.Errorf("given %d times", len(vals))
	}
	v := vals[0]
	var err error
	switch key {
	case "healthy":
		t.Healthy, err = parseBool(v)
	case "allow-stale":
		t.AllowStale, err = parseBool(v)
	case "require-consistent":
		t.RequireConsistent, err = parseBool(v)
	case "insecure":
		t.Insecure, err = parseBool(v)
	case "wait":
		t.Wait, err = parseDuration(v, MaxWait)
	case "timeout":
		t.Timeout, err = parseDuration(v, MaxDuration)
	case "max-backoff":
		t.MaxBackoff, err = parseDuration(v, MaxDuration)
	case "limit":
		t.Limit, err = strconv.Atoi(v)
		if err != nil || t.Limit < 0 {
			err = fmt.Errorf("%q is not a whole number ≥ 0 (0: no limit)", v)
		}
	case "near":
		if v != "" {
			t.Near = v
		}
	case "token":
		t.Token = v
	case "dc":
		if strings.ContainsFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) {
			err = fmt.Errorf("%q is not a datacenter name", v)
		}
		t.Datacenter = v
	case "lb":
		switch strings.ToLower(v) {
		case "on", "true":
			t.LB = true
		case "off", "false":
			t.LB = false
		default:
			err = fmt.Errorf("%q: want on or off", v)
		}
	case "lb-service":
		if err = validateServiceName(v); err == nil {
			t.LBService = v
		}
	}
	return err
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%q: want true or false", v)
	}
	return b, nil
}

// parseDuration parses a positive duration of at most max.
func parseDuration(v string, max time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q: want a duration such as 14s or 1m30s", v)
	}
	if d <= 0 || d > max {
		return 0, fmt.Errorf("%v is not in (0, %v]", d, max)
	}
	return d, nil
}

// validateServiceName accepts the names the balancer accepts (see
// lbserver.ValidateName), without a port: non-empty valid UTF-8 of at most
// MaxNameLength bytes, with no white space, control characters, URL
// delimiters ('/', '?', '#', '%', '\\') or ':'.
func validateServiceName(name string) error {
	switch {
	case name == "":
		return errors.New("service name is empty")
	case len(name) > MaxNameLength:
		return fmt.Errorf("service name is %d bytes, longer than %d", len(name), MaxNameLength)
	case !utf8.ValidString(name):
		return errors.New("service name is not valid UTF-8")
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune("/?#%\\:", r) {
			return fmt.Errorf("service name %q contains %q", name, r)
		}
	}
	return nil
}

// redactURL hides the password and the token parameter of a raw target in
// error messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable>"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "redacted")
	}
	if q, err := url.ParseQuery(u.RawQuery); err == nil && q.Has("token") {
		q.Set("token", "redacted")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
