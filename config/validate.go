package config

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/miekg/dns"

	"github.com/lookaside-lb/lookaside/discovery"
	"github.com/lookaside-lb/lookaside/discovery/consul"
	"github.com/lookaside-lb/lookaside/discovery/static"
	"github.com/lookaside-lb/lookaside/dnsserver"
	"github.com/lookaside-lb/lookaside/lbserver"
	"github.com/lookaside-lb/lookaside/lbtoken"
	"github.com/lookaside-lb/lookaside/loadreport"
	"github.com/lookaside-lb/lookaside/loadweight"
	"github.com/lookaside-lb/lookaside/policy"
)

// Validate checks every field of c, and the fields against each other, by
// the rules the packages apply (lbserver, discovery/consul, dnsserver,
// loadreport, loadweight, policy), and returns every problem at once as
// Errors sorted by path, or nil. It rejects what the packages would clamp
// (a load-report interval over 1m) and settings that would be silently
// ignored (a pprof switch without an admin listener, TLS files with TLS
// off). It reads the files c names (TLS, token and key files: readable;
// the lb-token key is parsed; certificates are left to the TLS package),
// so it blocks on the file system.
//
// Policy names are checked against policy.Names: the caller registers the
// policies (import policy/all) before calling Validate. Safe for
// concurrent use.
func (c Config) Validate() error {
	v := validator{cfg: c}
	v.top()
	v.consul()
	v.static()
	v.register()
	v.balancer()
	v.loadReports()
	v.rateLimits()
	v.limits()
	v.dns()
	v.serverTLS()
	v.admin()
	v.services()
	return v.errs.sorted()
}

type validator struct {
	cfg  Config
	errs Errors
}

func (v *validator) add(path, value, msg string) {
	v.errs = append(v.errs, FieldError{Path: path, Value: value, Msg: msg})
}

func q(s string) string               { return strconv.Quote(s) }
func fnum(f float64) string           { return strconv.FormatFloat(f, 'g', -1, 64) }
func inum(i int) string               { return strconv.Itoa(i) }
func fdur(d Duration) string          { return compact(time.Duration(d)) }
func finite(f float64) bool           { return !math.IsNaN(f) && !math.IsInf(f, 0) }
func between(d, lo, hi Duration) bool { return d >= lo && d <= hi }

// durRange rejects d outside [lo, hi].
func (v *validator) durRange(path string, d Duration, lo, hi time.Duration) {
	if !between(d, Duration(lo), Duration(hi)) {
		v.add(path, fdur(d), fmt.Sprintf("is not in [%s, %s]", compact(lo), compact(hi)))
	}
}

// intRange rejects n outside [lo, hi].
func (v *validator) intRange(path string, n, lo, hi int) {
	if n < lo || n > hi {
		v.add(path, inum(n), fmt.Sprintf("is not in [%d, %d]", lo, hi))
	}
}

// positive rejects a duration that is not above 0.
func (v *validator) positive(path string, d Duration) {
	if d <= 0 {
		v.add(path, fdur(d), "must be positive")
	}
}

// hostPort checks "host:port" with a port from 0 (any) to 65535.
func (v *validator) hostPort(path, addr string) {
	if _, _, err := splitHostPort(addr); err != nil {
		v.add(path, q(addr), err.Error())
	}
}

func splitHostPort(addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("is not host:port (such as 127.0.0.1:7000, [::1]:7000 or :7000)")
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("has a port that is not in [0, 65535]")
	}
	if strings.ContainsAny(h, " /?#%\\") {
		return "", 0, fmt.Errorf("has a host that is not a name or an IP address")
	}
	return h, n, nil
}

