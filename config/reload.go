package config

import (
	"reflect"
	"slices"
	"strings"
)

// reloadable lists the paths (and path prefixes, ending in ".") that a
// running replica applies on SIGHUP without a restart: per-service
// settings, policies and their options, zones, client-facing limits, rate
// limits, overload thresholds, latency outliers and the log level (lbserver.Settings, what
// Server.Reconfigure takes, plus the log level). Every other path needs a
// restart, the TLS file paths too: the files' contents are read again on
// SIGHUP and when they change, but which files is fixed at start.
var reloadable = []string{
	"log.level",
	"balancer.policy",
	"balancer.max_list_entries",
	"balancer.hash_subset",
	"balancer.child_policy",
	"balancer.zones",
	"load_reports.blackout",
	"load_reports.overload_threshold",
	"load_reports.max_drop_share",
	"load_reports.latency_outliers",
	"rate_limits.",
	"limits.max_streams",
	"limits.max_streams_per_ip",
	"limits.max_streams_per_conn",
	"limits.max_stream_rate_per_ip",
	"limits.stream_burst_per_ip",
	"limits.max_ignored_messages",
	"limits.max_conns",
	"limits.max_conns_per_ip",
	"limits.send_timeout",
	"services",
}

// IsReloadable reports whether a change of the field at path (as in
// FieldError.Path: "limits.max_streams", "services.user-srv.policy") can
// be applied to a running replica without a restart, whatever the rest of
// the configuration. Reloadable compares whole configs and knows more.
func IsReloadable(path string) bool {
	for _, r := range reloadable {
		if path == r || (strings.HasSuffix(r, ".") && strings.HasPrefix(path, r)) || strings.HasPrefix(path, r+".") || strings.HasPrefix(path, r+"[") {
			return true
		}
	}
	return false
}

// Reloadable compares c, the configuration running, with next, the one
// read again (on SIGHUP), and returns the paths of the fields that differ
// and cannot be applied without a restart, sorted; nil when next can be
// applied entirely to the running replica. Fields that differ and are
// reloadable are not listed (see IsReloadable). With the DNS responder on
// in either config, child policies need a restart too: the TXT records
// are built when the responder starts. limits.max_streams_per_conn may be
// lowered but not raised: the HTTP/2 stream limit is fixed at start.
// Both configs should have passed Validate. Safe for concurrent use.
func (c Config) Reloadable(next Config) (restart []string) {
	dnsOn := c.DNS.Listen != "" || next.DNS.Listen != ""
	for _, p := range Diff(c, next) {
		switch {
		case dnsOn && strings.HasPrefix(p, "services.") && strings.HasSuffix(p, ".child_policy"):
			// Listed below, by canonical name.
		case dnsOn && p == "balancer.child_policy":
			restart = append(restart, p)
		case p == "limits.max_streams_per_conn" && next.Limits.MaxStreamsPerConn > c.Limits.MaxStreamsPerConn:
			restart = append(restart, p)
		case !IsReloadable(p):
			restart = append(restart, p)
		}
	}
	if dnsOn {
		// A service added or removed with a child policy changes the TXT
		// records as much as a changed one.
		cur, nxt := c.ChildPolicies(), next.ChildPolicies()
		for name := range cur {
			if _, ok := nxt[name]; !ok {
				nxt[name] = ""
			}
		}
		for _, name := range sortedKeys(nxt) {
			if cur[name] != nxt[name] {
				restart = append(restart, joinPath("services", name)+".child_policy")
			}
		}
	}
	slices.Sort(restart)
	return slices.Compact(restart)
}

// Diff returns the paths of the fields that differ between a and b, sorted:
// leaves of the tree ("consul.max_conns"), a whole list when it differs
// ("dns.allow"), a map key's path when the key is only in one of them
// ("services.user-srv"), its fields' paths when it is in both
// ("services.user-srv.policy"). Safe for concurrent use.
func Diff(a, b Config) []string {
	var out []string
	diff(reflect.ValueOf(a), reflect.ValueOf(b), "", &out)
	slices.Sort(out)
	return out
}

func diff(a, b reflect.Value, path string, out *[]string) {
	switch a.Kind() {
	case reflect.Struct:
		if a.Type() == durationType {
			break
		}
		t := a.Type()
		for i := range t.NumField() {
			name := yamlName(t.Field(i))
			if name == "" {
				continue
			}
			diff(a.Field(i), b.Field(i), joinPath(path, name), out)
		}
		return
	case reflect.Map:
		keys := map[string]bool{}
		for _, k := range a.MapKeys() {
			keys[k.String()] = true
		}
		for _, k := range b.MapKeys() {
			keys[k.String()] = true
		}
		for _, k := range sortedKeys(keys) {
			kv := reflect.ValueOf(k).Convert(a.Type().Key())
			va, vb := a.MapIndex(kv), b.MapIndex(kv)
			kp := joinPath(path, k)
			if !va.IsValid() || !vb.IsValid() {
				*out = append(*out, kp)
				continue
			}
			diff(va, vb, kp, out)
		}
		return
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, path)
			}
			return
		}
		diff(a.Elem(), b.Elem(), path, out)
		return
	case reflect.Slice:
		if a.Len() == 0 && b.Len() == 0 {
			return // nil and empty are alike
		}
	case reflect.Float64:
		// NaN differs from itself; a config holding one is invalid anyway.
		if fa, fb := a.Float(), b.Float(); fa == fb || fa != fa && fb != fb {
			return
		}
		*out = append(*out, path)
		return
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		*out = append(*out, path)
	}
}
