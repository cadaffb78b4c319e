package static

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/lookaside-lb/lookaside/discovery"
)

// MaxServiceNameLen is the longest service name accepted, in bytes.
const MaxServiceNameLen = 255

// ParseSpec parses a list of services written on one line, as a flag value:
//
//	user-srv=127.0.0.1:50051,127.0.0.1:50052*3;other=[::1]:9000
//
// Services are separated by ';' and each is "name=addr,addr,...". An
// address is an IP literal and a port in 1–65535 (IPv6 in brackets), with
// an optional "*N" weight from 1 to MaxWeight (default 1). The ID of each
// endpoint is "<service>-<addr>" with the address written canonically, so
// an address may appear only once per service. Blanks around the separators
// are ignored, and so are empty items (such as a trailing ';'); an empty
// spec gives an empty map. A service may appear only once and must have at
// least one address. Names must be valid UTF-8 of at most
// MaxServiceNameLen bytes without blanks, control characters, '/', '?' or
// '#' (the rules of Consul names).
func ParseSpec(spec string) (map[string][]discovery.Endpoint, error) {
	services := make(map[string][]discovery.Endpoint)
	for item := range strings.SplitSeq(spec, ";") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, list, ok := strings.Cut(item, "=")
		name = strings.TrimSpace(name)
		if !ok {
			return nil, fmt.Errorf("static: spec item %q: want name=addr,addr,...", item)
		}
		if err := validateName(name); err != nil {
			return nil, fmt.Errorf("static: spec item %q: %w", item, err)
		}
		if _, dup := services[name]; dup {
			return nil, fmt.Errorf("static: spec: service %q appears twice", name)
		}
		var eps []discovery.Endpoint
		seen := make(map[string]bool)
		for a := range strings.SplitSeq(list, ",") {
			a = strings.TrimSpace(a)
			if a == "" {
				continue
			}
			ep, err := parseSpecAddr(name, a)
			if err != nil {
				return nil, fmt.Errorf("static: spec: service %q: address %q: %w", name, a, err)
			}
			if seen[ep.ID] {
				return nil, fmt.Errorf("static: spec: service %q: address %s appears twice", name, ep.Addr)
			}
			seen[ep.ID] = true
			eps = append(eps, ep)
		}
		if len(eps) == 0 {
			return nil, fmt.Errorf("static: spec: service %q has no address", name)
		}
		services[name] = discovery.SortEndpoints(eps)
	}
	return services, nil
}

// parseSpecAddr parses "ip:port" or "ip:port*N".
func parseSpecAddr(service, s string) (discovery.Endpoint, error) {
	weight := 1
	if addr, w, ok := strings.Cut(s, "*"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil {
			return discovery.Endpoint{}, fmt.Errorf("weight %q is not a number", w)
		}
		if err := checkWeight(n); err != nil {
			return discovery.Endpoint{}, err
		}
		s, weight = strings.TrimSpace(addr), n
	}
	ap, err := parseAddr(s)
	if err != nil {
		return discovery.Endpoint{}, err
	}
	return discovery.Endpoint{ID: service + "-" + ap.String(), Addr: ap, Weight: weight}, nil
}

// parseAddr parses an IP and port, unmapping IPv4-mapped IPv6 addresses.
func parseAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("want an IP literal and a port, like 10.0.0.1:50051 or [::1]:50051")
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("IPv6 zones cannot be used (grpclb carries raw addresses)")
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0 out of range 1-65535")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func checkWeight(n int) error {
	if n < 1 || n > MaxWeight {
		return fmt.Errorf("weight %d out of range 1-%d", n, MaxWeight)
	}
	return nil
}

// validateName applies Consul's rules for service names.
func validateName(name string) error {
	switch {
	case name == "":
		return errors.New("empty service name")
	case len(name) > MaxServiceNameLen:
		return fmt.Errorf("service name of %d bytes is longer than %d", len(name), MaxServiceNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("service name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if r == '/' || r == '?' || r == '#' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("service name %q: character %q not allowed", name, r)
		}
	}
	return nil
}

// file is the JSON layout LoadFile reads.
type file struct {
	// Entries are decoded one by one, so that errors can name them.
	Services map[string][]json.RawMessage `json:"services"`
}

type fileEndpoint struct {
	ID     string            `json:"id"`
	Addr   string            `json:"addr"`
	Weight *int              `json:"weight"`
	Meta   map[string]string `json:"meta"`
}

// LoadFile reads services from a JSON file:
//
//	{"services": {"user-srv": [
//	  {"id": "u1", "addr": "127.0.0.1:50051", "weight": 2, "meta": {"k": "v"}},
//	  {"addr": "[::1]:50052"}
//	]}}
//
// "services" is required; a service with an empty list positively has no
// instances. In an entry, "addr" is required and is an IP literal and a
// port in 1–65535; "weight" is optional (default 1) and from 1 to
// MaxWeight; "id" is optional and defaults to "<service>-<addr>" as in
// ParseSpec; IDs must be unique in the whole file, since they key
// load-balance tokens; "meta" is optional. Unknown fields are rejected.
// Errors name the file and the offending entry.
func LoadFile(path string) (map[string][]discovery.Endpoint, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("static: %w", err)
	}
	services, err := parseFile(data)
	if err != nil {
		return nil, fmt.Errorf("static: %s: %w", path, err)
	}
	return services, nil
}