// concreteHost reports whether others can reach host: neither empty nor
// an unspecified address.
func concreteHost(host string) bool {
	if host == "" {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err != nil || !a.IsUnspecified()
}

// readable checks that path names a regular file this process can read.
func (v *validator) readable(path, file string) {
	if file == "" {
		return
	}
	if err := checkReadable(file); err != "" {
		v.add(path, q(file), err)
	}
}

func checkReadable(file string) string {
	// Stat first: opening a FIFO or a device could block.
	fi, err := os.Stat(file)
	if err != nil {
		return "cannot be read: " + pathErr(err)
	}
	if !fi.Mode().IsRegular() {
		return "is not a regular file"
	}
	f, err := os.Open(file)
	if err != nil {
		return "cannot be read: " + pathErr(err)
	}
	f.Close()
	return ""
}

// consulName checks a Consul service name or ID as consulreg does.
func consulName(s string) string {
	switch {
	case s == "":
		return "is empty"
	case strings.ContainsAny(s, "/?#% \t\n"):
		return "has '/', '?', '#', '%' or white space"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	return ""
}

func (v *validator) top() {
	c := v.cfg
	v.hostPort("listen", c.Listen)
	v.positive("shutdown_timeout", c.ShutdownTimeout)
	var l slog.Level
	if l.UnmarshalText([]byte(c.Log.Level)) != nil {
		v.add("log.level", q(c.Log.Level), "is not a level: want debug, info, warn or error")
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		v.add("log.format", q(c.Log.Format), "is not a format: want text or json")
	}
}

// staticSet reports whether backends come from static rather than Consul.
func (c Config) staticSet() bool { return c.Static.File != "" || len(c.Static.Services) > 0 }

// dnsUsesConsul reports whether the DNS responder watches the replicas in
// Consul (DNS on, no fixed balancers, backends from Consul).
func (c Config) dnsUsesConsul() bool {
	return c.DNS.Listen != "" && len(c.DNS.Balancers) == 0 && !c.staticSet()
}

func (v *validator) consul() {
	c := v.cfg.Consul
	if a := c.Address; a != "" {
		if msg := checkConsulAddress(a); msg != "" {
			v.add("consul.address", q(a), msg)
		}
	}
	if c.Token != "" && c.TokenFile != "" {
		v.add("consul.token_file", q(c.TokenFile), "and consul.token are both set: set one")
	}
	v.readable("consul.token_file", c.TokenFile)
	if dc := c.Datacenter; dc != "" {
		if msg := consulName(dc); msg != "" {
			v.add("consul.datacenter", q(dc), msg)
		}
	}
	v.tags("consul.tags", c.Tags)
	v.durRange("consul.wait", c.Wait, consul.MinWaitTime, consul.MaxWaitTime)
	v.intRange("consul.max_conns", c.MaxConns, 1, consul.MaxMaxConns)
	v.intRange("consul.max_fetches", c.MaxFetches, 1, consul.MaxMaxFetches)
	v.durRange("consul.resolve_interval", c.ResolveInterval, consul.MinResolveInterval, consul.MaxResolveInterval)
	v.durRange("consul.resync_interval", c.ResyncInterval, consul.MinResyncInterval, consul.MaxResyncInterval)
	v.clientTLS("consul.tls", c.TLS)
	if v.cfg.staticSet() {
		return
	}
	need := consul.ConnsNeeded(c.MaxFetches)
	why := fmt.Sprintf("consul.max_fetches %d needs %d (fetches + %d long polls + a probe)", c.MaxFetches, need, consul.LongPolls)
	if v.cfg.dnsUsesConsul() {
		dnsNeed := consul.ConnsNeeded(1)
		why += fmt.Sprintf(", and the DNS responder's watch of the replicas %d more", dnsNeed)
		need += dnsNeed
	}
	if c.MaxConns < need && c.MaxConns >= 1 && c.MaxFetches >= 1 {
		v.add("consul.max_conns", inum(c.MaxConns), fmt.Sprintf("is below the %d connections needed: %s", need, why))
	}
}

// checkConsulAddress accepts what the Consul API does: host:port, or with
// a scheme http://host[:port], https://host[:port] or unix:///path.
func checkConsulAddress(a string) string {
	if path, ok := strings.CutPrefix(a, "unix://"); ok {
		if path == "" {
			return "has no socket path after unix://"
		}
		return ""
	}
	rest, scheme := a, false
	for _, s := range []string{"http://", "https://"} {
		if r, ok := strings.CutPrefix(a, s); ok {
			rest, scheme = r, true
		}
	}
	if scheme {
		if rest == "" || strings.ContainsAny(rest, "/?# ") {
			return "is not scheme://host[:port]"
		}
		if strings.Contains(rest, ":") && !strings.HasSuffix(rest, "]") {
			if _, _, err := splitHostPort(rest); err != nil {
				return "is not scheme://host[:port]"
			}
		}
		return ""
	}
	if strings.Contains(a, "://") {
		return "has a scheme other than http://, https:// or unix://"
	}
	if h, p, err := splitHostPort(a); err != nil || h == "" || p == 0 {
		return "is not host:port (such as 127.0.0.1:8500), http(s)://host[:port] or unix:///path"
	}
	return ""
}

// tags checks a list of Consul tags: non-empty, without ',' (which
// separates tags in watched names) or white space, each once.
func (v *validator) tags(path string, tags []string) {
	seen := map[string]bool{}
	for i, t := range tags {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case t == "":
			v.add(p, q(t), "is empty")
		case strings.ContainsFunc(t, func(r rune) bool { return r == ',' || r == '@' || unicode.IsSpace(r) || unicode.IsControl(r) }):
			v.add(p, q(t), "has ',', '@' or white space")
		case seen[strings.ToLower(t)]:
			v.add(p, q(t), "is listed twice (tags match case-insensitively)")
		}
		seen[strings.ToLower(t)] = true
	}
}

// clientTLS checks TLS toward a server.
func (v *validator) clientTLS(path string, t ClientTLS) {
	if !t.Enabled {
		for _, f := range []struct{ key, val string }{
			{"ca_file", t.CAFile}, {"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"server_name", t.ServerName},
		} {
			if f.val != "" {
				v.add(path+"."+f.key, q(f.val), "has no effect: "+path+".enabled is false")
			}
		}
		if t.InsecureSkipVerify {
			v.add(path+".insecure_skip_verify", "true", "has no effect: "+path+".enabled is false")
		}
		return
	}
	v.readable(path+".ca_file", t.CAFile)
	v.readable(path+".cert_file", t.CertFile)
	v.readable(path+".key_file", t.KeyFile)
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		v.add(path+".key_file", q(""), "is needed with "+path+".cert_file (a client certificate needs its key)")
	case t.CertFile == "" && t.KeyFile != "":
		v.add(path+".cert_file", q(""), "is needed with "+path+".key_file (a key needs its certificate)")
	}
	if t.InsecureSkipVerify && t.CAFile != "" {
		v.add(path+".insecure_skip_verify", "true", "and "+path+".ca_file are both set: the CA would be ignored")
	}
}

// consulWatchFields are the consul keys that only matter when backends come
// from Consul; the others (connection settings) also serve registration.
var consulWatchFields = []string{"tags", "stale", "include_warning", "wait", "max_fetches", "resolve_interval", "resync_interval"}

func (v *validator) static() {
	c := v.cfg
	s := c.Static
	if s.File != "" && len(s.Services) > 0 {
		v.add("static.file", q(s.File), "and static.services are both set: set one")
	}
	if s.File != "" {
		if msg := checkReadable(s.File); msg != "" {
			v.add("static.file", q(s.File), msg)
		} else if _, err := static.LoadFile(s.File); err != nil {
			v.add("static.file", q(s.File), "is not a static backends file: "+strings.TrimPrefix(err.Error(), "static: "+s.File+": "))
		}
	}
	for _, name := range sortedKeys(s.Services) {
		path := joinPath("static.services", name)
		if msg := staticName(name); msg != "" {
			v.add(path, q(name), msg)
		}
		addrs := s.Services[name]
		if len(addrs) == 0 {
			v.add(path, "", "has no address")
		}
		seen := map[string]bool{}
		for i, a := range addrs {
			p := fmt.Sprintf("%s[%d]", path, i)
			if strings.ContainsAny(a, ";,=") {
				v.add(p, q(a), "is not ip:port or ip:port*weight")
				continue
			}
			eps, err := static.ParseSpec("s=" + a)
			if err != nil {
				_, reason, _ := strings.Cut(err.Error(), q(a)+": ")
				if reason == "" {
					reason = "is not ip:port or ip:port*weight"
				} else {
					reason = "is not ip:port or ip:port*weight: " + reason
				}
				v.add(p, q(a), reason)
				continue
			}
			if addr := eps["s"][0].Addr.String(); seen[addr] {
				v.add(p, q(a), "is listed twice")
			} else {
				seen[addr] = true
			}
		}
	}
	if !c.staticSet() {
		return
	}
	def := Default().Consul
	for _, key := range consulWatchFields {
		if !fieldEqual(c.Consul, def, key) {
			v.add("consul."+key, "", "has no effect: static lists the backends (static and consul's watch settings are exclusive)")
		}
	}
	if c.Register.Enabled {
		return
	}
	for _, key := range []string{"address", "token", "token_file", "datacenter", "max_conns", "tls"} {
		if !fieldEqual(c.Consul, def, key) {
			v.add("consul."+key, "", "has no effect: static lists the backends and register.enabled is false")
		}
	}
}

// staticName applies the static source's rules for service names.
func staticName(name string) string {
	switch {
	case name == "":
		return "is empty"
	case len(name) > static.MaxServiceNameLen:
		return fmt.Sprintf("is longer than %d bytes", static.MaxServiceNameLen)
	case !utf8.ValidString(name):
		return "is not valid UTF-8"
	case strings.ContainsFunc(name, func(r rune) bool {
		return r == '/' || r == '?' || r == '#' || r == '=' || r == ';' || unicode.IsSpace(r) || unicode.IsControl(r)
	}):
		return "has '/', '?', '#', '=', ';' or white space"
	}
	return ""
}

// fieldEqual reports whether the field with YAML key key is equal in a
// and b (structs of one type).
func fieldEqual(a, b any, key string) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	idx, ok := yamlFields(va.Type())[key]
	if !ok {
		panic("config: no field " + key)
	}
	return reflect.DeepEqual(va.FieldByIndex(idx).Interface(), vb.FieldByIndex(idx).Interface())
}

