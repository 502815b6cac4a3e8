package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a configuration file, positioned so that an admin
// can jump straight to it.
type Error struct {
	// File is the file name as given to Load (or the name given to Parse).
	File string
	// Line is 1-based; 0 when the problem is a key that is absent from the
	// file (for example a missing hostname that could not be defaulted).
	Line int
	// Key is the dotted path of the offending key, with 0-based list
	// indexes: "listeners[1].role", "domains.example.com.deliver_to",
	// "queue.retry[2]". Empty for YAML syntax errors.
	Key string
	Msg string
}

// Error formats the problem as FILE:LINE: key: what is wrong, the format
// editors and grep -n users already know; parts that are unknown are left
// out rather than printed as zero values.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file. Load and Parse report them all
// at once so that an admin fixes a file in one pass instead of one error
// per restart.
type Errors []*Error

// Error returns one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sortByLine orders problems as they appear in the file; problems without a
// line (absent keys) go last. The sort is stable so that several problems
// on one line keep the order in which they were found.
func (es Errors) sortByLine() {
	key := func(e *Error) int {
		if e.Line == 0 {
			return int(^uint(0) >> 1)
		}
		return e.Line
	}
	sort.SliceStable(es, func(i, j int) bool { return key(es[i]) < key(es[j]) })
}
