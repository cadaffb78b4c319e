package config

import (
	"errors"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LoadValid loads the file at path (Load) and validates it (Validate): the
// config a replica may run. Validation errors carry the file and the line
// of their key when the file sets it (or of the nearest section it sets).
// It blocks on the file system. Safe for concurrent use.
func LoadValid(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Default(), Errors{{File: path, Msg: "cannot be read: " + pathErr(err)}}
	}
	c, err := Parse(data)
	if err == nil {
		err = c.Validate()
	}
	return c, Locate(path, data, err)
}

// Locate returns err with each of its FieldErrors given file, and a line
// when it has none: the line in data of the key its path names, or of the
// nearest enclosing key the file sets (0 when the value is a default the
// file does not touch), and the value as the file writes it ("90s" where
// Validate prints "1m30s"). err that is not Errors is returned as it is. A
// value changed after Parse (by a flag) is still attributed to the file's
// key: locate errors of the file's own config. Safe for concurrent use.
func Locate(file string, data []byte, err error) error {
	var es Errors
	if !errors.As(err, &es) {
		return err
	}
	var root yaml.Node
	parsed := yaml.Unmarshal(data, &root) == nil && len(root.Content) > 0
	out := make(Errors, len(es))
	for i, e := range es {
		e.File = file
		if parsed {
			line, leaf := lineOf(root.Content[0], splitPath(e.Path))
			if e.Line == 0 {
				e.Line = line
			}
			// The value as the file writes it: "90s", not "1m30s".
			// Strings stay quoted, as Validate prints them.
			if leaf != nil && leaf.Kind == yaml.ScalarNode && e.Value != "" {
				if strings.HasPrefix(e.Value, `"`) {
					e.Value = strconv.Quote(leaf.Value)
				} else {
					e.Value = leaf.Value
				}
			}
		}
		out[i] = e
	}
	return out
}

// segment is one step of a path: a key, or an index when key is "".
type segment struct {
	key   string
	index int
}

// splitPath splits a path as joinPath writes it: keys separated by dots,
// quoted when they hold dots or blanks, list indexes in brackets. A path
// it cannot split gives the segments before the problem.
func splitPath(p string) []segment {
	var out []segment
	for p != "" {
		switch {
		case p[0] == '.':
			p = p[1:]
		case p[0] == '[':
			end := strings.IndexByte(p, ']')
			if end < 0 {
				return out
			}
			i, err := strconv.Atoi(p[1:end])
			if err != nil {
				return out
			}
			out = append(out, segment{index: i})
			p = p[end+1:]
		case p[0] == '"':
			q, err := strconv.QuotedPrefix(p)
			if err != nil {
				return out
			}
			k, _ := strconv.Unquote(q)
			out = append(out, segment{key: k})
			p = p[len(q):]
		default:
			end := strings.IndexAny(p, ".[")
			if end < 0 {
				end = len(p)
			}
			out = append(out, segment{key: p[:end]})
			p = p[end:]
		}
	}
	return out
}

// lineOf returns the line of the deepest node of path found under n, and
// the node of the whole path if the file has it.
func lineOf(n *yaml.Node, path []segment) (line int, leaf *yaml.Node) {
	for _, s := range path {
		n = deref(n)
		var next, at *yaml.Node
		switch {
		case s.key != "" && n.Kind == yaml.MappingNode:
			next, at = lookup(n, s.key, 0)
		case s.key == "" && n.Kind == yaml.SequenceNode && s.index >= 0 && s.index < len(n.Content):
			next = n.Content[s.index]
			at = next
		}
		if next == nil {
			return line, nil
		}
		line, n = at.Line, next
	}
	if len(path) == 0 {
		return 0, nil
	}
	return line, deref(n)
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < maxDepth; i++ {
		n = n.Alias
	}
	return n
}

// lookup finds key in a mapping, or in the mappings merged into it; it
// returns the value and the key node.
func lookup(m *yaml.Node, key string, depth int) (value, keyNode *yaml.Node) {
	if depth > maxDepth {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key && k.ShortTag() != "!!merge" {
			return m.Content[i+1], k
		}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.ShortTag() != "!!merge" {
			continue
		}
		merged := []*yaml.Node{m.Content[i+1]}
		if v := m.Content[i+1]; v.Kind == yaml.SequenceNode {
			merged = v.Content
		}
		for _, mm := range merged {
			if mm = deref(mm); mm.Kind == yaml.MappingNode {
				if v, k := lookup(mm, key, depth+1); v != nil {
					return v, k
				}
			}
		}
	}
	return nil, nil
}