func (v *validator) register() {
	c := v.cfg
	r := c.Register
	if msg := consulName(r.Service); msg != "" {
		v.add("register.service", q(r.Service), msg)
	}
	if r.ID != "" {
		if msg := consulName(r.ID); msg != "" {
			v.add("register.id", q(r.ID), msg)
		}
	}
	if r.Advertise != "" {
		if host, port, err := splitHostPort(r.Advertise); err != nil {
			v.add("register.advertise", q(r.Advertise), err.Error())
		} else if !concreteHost(host) || port == 0 {
			v.add("register.advertise", q(r.Advertise), "needs a host others can reach and a port in [1, 65535]")
		}
	}
	v.positive("register.check_interval", r.CheckInterval)
	if r.DrainDelay < 0 {
		v.add("register.drain_delay", fdur(r.DrainDelay), "is negative")
	}
	if r.Enabled && r.Advertise == "" {
		if host, _, err := splitHostPort(c.Listen); err == nil && !concreteHost(host) {
			v.add("register.advertise", q(""), fmt.Sprintf("is needed: listen %q has no host others can reach", c.Listen))
		}
	}
}

// knownPolicy returns "" if name is a registered policy, else why not.
func knownPolicy(name string) string {
	names := policy.Names()
	if slices.Contains(names, name) {
		return ""
	}
	return fmt.Sprintf("is not a policy (known: %s)", strings.Join(names, ", "))
}

