package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// maxVisits bounds the values Parse looks at, aliases expanded, so that a
// small file of nested aliases cannot make it work for long; maxDepth
// bounds the nesting (the tree is 4 deep, merge keys add to it).
const (
	maxVisits = 100_000
	maxDepth  = 64
)

// Parse decodes a YAML file on top of Default: keys the file sets replace
// the defaults, the others keep them; an empty file (or one with only
// comments) is the defaults. Decoding is strict: an unknown key, a value
// of the wrong type (a fraction for an integer, "15" for a duration), a
// key set twice and a second YAML document are errors. On error it
// returns every problem found at once as Errors, each with its line and
// path, and Default(). It does not validate values: call Validate.
// Safe for concurrent use.
func Parse(data []byte) (Config, error) {
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil
		}
		return Default(), Errors{syntaxError(err)}
	}
	var second yaml.Node
	switch err := dec.Decode(&second); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return Default(), Errors{syntaxError(err)}
	default:
		return Default(), Errors{{Line: second.Line, Msg: "a second YAML document: a config file holds one (remove the ---)"}}
	}
	p := parser{visits: maxVisits, expanding: map[*yaml.Node]bool{}}
	p.walk(&root, reflect.TypeFor[Config](), "")
	if err := p.errs.sorted(); err != nil {
		return Default(), err
	}
	if err := root.Decode(&cfg); err != nil {
		// The walk checked what Decode checks; this is a safety net.
		return Default(), Errors{{Line: root.Line, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	return cfg, nil
}

// Load reads and parses the file at path (see Parse). Errors name the
// file. It blocks on the file system. Safe for concurrent use.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Default(), Errors{{File: path, Msg: "cannot be read: " + pathErr(err)}}
	}
	cfg, err := Parse(data)
	var es Errors
	if errors.As(err, &es) {
		for i := range es {
			es[i].File = path
		}
		return cfg, es
	}
	return cfg, err
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a YAML syntax error into a FieldError with its line.
func syntaxError(err error) FieldError {
	msg := err.Error()
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return FieldError{Line: line, Msg: "YAML syntax: " + m[2]}
	}
	return FieldError{Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
}

// parser walks the YAML tree beside the Config type, collecting every
// unknown key and ill-typed value with its path and line.
type parser struct {
	errs   Errors
	visits int
	depth  int
	// tooDeep is set once the depth error is reported.
	tooDeep bool
	// expanding holds the anchored nodes being walked through an alias,
	// to reject an anchor that contains itself.
	expanding map[*yaml.Node]bool
}

func (p *parser) fail(n *yaml.Node, path, value, msg string) {
	p.errs = append(p.errs, FieldError{Line: n.Line, Path: path, Value: value, Msg: msg})
}

var durationType = reflect.TypeFor[Duration]()

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func (p *parser) walk(n *yaml.Node, t reflect.Type, path string) {
	if p.visits--; p.visits < 0 {
		if p.visits == -1 {
			p.fail(n, path, "", fmt.Sprintf("the file expands to more than %d values (aliases): too many", maxVisits))
		}
		return
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) > 0 {
			p.walk(n.Content[0], t, path)
		}
		return
	case yaml.AliasNode:
		if n.Alias == nil {
			return
		}
		if p.expanding[n.Alias] {
			p.fail(n, path, "", fmt.Sprintf("*%s refers to the value that holds it", n.Value))
			return
		}
		p.expanding[n.Alias] = true
		p.walk(n.Alias, t, path)
		delete(p.expanding, n.Alias)
		return
	}
	if p.depth >= maxDepth {
		if !p.tooDeep {
			p.tooDeep = true
			p.fail(n, path, "", fmt.Sprintf("nests more than %d deep (merge keys count)", maxDepth))
		}
		return
	}
	p.depth++
	defer func() { p.depth-- }()
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // keeps the default (or zero for a pointer)
	}
	where := path
	if where == "" {
		where = "the top level"
	}
	if t == durationType {
		if n.Kind != yaml.ScalarNode {
			p.fail(n, path, "", fmt.Sprintf("want a duration such as 15s, not %s", kindName(n)))
			return
		}
		var d Duration
		if d.UnmarshalYAML(n) != nil {
			p.fail(n, path, strconv.Quote(n.Value), "is not a duration (want a number with a unit: 250ms, 15s, 1m, 1h)")
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		p.walk(n, t.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			p.fail(n, path, "", fmt.Sprintf("want a mapping of %s's keys, not %s", where, kindName(n)))
			return
		}
		fields := yamlFields(t)
		dropNulls(n)
		p.mapping(n, path, map[string]int{}, func(k, v *yaml.Node, kpath string) {
			f, ok := fields[k.Value]
			if !ok {
				p.fail(k, kpath, "", fmt.Sprintf("unknown key (keys of %s: %s)", where, strings.Join(fieldNames(t), ", ")))
				return
			}
			p.walk(v, t.FieldByIndex(f).Type, kpath)
		}, func(v *yaml.Node) { p.walk(v, t, path) })
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			p.fail(n, path, "", fmt.Sprintf("want a mapping, not %s", kindName(n)))
			return
		}
		p.mapping(n, path, map[string]int{}, func(_, v *yaml.Node, kpath string) {
			p.walk(v, t.Elem(), kpath)
		}, func(v *yaml.Node) { p.walk(v, t, path) })
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			p.fail(n, path, "", fmt.Sprintf("want a list, not %s", kindName(n)))
			return
		}
		for i, e := range n.Content {
			p.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	default:
		p.scalar(n, t, path)
	}
}

