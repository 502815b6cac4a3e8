package config

import (
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// index maps dotted key paths to the nodes of the parsed file. yaml.v3
// decodes into structs without keeping positions, and its own errors carry
// only a line, so Parse walks the node tree once to be able to say which
// key a line belongs to, and on which line a key is.
type index struct {
	entries []entry
	lines   map[string]int
}

// entry is one key (or list item) with its value.
type entry struct {
	path string
	key  *yaml.Node // nil for list items and for the document itself
	val  *yaml.Node
}

func newIndex(doc *yaml.Node) *index {
	x := &index{lines: map[string]int{}}
	if doc != nil && doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return x
		}
		doc = doc.Content[0]
	}
	if doc != nil {
		x.entries = append(x.entries, entry{path: "", val: doc})
		x.walk("", doc, map[*yaml.Node]bool{})
	}
	return x
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// walk records every key below n. Explicit keys are recorded before merged
// ones ("<<: *defaults") because they win in the decoded value too. active
// guards against an alias that refers to its own ancestor.
func (x *index) walk(path string, n *yaml.Node, active map[*yaml.Node]bool) {
	n = resolveAlias(n)
	if n == nil || active[n] {
		return
	}
	active[n] = true
	defer delete(active, n)
	switch n.Kind {
	case yaml.MappingNode:
		var merges []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "!!merge" || k.Tag == "") {
				merges = append(merges, v)
				continue
			}
			p := joinPath(path, k.Value)
			x.entries = append(x.entries, entry{path: p, key: k, val: v})
			if _, ok := x.lines[p]; !ok {
				x.lines[p] = k.Line
			}
			x.walk(p, v, active)
		}
		for _, m := range merges {
			m = resolveAlias(m)
			if m != nil && m.Kind == yaml.SequenceNode {
				for _, item := range m.Content {
					x.walk(path, item, active)
				}
			} else {
				x.walk(path, m, active)
			}
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			x.entries = append(x.entries, entry{path: p, val: item})
			if _, ok := x.lines[p]; !ok {
				x.lines[p] = item.Line
			}
			x.walk(p, item, active)
		}
	}
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// has reports whether the key is written in the file (as opposed to being
// absent and filled in by a default).
func (x *index) has(path string) bool {
	_, ok := x.lines[path]
	return ok
}

// line returns the line of the key, or of its nearest ancestor that is in
// the file: a missing "listeners[0].role" is reported at the listener.
func (x *index) line(path string) int {
	for {
		if l, ok := x.lines[path]; ok {
			return l
		}
		if path == "" {
			return 0
		}
		path = parentPath(path)
	}
}

// parentPath drops the last ".key" or "[i]". Domain names contain dots, so
// for "domains.example.com" this yields "domains.example" first; that is
// harmless because line() just keeps going up until something matches.
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// under reports whether key is prefix itself or lies below it.
func under(key, prefix string) bool {
	if prefix == "" || key == prefix {
		return true
	}
	return strings.HasPrefix(key, prefix) && (key[len(prefix)] == '.' || key[len(prefix)] == '[')
}