func childPolicy(name string) string {
	if name == dnsserver.RoundRobin || name == dnsserver.PickFirst {
		return ""
	}
	return fmt.Sprintf("is not a child policy: want %s or %s", dnsserver.RoundRobin, dnsserver.PickFirst)
}

// zoneName checks a DNS zone as lbserver and dnsserver do.
func zoneName(z string, max int) string {
	if _, ok := dns.IsDomainName(z); !ok || z == "" || strings.ContainsAny(z, "\\ *:") ||
		strings.HasPrefix(z, ".") || strings.HasSuffix(z, ".") || strings.Contains(z, "..") ||
		lbserver.ValidateName(z, max) != nil {
		return "is not a domain name without leading or trailing dot"
	}
	return ""
}

func (v *validator) balancer() {
	b := v.cfg.Balancer
	if msg := knownPolicy(b.Policy); msg != "" {
		v.add("balancer.policy", q(b.Policy), msg)
	}
	v.intRange("balancer.max_list_entries", b.MaxListEntries, 1, policy.MaxMaxEntries)
	if b.MaxListEntries <= policy.MaxMaxEntries {
		v.boundedBy("balancer.hash_subset", b.HashSubset, "balancer.max_list_entries", b.MaxListEntries)
	} else {
		v.atLeastOne("balancer.hash_subset", b.HashSubset)
	}
	if msg := childPolicy(b.ChildPolicy); msg != "" {
		v.add("balancer.child_policy", q(b.ChildPolicy), msg)
	}
	v.intRange("balancer.max_name_length", b.MaxNameLength, 1, lbserver.MaxMaxNameLength)
	nameMax := v.nameMax()
	seen := map[string]bool{}
	for i, z := range b.Zones {
		p := fmt.Sprintf("balancer.zones[%d]", i)
		if msg := zoneName(z, nameMax); msg != "" {
			v.add(p, q(z), msg)
		} else if seen[strings.ToLower(z)] {
			v.add(p, q(z), "is listed twice (zones match case-insensitively)")
		}
		seen[strings.ToLower(z)] = true
	}
	if d := b.ClientStatsInterval; d != 0 && d < Duration(time.Second) {
		v.add("balancer.client_stats_interval", fdur(d), "is not 0 (off) or at least 1s")
	}
	if d := b.InitialRequestTimeout; d < Duration(100*time.Millisecond) {
		v.add("balancer.initial_request_timeout", fdur(d), "is under 100ms")
	}
	if d := b.FirstListTimeout; d <= 0 || d > Duration(time.Minute) {
		v.add("balancer.first_list_timeout", fdur(d), "is not in (0, 1m]")
	}
	if b.WatchLinger < 0 {
		v.add("balancer.watch_linger", fdur(b.WatchLinger), "is negative")
	}
	if b.MaxServices < 1 {
		v.add("balancer.max_services", inum(b.MaxServices), "is under 1")
	}
	if d := b.MaxStreamAge; d != 0 && d < Duration(10*time.Second) {
		v.add("balancer.max_stream_age", fdur(d), "is not 0 (never) or at least 10s")
	}
	if t := b.Transport; !lbserver.ValidTransport(t) {
		v.add("balancer.transport", q(t), "is not "+lbserver.TransportLookaside+" or "+lbserver.TransportGRPC)
	}
	if f := b.LBTokenKeyFile; f != "" {
		if msg := checkReadable(f); msg != "" {
			v.add("balancer.lb_token_key_file", q(f), msg)
		} else if _, err := lbtoken.LoadKey(f, nil); err != nil {
			v.add("balancer.lb_token_key_file", q(f), "holds no usable key: "+strings.TrimPrefix(err.Error(), "lbtoken: "))
		}
	}
}