func parseFile(data []byte) (map[string][]discovery.Endpoint, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, jsonError(data, dec, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: data after the JSON object", position(data, dec.InputOffset()-1))
	}
	if f.Services == nil {
		return nil, errors.New(`no "services" object`)
	}

	services := make(map[string][]discovery.Endpoint, len(f.Services))
	owner := make(map[string]string) // endpoint ID → its service
	// Sorted, so that errors about duplicates are deterministic.
	for _, name := range slices.Sorted(maps.Keys(f.Services)) {
		entries := f.Services[name]
		if err := validateName(name); err != nil {
			return nil, fmt.Errorf("services: %w", err)
		}
		eps := make([]discovery.Endpoint, 0, len(entries))
		for i, raw := range entries {
			where := fmt.Sprintf("services[%q][%d]", name, i)
			var e fileEndpoint
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil {
				return nil, fmt.Errorf("%s: %w", where, typeError(err))
			}
			if e.ID != "" {
				where += fmt.Sprintf(" (id %q)", e.ID)
			}
			ep, err := fileEntry(name, e)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			if prev, dup := owner[ep.ID]; dup {
				return nil, fmt.Errorf("%s: id %q is already used in service %q", where, ep.ID, prev)
			}
			owner[ep.ID] = name
			eps = append(eps, ep)
		}
		services[name] = discovery.SortEndpoints(eps)
	}
	return services, nil
}

func fileEntry(service string, e fileEndpoint) (discovery.Endpoint, error) {
	if e.Addr == "" {
		return discovery.Endpoint{}, errors.New(`no "addr"`)
	}
	ap, err := parseAddr(e.Addr)
	if err != nil {
		return discovery.Endpoint{}, fmt.Errorf("addr %q: %w", e.Addr, err)
	}
	ep := discovery.Endpoint{ID: e.ID, Addr: ap, Weight: 1}
	if ep.ID == "" {
		ep.ID = service + "-" + ap.String()
	} else if strings.TrimSpace(ep.ID) != ep.ID || strings.ContainsFunc(ep.ID, unicode.IsControl) {
		return discovery.Endpoint{}, fmt.Errorf("id %q has surrounding blanks or control characters", ep.ID)
	}
	if e.Weight != nil {
		if err := checkWeight(*e.Weight); err != nil {
			return discovery.Endpoint{}, err
		}
		ep.Weight = *e.Weight
	}
	if len(e.Meta) > 0 {
		ep.Meta = e.Meta
	}
	return ep, nil
}

// jsonError adds a line and column to decoding errors that carry an offset.
// The offsets of encoding/json count the bytes read, the last of which is
// the offending one.
func jsonError(data []byte, dec *json.Decoder, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%s: %w", position(data, syn.Offset-1), err)
	case errors.As(err, &typ):
		return fmt.Errorf("%s: %w", position(data, typ.Offset-1), typeError(err))
	case errors.Is(err, io.EOF):
		return errors.New("empty file")
	default:
		// Unknown fields and the like: the decoder stopped near the problem.
		return fmt.Errorf("near %s: %w", position(data, dec.InputOffset()-1), err)
	}
}

// typeError rewords type mismatches in terms of the file rather than of
// the Go types that decode it; other errors are returned as they are.
func typeError(err error) error {
	var typ *json.UnmarshalTypeError
	if !errors.As(err, &typ) || typ.Field == "" {
		return err
	}
	return fmt.Errorf("%q: want %s, got %s", typ.Field, jsonKind(typ.Type.Kind()), typ.Value)
}

// jsonKind names the JSON value that decodes into a Go kind.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice:
		return "an array"
	default:
		return k.String()
	}
}

// position returns "line L, column C" (both from 1, columns in bytes) of the
// byte at offset in data.
func position(data []byte, offset int64) string {
	offset = min(max(offset, 0), int64(len(data)))
	before := data[:offset]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return fmt.Sprintf("line %d, column %d", line, col)
}
