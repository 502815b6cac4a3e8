package milter

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// Limits on the header section, which is the only part of a message this
// package holds in memory. A message whose header section is larger is
// refused (552 5.3.4) before any milter sees it: Postfix caps a single field
// at 100 KiB (header_size_limit) and real mail stays far below 1 MiB.
const (
	maxHeaderBytes  = 1 << 20
	maxHeaderFields = 10000
)

var errHeaderTooLarge = errors.New("message header section too large")

// field is one header field with its raw bytes: name, colon, value and the
// folded continuation lines, ending in the line break it had (the last field
// of a message that ends inside its header may have none). Unchanged fields
// are written back byte for byte, so signatures over them (DKIM) survive.
type field struct {
	raw   []byte
	colon int // index of the ':' in raw
}

// name is the field name as written, without the whitespace that some
// senders put before the colon.
func (f field) name() string {
	return string(bytes.TrimRight(f.raw[:f.colon], " \t"))
}

// milterValue is the value as Sendmail and Postfix pass it to a milter:
// everything after the colon without the final line break, folded lines
// separated by a bare LF, and one leading space removed unless the milter
// asked for it (SMFIP_HDR_LEADSPC).
func (f field) milterValue(leadSpace bool) string {
	v := f.raw[f.colon+1:]
	v = bytes.TrimSuffix(v, []byte("\n"))
	v = bytes.TrimSuffix(v, []byte("\r"))
	if !leadSpace && len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	if bytes.IndexByte(v, '\r') < 0 {
		return string(v)
	}
	return strings.ReplaceAll(string(v), "\r\n", "\n")
}

// header is a parsed header section.
type header struct {
	fields []field
	// sep is the empty line that ended the header ("\r\n" or "\n"), or
	// nil when the header ended at end of input or at a line that is not a
	// header field (which then starts the body, as in Postfix).
	sep []byte
	// size is the number of bytes of the source the fields and sep take;
	// the body starts there.
	size int64
	// bodyStart holds a line that was read to find the end of the header
	// but belongs to the body.
	bodyStart []byte
}

// readHeader splits the header section off r. It is not a MIME parser: it
// only finds field boundaries (RFC 5322 §2.2: a name of printable ASCII
// other than ':', a colon, a value with folded continuation lines) and keeps
// every byte. net/textproto and go-message's textproto unfold values and
// fail on a malformed line, which an MTA must pass on instead; this keeps
// the bytes and, like Postfix, treats a line that is not a field as the
// first body line.
func readHeader(r *bufio.Reader) (*header, error) {
	h := &header{}
	var buf []byte // all field bytes; fields are slices of it
	var bounds []int
	for {
		line, err := readLine(r, maxHeaderBytes-len(buf))
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if len(line) == 0 {
			break // end of input
		}
		switch {
		case isEmptyLine(line):
			h.sep = line
		case line[0] == ' ' || line[0] == '\t':
			if len(bounds) == 0 {
				h.bodyStart = line // a continuation with nothing to continue
				break
			}
			buf = append(buf, line...)
			continue
		case fieldNameEnd(line) > 0:
			if len(bounds) >= maxHeaderFields {
				return nil, errHeaderTooLarge
			}
			bounds = append(bounds, len(buf))
			buf = append(buf, line...)
			if err != nil {
				break // the last line, without a line break
			}
			continue
		default:
			h.bodyStart = line
		}
		break
	}
	h.fields = make([]field, len(bounds))
	for i, start := range bounds {
		end := len(buf)
		if i+1 < len(bounds) {
			end = bounds[i+1]
		}
		raw := buf[start:end:end]
		h.fields[i] = field{raw: raw, colon: bytes.IndexByte(raw, ':')}
	}
	h.size = int64(len(buf) + len(h.sep))
	return h, nil
}

// readLine reads one line including its LF, failing when it would take the
// header past its limit (max bytes left).
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > max {
			return nil, errHeaderTooLarge
		}
		line = append(line, frag...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return line, err
	}
}

func isEmptyLine(l []byte) bool {
	return string(l) == "\r\n" || string(l) == "\n"
}

// fieldNameEnd returns the index of the colon that ends a field name at the
// start of line, or -1. Whitespace between name and colon is tolerated as in
// Postfix's is_header().
func fieldNameEnd(line []byte) int {
	i := 0
	for i < len(line) && line[i] > ' ' && line[i] < 0x7f && line[i] != ':' {
		i++
	}
	if i == 0 {
		return -1
	}
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	if i < len(line) && line[i] == ':' {
		return i
	}
	return -1
}

// validFieldName reports whether a milter-supplied name can be written as a
// header field name.
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// newField builds a header field from a milter's name and value. Milters
// fold values with a bare LF (as libmilter and rspamd do) or CRLF; every
// line break becomes CRLF, and each continuation line is made to start with
// whitespace and empty ones are dropped, so a value can never end the
// header early or start a field of its own. Without SMFIP_HDR_LEADSPC the
// MTA puts one space after the colon, as Postfix and Sendmail do.
func newField(name, value string, leadSpace bool) field {
	var b strings.Builder
	b.Grow(len(name) + len(value) + 8)
	b.WriteString(name)
	b.WriteByte(':')
	if !leadSpace {
		b.WriteByte(' ')
	}
	value = strings.ReplaceAll(value, "\r\n", "\n")
	for i, line := range strings.Split(value, "\n") {
		line = strings.Map(func(r rune) rune {
			if r == '\r' || r == 0 {
				return ' '
			}
			return r
		}, line)
		if i > 0 {
			if strings.TrimLeft(line, " \t") == "" {
				continue
			}
			b.WriteString("\r\n")
			if line[0] != ' ' && line[0] != '\t' {
				b.WriteByte('\t')
			}
		}
		b.WriteString(line)
	}
	b.WriteString("\r\n")
	raw := []byte(b.String())
	return field{raw: raw, colon: len(name)}
}