// nameMax is the name length bound names are checked against: the
// configured one when valid.
func (v *validator) nameMax() int {
	if n := v.cfg.Balancer.MaxNameLength; n >= 1 && n <= lbserver.MaxMaxNameLength {
		return n
	}
	return lbserver.DefaultMaxNameLength
}

func (v *validator) loadReports() {
	l := v.cfg.LoadReports
	v.durRange("load_reports.interval", l.Interval, loadreport.MinCollectInterval, loadreport.MaxCollectInterval)
	if l.Blackout < 0 {
		v.add("load_reports.blackout", fdur(l.Blackout), "is negative")
	}
	if !finite(l.OverloadThreshold) || l.OverloadThreshold <= 0 {
		v.add("load_reports.overload_threshold", fnum(l.OverloadThreshold), "is not a positive number")
	}
	if !(l.MaxDropShare >= 0 && l.MaxDropShare <= policy.MaxDropShare) {
		v.add("load_reports.max_drop_share", fnum(l.MaxDropShare), fmt.Sprintf("is not in [0, %v]", policy.MaxDropShare))
	}
	o := l.LatencyOutliers
	const lo = "load_reports.latency_outliers."
	if !(o.Factor > 1 && o.Factor <= loadweight.MaxOutlierFactor) {
		v.add(lo+"factor", fnum(o.Factor), fmt.Sprintf("is not in (1, %v]", loadweight.MaxOutlierFactor))
	}
	if !(o.ReadmitFactor > 1 && o.ReadmitFactor <= o.Factor) {
		v.add(lo+"readmit_factor", fnum(o.ReadmitFactor), fmt.Sprintf("is not in (1, factor %v]", fnum(o.Factor)))
	}
	if o.MinExcess < 0 {
		v.add(lo+"min_excess", fdur(o.MinExcess), "is negative")
	}
	if o.EjectAfter < 0 {
		v.add(lo+"eject_after", fdur(o.EjectAfter), "is negative")
	}
	if o.MinEndpoints < loadweight.MinOutlierEndpoints {
		v.add(lo+"min_endpoints", inum(o.MinEndpoints), fmt.Sprintf("is under %d", loadweight.MinOutlierEndpoints))
	}
	if !(o.MaxEjectedFraction > 0 && o.MaxEjectedFraction <= 1) {
		v.add(lo+"max_ejected_fraction", fnum(o.MaxEjectedFraction), "is not in (0, 1]")
	}
	if o.BaseEjectionTime <= 0 {
		v.add(lo+"base_ejection_time", fdur(o.BaseEjectionTime), "is not positive")
	} else if o.MaxEjectionTime < o.BaseEjectionTime {
		v.add(lo+"max_ejection_time", fdur(o.MaxEjectionTime), "is under base_ejection_time "+fdur(o.BaseEjectionTime))
	}
	if !(o.ProbeShare > 0 && o.ProbeShare <= loadweight.MaxProbeShare) {
		v.add(lo+"probe_share", fnum(o.ProbeShare), fmt.Sprintf("is not in (0, %v]", loadweight.MaxProbeShare))
	}
	v.clientTLS("load_reports.tls", l.TLS)
	if l.TLS.Enabled && !l.Enabled {
		v.add("load_reports.tls.enabled", "true", "has no effect: load_reports.enabled is false")
	}
}

func (v *validator) rateLimits() {
	r := v.cfg.RateLimits
	if !(r.MaxDropShare > 0 && r.MaxDropShare <= 1) {
		v.add("rate_limits.max_drop_share", fnum(r.MaxDropShare), "is not in (0, 1]")
	}
	if !(r.MaxClientRateShare > 0 && r.MaxClientRateShare <= 100) {
		v.add("rate_limits.max_client_rate_share", fnum(r.MaxClientRateShare), "is not in (0, 100]")
	}
	if !(r.MaxClientCallRate > 0) || math.IsInf(r.MaxClientCallRate, 1) {
		v.add("rate_limits.max_client_call_rate", fnum(r.MaxClientCallRate), "is not a positive number")
	}
}

