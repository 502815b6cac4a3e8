package config

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

const day = 24 * time.Hour

// ParseDuration parses a Go duration ("90s", "1h30m") that may also use d
// for days ("5d", "1d12h"): queue lifetimes are thought of in days, and
// "120h" is how Postfix admins get maximal_queue_lifetime wrong. A bare
// number is refused (except 0) because "timeout: 30" is ambiguous.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty duration; write e.g. 30s, 5m, 4h or 5d")
	}
	neg := false
	if s[0] == '-' || s[0] == '+' {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "0" {
		return 0, nil
	}
	var total time.Duration
	for s != "" {
		i := 0
		for i < len(s) && (s[i] == '.' || s[i] >= '0' && s[i] <= '9') {
			i++
		}
		num := s[:i]
		if num == "" || num == "." || strings.Count(num, ".") > 1 {
			return 0, fmt.Errorf("invalid duration %q: expected a number followed by a unit, e.g. 30s, 5m, 1h30m, 5d", orig)
		}
		j := i
		for j < len(s) && (s[j] < '0' || s[j] > '9') && s[j] != '.' {
			j++
		}
		// Spaces between parts ("1d 12h") are tolerated; Go's syntax is not
		// worth a failed restart.
		unit := strings.TrimSpace(s[i:j])
		s = s[j:]
		var part time.Duration
		var err error
		switch unit {
		case "":
			return 0, fmt.Errorf("invalid duration %q: %s has no unit; write e.g. %ss (seconds), %sm (minutes), %sh or %sd", orig, num, num, num, num, num)
		case "d":
			// Parse as hours so that "1.5d" works exactly like "1.5h" does.
			part, err = time.ParseDuration(num + "h")
			if err == nil {
				if part > math.MaxInt64/24 {
					err = errors.New("overflow")
				}
				part *= 24
			}
		case "ns", "us", "µs", "μs", "ms", "s", "m", "h":
			part, err = time.ParseDuration(num + unit)
		default:
			return 0, fmt.Errorf("invalid duration %q: unknown unit %q; use s, m, h or d (also ms), e.g. 30s, 5m, 1h30m, 5d", orig, unit)
		}
		if err != nil || total > math.MaxInt64-part {
			return 0, fmt.Errorf("invalid duration %q: too large", orig)
		}
		total += part
	}
	if neg {
		total = -total
	}
	return total, nil
}

// String prints whole days with the d unit, so that defaults echoed back
// (check-config, logs) read like the configuration file.
func (d Duration) String() string {
	if d != 0 && time.Duration(d)%day == 0 {
		return strconv.FormatInt(int64(time.Duration(d)/day), 10) + "d"
	}
	return time.Duration(d).String()
}

// UnmarshalYAML accepts ParseDuration's syntax.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeError(n, "must be a single duration such as 30s, 5m, 4h or 5d, not "+describeNode(n))
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return nodeError(n, err.Error())
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the same syntax UnmarshalYAML reads.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// sizeUnits: the decimal units are what disk and network people mean, the
// IEC units what programmers mean; bare K/M/G follow Postfix and most Unix
// tools (message_size_limit folklore, dd, du) and are 1024-based.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1000, "mb": 1000 * 1000, "gb": 1000 * 1000 * 1000, "tb": 1000 * 1000 * 1000 * 1000,
	"k": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tib": 1 << 40,
}

// ParseSize parses a byte count: a plain integer, or a number with a unit:
// B; KB, MB, GB, TB (powers of 1000); KiB, MiB, GiB, TiB and the bare K, M,
// G, T (powers of 1024). Units are case-insensitive and may be separated by
// a space; a fraction ("1.5G") is rounded down to whole bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] == '.' || t[i] >= '0' && t[i] <= '9') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	const help = "write a number of bytes or a number with a unit: 50MB (50*1000*1000), 50MiB or 50M (50*1024*1024)"
	if num == "" || num == "." || strings.Count(num, ".") > 1 {
		if strings.HasPrefix(t, "-") {
			return 0, fmt.Errorf("invalid size %q: must not be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: %s", s, help)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q; %s", s, t[i:], help)
	}
	if unit == "" && strings.Contains(num, ".") {
		return 0, fmt.Errorf("invalid size %q: a fraction of a byte needs a unit; %s", s, help)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("invalid size %q: %s", s, help)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	n := new(big.Int).Quo(r.Num(), r.Denom())
	if !n.IsInt64() {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n.Int64(), nil
}

// String picks the largest unit that represents the size exactly.
func (s Size) String() string {
	if s > 0 {
		for _, u := range []struct {
			name string
			mult int64
		}{
			{"TiB", 1 << 40}, {"TB", 1e12}, {"GiB", 1 << 30}, {"GB", 1e9},
			{"MiB", 1 << 20}, {"MB", 1e6}, {"KiB", 1 << 10}, {"KB", 1e3},
		} {
			if int64(s)%u.mult == 0 {
				return strconv.FormatInt(int64(s)/u.mult, 10) + u.name
			}
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML accepts ParseSize's syntax.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeError(n, "must be a single size such as 50MB, 20MiB or 10485760, not "+describeNode(n))
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return nodeError(n, err.Error())
	}
	*s = Size(v)
	return nil
}

// MarshalYAML writes the same syntax UnmarshalYAML reads.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

// nodeError reports a bad value from inside UnmarshalYAML. It must be a
// *yaml.TypeError: yaml.v3 records those and carries on decoding, whereas
// any other error aborts the decode and would hide the problems after it.
// The column is included so that Parse can find the exact key even when
// several values share a line (flow style).
func nodeError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d:%d: %s", n.Line, n.Column, msg)}}
}

// describeNode names a value for "must be X, not Y" messages.
func describeNode(n *yaml.Node) string {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:37] + "..."
	}
	return strconv.Quote(v)
}
