package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads, decodes, completes and validates the configuration file at
// path. Relative paths inside it are relative to the file's directory, so
// that the same file works whatever directory the daemon is started from.
//
// If the file cannot be read, the error is the *fs.PathError from os. If it
// can, every problem in it is returned together as Errors, each message
// starting with path exactly as given. On success cfg.Path is absolute.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	cfg, err := Parse(path, data, filepath.Dir(abs))
	if err != nil {
		return nil, err
	}
	cfg.Path = abs
	return cfg, nil
}

// Parse is Load for configuration that is already in memory: name is used
// in error messages and as cfg.Path, baseDir anchors relative paths (the
// working directory if empty). The error, if any, is of type Errors.
func Parse(name string, data []byte, baseDir string) (*Config, error) {
	if baseDir == "" {
		baseDir = "."
	}
	base, err := filepath.Abs(baseDir)
	if err != nil {
		return nil, Errors{{File: name, Msg: fmt.Sprintf("cannot resolve the base directory %q: %v", baseDir, err)}}
	}
	l := &loader{file: name, baseDir: base, used: map[int]bool{}, dropped: map[string][]int{}, domainKey: map[string]string{}}

	// Pass 1: the node tree, for positions. Syntax errors end here: with a
	// broken tree every later message would be noise.
	var doc yaml.Node
	nodes := yaml.NewDecoder(bytes.NewReader(data))
	switch err := nodes.Decode(&doc); {
	case errors.Is(err, io.EOF):
		// An empty file is a valid, empty configuration; validation then
		// says what is missing.
	case err != nil:
		return nil, Errors{l.syntaxError(err, data)}
	default:
		var extra yaml.Node
		switch err := nodes.Decode(&extra); {
		case errors.Is(err, io.EOF):
		case err != nil:
			return nil, Errors{l.syntaxError(err, data)}
		default:
			return nil, Errors{{File: name, Line: extra.Line, Msg: `a second YAML document (after "---") is not supported; put everything in one document`}}
		}
	}
	l.idx = newIndex(&doc)

	// Pass 2: the actual decode, strict about unknown keys. yaml.v3 keeps
	// going after type errors and unknown keys, so all of them arrive in
	// one TypeError.
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, msg := range te.Errors {
				l.decodeError(msg)
			}
		} else {
			l.errs = append(l.errs, &Error{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")})
			l.skip = append(l.skip, "")
		}
	}

	l.normalizeDomains(cfg)
	l.normalizeNames(cfg)
	l.applyDefaults(cfg)
	l.resolvePaths(cfg)
	l.validate(cfg)

	if len(l.errs) > 0 {
		l.errs.sortByLine()
		return nil, l.errs
	}
	cfg.Path = name
	cfg.idx = l.idx
	cfg.domainKeys = l.domainKey
	l.warns.sortByLine()
	cfg.warnings = l.warns
	return cfg, nil
}

// loader carries the state of one Parse: the positions, the problems found
// so far, and what the semantic checks must not repeat.
type loader struct {
	file    string
	baseDir string
	idx     *index
	used    map[int]bool // index entries already blamed for a decode error
	errs    Errors
	// skip lists keys whose value could not be decoded (and so is zero):
	// checking it again would add a second, misleading message such as
	// "address: missing" after "address: must be a single value".
	skip []string
	// dropped: for each list (file path), the indexes of items yaml.v3
	// left out because they did not decode.
	dropped map[string][]int
	// domainKey maps a normalised domain to the key as written, so that
	// messages name the key the admin can search for.
	domainKey map[string]string
	// hostnameFromOS: hostname was not in the file; a bad value is then the
	// machine's fault and the message must say where it came from.
	hostnameFromOS bool
	// warns: problems that do not stop the relay (warnf).
	warns Errors
}