func (v *validator) limits() {
	l := v.cfg.Limits
	// A bound that is itself invalid is reported once, not again through
	// the limits it bounds.
	v.atLeastOne("limits.max_streams", l.MaxStreams)
	v.boundedBy("limits.max_streams_per_ip", l.MaxStreamsPerIP, "limits.max_streams", l.MaxStreams)
	perIPOK := l.MaxStreamsPerIP >= 1 && (l.MaxStreams < 1 || l.MaxStreamsPerIP <= l.MaxStreams)
	if perIPOK {
		v.boundedBy("limits.max_streams_per_conn", l.MaxStreamsPerConn, "limits.max_streams_per_ip", l.MaxStreamsPerIP)
	} else {
		v.atLeastOne("limits.max_streams_per_conn", l.MaxStreamsPerConn)
	}
	if l.MaxStreamsPerConn > lbserver.MaxMaxStreamsPerConn && !(perIPOK && l.MaxStreamsPerConn > l.MaxStreamsPerIP) {
		v.add("limits.max_streams_per_conn", inum(l.MaxStreamsPerConn), fmt.Sprintf("is over %d", lbserver.MaxMaxStreamsPerConn))
	}
	if !(l.MaxStreamRatePerIP >= 0 && l.MaxStreamRatePerIP <= lbserver.MaxMaxStreamRatePerIP) {
		v.add("limits.max_stream_rate_per_ip", fnum(l.MaxStreamRatePerIP), fmt.Sprintf("is not in [0 (off), %v] streams/s", lbserver.MaxMaxStreamRatePerIP))
	}
	if l.MaxStreamRatePerIP > 0 && (l.StreamBurstPerIP < 1 || l.StreamBurstPerIP > lbserver.MaxStreamBurstPerIP) {
		v.add("limits.stream_burst_per_ip", inum(l.StreamBurstPerIP), fmt.Sprintf("is not in [1, %d]", lbserver.MaxStreamBurstPerIP))
	}
	if l.MaxIgnoredMessages < 0 || l.MaxIgnoredMessages > lbserver.MaxMaxIgnoredMessages {
		v.add("limits.max_ignored_messages", inum(l.MaxIgnoredMessages), fmt.Sprintf("is not in [0 (off), %d]", lbserver.MaxMaxIgnoredMessages))
	}
	v.atLeastOne("limits.max_conns", l.MaxConns)
	v.boundedBy("limits.max_conns_per_ip", l.MaxConnsPerIP, "limits.max_conns", l.MaxConns)
	v.durRange("limits.send_timeout", l.SendTimeout, time.Second, 10*time.Minute)
	v.intRange("limits.max_request_size", l.MaxRequestSize, lbserver.MinMaxRequestSize, lbserver.MaxMaxRequestSize)
}

// atLeastOne rejects n under 1.
func (v *validator) atLeastOne(path string, n int) {
	if n < 1 {
		v.add(path, inum(n), "is under 1")
	}
}

// boundedBy rejects n outside [1, bound], or only under 1 when the bound
// is itself under 1 (and reported there).
func (v *validator) boundedBy(path string, n int, boundPath string, bound int) {
	if bound < 1 {
		v.atLeastOne(path, n)
		return
	}
	if n < 1 || n > bound {
		v.add(path, inum(n), fmt.Sprintf("is not in [1, %s %d]", boundPath, bound))
	}
}