// mapping calls field for each key of a mapping node, and merge for each
// mapping merged into it with "<<: *anchor". seen holds the keys set so
// far (to their lines), to reject a key set twice.
func (p *parser) mapping(n *yaml.Node, path string, seen map[string]int, field func(k, v *yaml.Node, kpath string), merge func(v *yaml.Node)) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			if v.Kind == yaml.SequenceNode {
				for _, e := range v.Content {
					merge(e)
				}
			} else {
				merge(v)
			}
			continue
		}
		if k.Kind != yaml.ScalarNode {
			p.fail(k, path, "", fmt.Sprintf("a key is %s: keys are names", kindName(k)))
			continue
		}
		kpath := joinPath(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			p.fail(k, kpath, "", fmt.Sprintf("is set twice (first at line %d)", line))
			continue
		}
		seen[k.Value] = k.Line
		field(k, v, kpath)
	}
}

// dropNulls removes the keys of a section whose value is null ("key:" or
// "key: ~"), so that they keep their defaults as absent keys do: yaml.v3
// would keep a scalar's default but empty a list.
func dropNulls(n *yaml.Node) {
	kept := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		if v := n.Content[i+1]; v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" {
			continue
		}
		kept = append(kept, n.Content[i], n.Content[i+1])
	}
	if len(kept) != len(n.Content) {
		n.Content = kept
	}
}

// scalar checks that n decodes into a value of type t.
func (p *parser) scalar(n *yaml.Node, t reflect.Type, path string) {
	var want string
	switch t.Kind() {
	case reflect.String:
		want = "a string"
	case reflect.Bool:
		want = "true or false"
	case reflect.Int, reflect.Int64:
		want = "an integer"
	case reflect.Float64:
		want = "a number"
	default:
		want = "a " + t.String()
	}
	if n.Kind != yaml.ScalarNode {
		p.fail(n, path, "", fmt.Sprintf("want %s, not %s", want, kindName(n)))
		return
	}
	// yaml.v3 truncates 1.5 into an int: only integers are integers here.
	if (t.Kind() == reflect.Int || t.Kind() == reflect.Int64) && n.ShortTag() != "!!int" {
		p.fail(n, path, strconv.Quote(n.Value), "is not "+want)
		return
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		p.fail(n, path, strconv.Quote(n.Value), "is not "+want)
	}
}

// yamlFields maps t's YAML keys to its fields' indexes.
func yamlFields(t reflect.Type) map[string][]int {
	out := map[string][]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if name := yamlName(f); name != "" {
			out[name] = f.Index
		}
	}
	return out
}

// fieldNames lists t's YAML keys in declaration order.
func fieldNames(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			out = append(out, name)
		}
	}
	return out
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

// joinPath appends key to a YAML path. Keys that would make the path
// ambiguous (dots, blanks, brackets, quotes, empty) are quoted.
func joinPath(path, key string) string {
	if key == "" || strings.ContainsAny(key, ".[]\"' \t\n") || !utf8.ValidString(key) || !isPrintable(key) {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func isPrintable(s string) bool {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return false
		}
	}
	return true
}

// pathErr is an *os.PathError's reason without the path it repeats.
func pathErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