// warnf records something that works but that an admin should know about;
// check-config and serve print it, FILE:LINE: key: as errors.
func (l *loader) warnf(key, format string, args ...any) {
	if l.failed(key) {
		return
	}
	key = l.filePath(key)
	l.warns = append(l.warns, &Error{File: l.file, Line: l.idx.line(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// errorf records a semantic problem at key, unless the key's value already
// failed to decode.
func (l *loader) errorf(key, format string, args ...any) {
	if l.failed(key) {
		return
	}
	key = l.filePath(key)
	l.errs = append(l.errs, &Error{File: l.file, Line: l.idx.line(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// failed reports whether the value at key (a decoded path) could not be
// decoded, so that checks depending on it stay quiet.
func (l *loader) failed(key string) bool {
	key = l.filePath(key)
	for _, s := range l.skip {
		if under(key, s) {
			return true
		}
	}
	return false
}

// filePath turns a path of the decoded Config into the path in the file,
// which differs after a list item was dropped (see decodeError).
func (l *loader) filePath(key string) string {
	if len(l.dropped) == 0 {
		return key
	}
	var b strings.Builder
	for {
		open := strings.IndexByte(key, '[')
		end := strings.IndexByte(key, ']')
		if open < 0 || end < open {
			b.WriteString(key)
			return b.String()
		}
		b.WriteString(key[:open])
		i, err := strconv.Atoi(key[open+1 : end])
		if err == nil {
			// The i-th surviving item: step over dropped ones at or before it.
			dropped := append([]int(nil), l.dropped[b.String()]...)
			sort.Ints(dropped)
			for _, d := range dropped {
				if d <= i {
					i++
				}
			}
			fmt.Fprintf(&b, "[%d]", i)
		} else {
			b.WriteString(key[open : end+1])
		}
		key = key[end+1:]
	}
}

// ref names another entry in a message, as "listeners[0] (line 4)".
func (l *loader) ref(path string) string {
	path = l.filePath(path)
	return fmt.Sprintf("%s (line %d)", path, l.idx.line(path))
}

var (
	reSyntax   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	reLine     = regexp.MustCompile(`(?s)^line (\d+)(?::(\d+))?: (.*)$`)
	reNotFound = regexp.MustCompile(`^field (.+) not found in type (\S+)$`)
	reCannot   = regexp.MustCompile("(?s)^cannot unmarshal (\\S+)(?: `(.*)`)? into (\\S+)$")
	reDupKey   = regexp.MustCompile(`^mapping key (".*") already defined at line (\d+)$`)
	reDupField = regexp.MustCompile(`^field (.+) already set in type (\S+)$`)
)

func (l *loader) syntaxError(err error, data []byte) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := reSyntax.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	// yaml.v3 reports the line where the enclosing block starts, not where
	// the mistake is; for the commonest mistake, a tab in the indentation,
	// find the real line.
	lines := strings.Split(string(data), "\n")
	tabbed := func(i int) bool {
		s := lines[i-1]
		return strings.Contains(s[:len(s)-len(strings.TrimLeft(s, " \t"))], "\t")
	}
	tabLine := 0
	for i := max(line-1, 1); line > 0 && i <= len(lines); i++ {
		if tabbed(i) {
			tabLine = i
			break
		}
	}
	switch {
	case tabLine > 0 && (tabLine == line || strings.Contains(msg, "tab")):
		line = tabLine
		msg += " (a tab is used for indentation here; YAML allows only spaces)"
	case strings.Contains(msg, "mapping values are not allowed"):
		msg += " (usually wrong indentation, or a value containing \": \" that needs quotes)"
	case strings.Contains(msg, "did not find expected"):
		msg += " (usually wrong indentation on this line or one of the next)"
	}
	return &Error{File: l.file, Line: line, Msg: "YAML syntax error: " + msg}
}

// decodeError turns one of yaml.v3's TypeError lines into an Error with the
// key path. yaml.v3 reports only a line, so the key is found by matching
// the line and what the message says about the node; entries are used up
// in order, so repeated identical mistakes on one line (flow style) land
// on successive keys.
func (l *loader) decodeError(raw string) {
	m := reLine.FindStringSubmatch(raw)
	if m == nil {
		l.errs = append(l.errs, &Error{File: l.file, Msg: raw})
		return
	}
	line, _ := strconv.Atoi(m[1])
	col, _ := strconv.Atoi(m[2]) // only our own Duration/Size errors carry a column
	msg := m[3]
	// skip: the message is about the value, which therefore stayed zero.
	report := func(e *entry, key, text string, skip bool) {
		at := line
		if skip && e != nil && e.key != nil && e.val.Kind != yaml.AliasNode {
			// yaml.v3 gives the line where a block list or mapping value
			// starts, one below its key; the key is what an admin looks for.
			at = e.key.Line
		}
		l.errs = append(l.errs, &Error{File: l.file, Line: at, Key: key, Msg: text})
		switch {
		case !skip || e == nil:
		case e.key == nil && strings.HasSuffix(key, "]"):
			// yaml.v3 leaves a list item that fails to decode out of the
			// slice, so the decoded indexes after it are shifted; filePath
			// shifts them back.
			list := parentPath(key)
			i, _ := strconv.Atoi(key[len(list)+1 : len(key)-1])
			l.dropped[list] = append(l.dropped[list], i)
		default:
			l.skip = append(l.skip, key)
		}
	}

	if col > 0 {
		e := l.find(func(e entry) bool {
			v := resolveAlias(e.val)
			return v.Line == line && v.Column == col
		})
		report(e, pathOf(e), msg, true)
		return
	}
	if s := reNotFound.FindStringSubmatch(msg); s != nil {
		name := s[1]
		e := l.find(func(e entry) bool { return e.key != nil && e.key.Line == line && e.key.Value == name })
		text := "unknown key"
		if t, ok := schemaTypes[s[2]]; ok {
			keys := yamlKeys(t)
			if guess := closest(name, keys); guess != "" {
				text += fmt.Sprintf("; did you mean %q?", guess)
				if e != nil {
					// The intended key is "missing" only because of the typo;
					// saying so twice does not help.
					l.skip = append(l.skip, joinPath(parentPath(e.path), guess))
				}
			} else if places := elsewhere(name, t); len(places) > 0 {
				text += fmt.Sprintf(" here; %s belongs %s", name, strings.Join(places, " or "))
			} else {
				text += "; valid keys here: " + strings.Join(keys, ", ")
			}
		}
		report(e, pathOf(e), text, false)
		return
	}
	if s := reCannot.FindStringSubmatch(msg); s != nil {
		tag, shown, goType := s[1], s[2], s[3]
		e := l.find(func(e entry) bool {
			v := resolveAlias(e.val)
			if v.Line != line {
				return false
			}
			switch tag {
			case "!!seq":
				return v.Kind == yaml.SequenceNode
			case "!!map":
				return v.Kind == yaml.MappingNode
			}
			return v.Kind == yaml.ScalarNode && truncated(v.Value) == shown
		})
		text := expectation(goType)
		if e != nil {
			text += ", not " + describeNode(e.val)
			if e.path == "" {
				text = "the configuration " + text
			}
		}
		report(e, pathOf(e), text, true)
		return
	}
	if s := reDupKey.FindStringSubmatch(msg); s != nil {
		name, _ := strconv.Unquote(s[1])
		e := l.find(func(e entry) bool { return e.key != nil && e.key.Line == line && e.key.Value == name })
		report(e, pathOf(e), fmt.Sprintf("appears twice (first on line %s); remove one", s[2]), false)
		if e != nil {
			// yaml.v3 drops the whole mapping that has a duplicate key.
			l.skip = append(l.skip, parentPath(e.path))
		}
		return
	}
	if s := reDupField.FindStringSubmatch(msg); s != nil {
		e := l.find(func(e entry) bool { return e.key != nil && e.key.Line == line && e.key.Value == s[1] })
		report(e, pathOf(e), "is set twice; remove one", false)
		return
	}
	l.errs = append(l.errs, &Error{File: l.file, Line: line, Msg: msg})
}

// find returns the first unused entry that matches and marks it used.
func (l *loader) find(match func(entry) bool) *entry {
	for i := range l.idx.entries {
		if !l.used[i] && match(l.idx.entries[i]) {
			l.used[i] = true
			return &l.idx.entries[i]
		}
	}
	return nil
}

func pathOf(e *entry) string {
	if e == nil {
		return ""
	}
	return e.path
}

// truncated mirrors how yaml.v3 shortens values in its messages.
func truncated(v string) string {
	if len(v) > 10 {
		return v[:7] + "..."
	}
	return v
}

// expectation says, in an admin's words, what a Go type wants in YAML.
func expectation(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return `must be a list (one "- " item per entry, or [a, b])`
	case strings.HasPrefix(goType, "map["):
		return "must be a mapping (name: settings)"
	case goType == "string":
		return "must be a single value (text)"
	case goType == "bool":
		return "must be true or false"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "must be a whole number"
	}
	if t, ok := schemaTypes[goType]; ok {
		return "must be a mapping with the keys " + strings.Join(yamlKeys(t), ", ")
	}
	return "cannot be read as " + goType
}

// schemaTypes maps the type names that appear in yaml.v3's messages
// ("config.Listener") to the schema structs, for key lists and hints.
var schemaTypes = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || m[t.String()] != nil {
			return
		}
		m[t.String()] = t
		for i := 0; i < t.NumField(); i++ {
			add(t.Field(i).Type)
		}
	}
	add(reflect.TypeOf(Config{}))
	return m
}()

// elsewhere lists where else in the schema a key exists (other than in
// the struct type here): Postfix's main.cf is flat, so a key at the wrong
// level is a likely mistake.
func elsewhere(name string, here reflect.Type) []string {
	var places []string
	var walk func(path string, t reflect.Type)
	walk = func(path string, t reflect.Type) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Slice:
			walk(path+"[]", t.Elem())
		case reflect.Map:
			walk(path+".<name>", t.Elem())
		case reflect.Struct:
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
				if k == "" || k == "-" || !f.IsExported() {
					continue
				}
				if k == name && t != here {
					if path == "" {
						places = append(places, "at the top level")
					} else {
						places = append(places, "under "+path)
					}
				}
				walk(joinPath(path, k), f.Type)
			}
		}
	}
	walk("", reflect.TypeOf(Config{}))
	return places
}

// yamlKeys lists the keys a struct accepts, in schema order.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" && t.Field(i).IsExported() {
			keys = append(keys, name)
		}
	}
	return keys
}