func (v *validator) dns() {
	c := v.cfg
	d := c.DNS
	if d.Listen != "" {
		v.hostPort("dns.listen", d.Listen)
		if _, port, err := splitHostPort(d.Listen); err == nil && port != 0 {
			switch d.Listen {
			case c.Listen:
				v.add("dns.listen", q(d.Listen), "is also listen: the DNS responder needs its own port")
			case c.Admin.Listen:
				v.add("dns.listen", q(d.Listen), "is also admin.listen: the DNS responder needs its own port")
			}
		}
	}
	// The zone is a balancer zone only while the responder is on.
	zoneMax := lbserver.MaxMaxNameLength
	if d.Listen != "" {
		zoneMax = v.nameMax()
	}
	if msg := zoneName(d.Zone, zoneMax); msg != "" {
		v.add("dns.zone", q(d.Zone), msg)
	}
	if d.TTL < Duration(time.Second) || d.TTL > Duration(time.Hour) || d.TTL%Duration(time.Second) != 0 {
		v.add("dns.ttl", fdur(d.TTL), "is not whole seconds in [1s, 1h]")
	}
	if d.LBService != "" {
		if msg := consulName(d.LBService); msg != "" {
			v.add("dns.lb_service", q(d.LBService), msg)
		}
	}
	seen := map[netip.AddrPort]bool{}
	for i, b := range d.Balancers {
		p := fmt.Sprintf("dns.balancers[%d]", i)
		lbs, err := dnsserver.ParseBalancers(b)
		switch {
		case err != nil || strings.Contains(b, ","):
			v.add(p, q(b), "is not an IP:port (hostnames are not accepted: clients resolve SRV targets through this server)")
		case seen[lbs[0]]:
			v.add(p, q(b), "is listed twice")
		default:
			seen[lbs[0]] = true
		}
	}
	if len(d.Allow) == 0 {
		v.add("dns.allow", "[]", "lists no network: list 0.0.0.0/0 and ::/0 to answer everyone")
	}
	for i, a := range d.Allow {
		p := fmt.Sprintf("dns.allow[%d]", i)
		if strings.Contains(a, ",") || strings.TrimSpace(a) == "" {
			v.add(p, q(a), "is not an address or a CIDR prefix")
			continue
		}
		if _, err := dnsserver.ParseAllow(a); err != nil {
			msg := strings.TrimPrefix(err.Error(), "dnsserver: source network "+q(strings.TrimSpace(a))+" ")
			if msg == err.Error() || strings.HasPrefix(msg, ": ") {
				msg = "is not an address or a CIDR prefix"
			}
			v.add(p, q(a), msg)
		}
	}
	if !(d.RateLimit > 0) || math.IsInf(d.RateLimit, 0) {
		v.add("dns.rate_limit", fnum(d.RateLimit), "is not a positive number of answers per second")
	}
	if d.RateBurst < 1 {
		v.add("dns.rate_burst", inum(d.RateBurst), "is under 1")
	}
	if d.MaxInflight < 1 {
		v.add("dns.max_inflight", inum(d.MaxInflight), "is under 1")
	}
	if d.MaxTCPConns < 1 {
		v.add("dns.max_tcp_conns", inum(d.MaxTCPConns), "is under 1")
	}
	// With static backends and no fixed balancers, the SRV records list
	// this replica: its address must be an IP others can reach.
	if d.Listen != "" && c.staticSet() && len(d.Balancers) == 0 {
		self, path := c.Register.Advertise, "register.advertise"
		if self == "" {
			self, path = c.Listen, "listen"
		}
		if host, _, err := splitHostPort(self); err == nil {
			if a, err := netip.ParseAddr(host); err != nil || a.IsUnspecified() || a.Zone() != "" {
				v.add("dns.balancers", "[]", fmt.Sprintf("are needed: with static backends the SRV records list this replica, and %s %q is not an IP others can reach (set dns.balancers or register.advertise)", path, self))
			}
		}
	}
}

func (v *validator) serverTLS() {
	t := v.cfg.TLS
	v.readable("tls.cert_file", t.CertFile)
	v.readable("tls.key_file", t.KeyFile)
	v.readable("tls.client_ca_file", t.ClientCAFile)
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		v.add("tls.key_file", q(""), "is needed with tls.cert_file")
	case t.CertFile == "" && t.KeyFile != "":
		v.add("tls.cert_file", q(""), "is needed with tls.key_file")
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		v.add("tls.client_ca_file", q(t.ClientCAFile), "needs tls.cert_file and tls.key_file (mTLS is TLS with client certificates)")
	}
}

func (v *validator) admin() {
	a := v.cfg.Admin
	if a.Listen != "" {
		v.hostPort("admin.listen", a.Listen)
		// Port 0 picks a free port for each listener.
		if _, port, err := splitHostPort(a.Listen); err == nil && port != 0 && a.Listen == v.cfg.Listen {
			v.add("admin.listen", q(a.Listen), "is also listen: the admin listener needs its own port")
		}
	} else if a.Pprof {
		v.add("admin.pprof", "true", "has no effect: admin.listen is empty (the admin listener is off)")
	}
}

// serviceName checks a service key: a Consul service name, as lbserver
// takes per-service settings (no port, no tag filter).
func serviceName(name string, max int) string {
	if err := lbserver.ValidateName(name, max); err != nil {
		return strings.TrimPrefix(err.Error(), "name ")
	}
	switch {
	case strings.Contains(name, ":"):
		return "has ':': a service name has no port"
	case strings.Contains(name, discovery.TagSeparator):
		return "has '@': a service's settings apply to every tag filter of it (filter with tags)"
	case strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, ".."):
		return "has an empty label"
	}
	return ""
}

func (v *validator) services() {
	c := v.cfg
	nameMax := v.nameMax()
	keys := sortedKeys(c.Services)
	canon := map[string]string{}   // canonical name → first key
	aliasOf := map[string]string{} // alias key → service key
	for _, k := range keys {
		path := joinPath("services", k)
		if msg := serviceName(k, nameMax); msg != "" {
			v.add(path, q(k), msg)
			continue
		}
		cn := discovery.Canonical(k)
		if prev, dup := canon[cn]; dup {
			v.add(path, q(k), fmt.Sprintf("is the same service as %q (names match case-insensitively, tags in any order)", prev))
			continue
		}
		canon[cn] = k
	}
	for _, k := range keys {
		s := c.Services[k]
		path := joinPath("services", k)
		if s.Policy != "" {
			if msg := knownPolicy(s.Policy); msg != "" {
				v.add(path+".policy", q(s.Policy), msg)
			}
		}
		if s.MaxListEntries != 0 {
			v.intRange(path+".max_list_entries", s.MaxListEntries, 1, policy.MaxMaxEntries)
		}
		if s.HashSubset != 0 {
			entries, from := s.MaxListEntries, path+".max_list_entries"
			if entries == 0 {
				entries, from = c.Balancer.MaxListEntries, "balancer.max_list_entries"
			}
			if s.HashSubset < 1 || s.HashSubset > max(entries, 1) {
				v.add(path+".hash_subset", inum(s.HashSubset), fmt.Sprintf("is not 0 (inherit) or in [1, %s %d]", from, entries))
			}
		} else if s.MaxListEntries >= 1 && c.Balancer.HashSubset > s.MaxListEntries {
			v.add(path+".max_list_entries", inum(s.MaxListEntries), fmt.Sprintf("is below balancer.hash_subset %d, which the service inherits (set its hash_subset)", c.Balancer.HashSubset))
		}
		if s.ChildPolicy != "" {
			if msg := childPolicy(s.ChildPolicy); msg != "" {
				v.add(path+".child_policy", q(s.ChildPolicy), msg)
			}
		}
		if !finite(s.RateLimit) || s.RateLimit < 0 {
			v.add(path+".rate_limit", fnum(s.RateLimit), "is not 0 (no limit) or a positive number of calls per second")
		} else if s.RateLimit > 0 && c.Balancer.ClientStatsInterval == 0 {
			v.add(path+".rate_limit", fnum(s.RateLimit), "needs client stats: balancer.client_stats_interval is 0")
		}
		if p := s.MaxDropShare; p != nil && !(*p > 0 && *p <= policy.MaxDropShare) {
			v.add(path+".max_drop_share", fnum(*p), fmt.Sprintf("is not in (0, %v] (leave it out to inherit load_reports.max_drop_share)", policy.MaxDropShare))
		}
		if p := s.MaxRateLimitDropShare; p != nil && !(*p > 0 && *p <= 1) {
			v.add(path+".max_rate_limit_drop_share", fnum(*p), "is not in (0, 1] (leave it out to inherit rate_limits.max_drop_share)")
		}
		v.tags(path+".tags", s.Tags)
		if len(s.Tags) > 0 && c.staticSet() {
			v.add(path+".tags", "", "cannot work with static backends: static lists carry no tags, so clients naming the service would get no instance")
		}
		if w := c.Watched(k); len(s.Tags) > 0 && len(w) > nameMax {
			v.add(path+".tags", "", fmt.Sprintf("make the watched name %d bytes, longer than balancer.max_name_length %d", len(w), nameMax))
		}
		for i, a := range s.Aliases {
			p := fmt.Sprintf("%s.aliases[%d]", path, i)
			if err := lbserver.ValidateName(a, nameMax); err != nil {
				v.add(p, q(a), strings.TrimPrefix(err.Error(), "name "))
				continue
			}
			key := aliasKey(a)
			if prev, dup := aliasOf[key]; dup {
				if prev == k {
					v.add(p, q(a), "is listed twice (aliases match case-insensitively)")
				} else {
					v.add(p, q(a), fmt.Sprintf("is also an alias of %s (aliases match case-insensitively)", joinPath("services", prev)))
				}
				continue
			}
			aliasOf[key] = k
			if svc, ok := canon[discovery.Canonical(key)]; ok && !strings.Contains(key, ":") {
				v.add(p, q(a), fmt.Sprintf("is the name of %s: a name maps to one service", joinPath("services", svc)))
			}
		}
	}
}

// aliasKey is the form NameMapper matches aliases in: lower case, without
// a trailing dot.
func aliasKey(a string) string { return strings.ToLower(strings.TrimSuffix(a, ".")) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