// closest suggests the key probably meant: case, "-" for "_" and small
// typos are forgiven; a far-off guess would mislead more than help.
func closest(name string, keys []string) string {
	norm := strings.ReplaceAll(strings.ToLower(name), "-", "_")
	best, bestDist := "", 0
	for _, k := range keys {
		d := levenshtein(norm, k)
		if best == "" || d < bestDist {
			best, bestDist = k, d
		}
	}
	if best == "" {
		return ""
	}
	// Short names are close to everything; only forgive a second typo in
	// longer ones.
	if bestDist <= 1 || bestDist <= 2 && len(norm) >= 5 || bestDist <= len(best)/3 ||
		strings.Contains(best, norm) && len(norm) >= 4 {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// normalizeDomains lower-cases the domain keys, drops a trailing dot and
// writes U-labels as A-labels (idna.go), because callers compare them
// with recipient domains as they arrive.
func (l *loader) normalizeDomains(c *Config) {
	if len(c.Domains) == 0 {
		return
	}
	raws := make([]string, 0, len(c.Domains))
	for k := range c.Domains {
		raws = append(raws, k)
	}
	// Document order, so that "duplicate" blames the later one.
	sort.Slice(raws, func(i, j int) bool {
		li, lj := l.idx.line("domains."+raws[i]), l.idx.line("domains."+raws[j])
		if li != lj {
			return li < lj
		}
		return raws[i] < raws[j]
	})
	out := make(map[string]Domain, len(c.Domains))
	for _, raw := range raws {
		key := "domains." + raw
		name, err := domainName(raw)
		if err != nil {
			l.errorf(key, "%q is not a valid domain name: %v", raw, err)
			continue
		}
		if first, dup := l.domainKey[name]; dup {
			l.errorf(key, "same domain as %q on line %d (domain names are case-insensitive, a trailing dot does not matter, and U-labels and A-labels name the same domain); merge the two entries",
				first, l.idx.line("domains."+first))
			continue
		}
		l.domainKey[name] = raw
		out[name] = c.Domains[raw]
	}
	c.Domains = out
}

// domainPath is the key path of a (normalised) domain as written in the file.
func (l *loader) domainPath(name string) string {
	if raw, ok := l.domainKey[name]; ok {
		return "domains." + raw
	}
	return "domains." + name
}

// resolvePaths makes file names absolute against the config's directory,
// so that nothing later depends on the daemon's working directory.
func (l *loader) resolvePaths(c *Config) {
	c.StateDir = l.abs(c.StateDir)
	c.TLS.Cert = l.abs(c.TLS.Cert)
	c.TLS.Key = l.abs(c.TLS.Key)
	c.Outbound.TLS.CAFile = l.abs(c.Outbound.TLS.CAFile)
	c.Outbound.Encryption.Keyring = l.abs(c.Outbound.Encryption.Keyring)
	for i := range c.Outbound.TLS.Policies {
		for j := range c.Outbound.TLS.Policies[i].Keys {
			k := &c.Outbound.TLS.Policies[i].Keys[j]
			k.File = l.abs(k.File)
		}
	}
	for name, d := range c.Domains {
		if scheme, target, err := ParseDeliverTo(d.DeliverTo); err == nil && scheme == "maildir" {
			d.DeliverTo = "maildir:" + l.abs(target)
		}
		for i := range d.DKIM {
			d.DKIM[i].Key = l.abs(d.DKIM[i].Key)
		}
		d.Recipients.File = l.abs(d.Recipients.File)
		d.OpenPGPSigningKey = l.abs(d.OpenPGPSigningKey)
		c.Domains[name] = d
	}
}

func (l *loader) abs(p string) string {
	if p == "" {
		return ""
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(l.baseDir, p)
}
