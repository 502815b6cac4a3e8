package authres

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"

	"securerelay/dkim"
	"securerelay/smtputil"
)

// readHeader reads the header section from br, through the empty line
// that ends it. raw holds the octets as read; fields the header fields
// with continuation lines joined by CRLF, each without its final line
// end. The rules are go-msgauth's (net/textproto lines, CRLF or LF; a
// line starting with SP or HTAB continues the previous field), so that
// the n-th DKIM-Signature here is the n-th the verifier sees. complete
// is false when the input ended before an empty line.
//
// More than max bytes without the end of the header is an error that
// wraps dkim.ErrHeaderTooLarge: the header is held in memory (twice), and
// a message is up to max_message_size.
func readHeader(br *bufio.Reader, max int) (raw []byte, fields []string, complete bool, err error) {
	for {
		line, err := readLine(br, max-len(raw))
		if errors.Is(err, errLineTooLong) {
			return nil, nil, false, fmt.Errorf("%w (%d bytes)", dkim.ErrHeaderTooLarge, max)
		}
		raw = append(raw, line...)
		if errors.Is(err, io.EOF) {
			if len(line) > 0 {
				fields = addLine(fields, trimEOL(line))
			}
			return raw, fields, false, nil
		}
		if err != nil {
			return raw, fields, false, err
		}
		l := trimEOL(line)
		if len(l) == 0 {
			return raw, fields, true, nil
		}
		fields = addLine(fields, l)
	}
}

func addLine(fields []string, l []byte) []string {
	if len(fields) > 0 && (l[0] == ' ' || l[0] == '\t') {
		fields[len(fields)-1] += "\r\n" + string(l)
		return fields
	}
	return append(fields, string(l))
}

// errLineTooLong: readLine's limit was reached before the line ended.
var errLineTooLong = errors.New("line too long")

// readLine returns the next line including its LF, or what remains
// before EOF (with io.EOF); more than limit bytes is errLineTooLong.
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if len(line) > limit {
		return nil, errLineTooLong
	}
	if err == nil || (!errors.Is(err, bufio.ErrBufferFull)) {
		// ReadSlice's buffer is reused by the next read: copy.
		return append([]byte(nil), line...), err
	}
	buf := append([]byte(nil), line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		line, err = br.ReadSlice('\n')
		if len(buf)+len(line) > limit {
			return nil, errLineTooLong
		}
		buf = append(buf, line...)
	}
	return buf, err
}

func trimEOL(l []byte) []byte {
	if n := len(l); n > 0 && l[n-1] == '\n' {
		l = l[:n-1]
		if n := len(l); n > 0 && l[n-1] == '\r' {
			l = l[:n-1]
		}
	}
	return l
}

// splitField returns a field's name and its value with surrounding
// white space removed (folds inside the value stay).
func splitField(f string) (name, value string) {
	name, value, _ = strings.Cut(f, ":")
	return strings.TrimSpace(name), strings.TrimSpace(value)
}

// unfold removes the CRLFs of folded lines (RFC 5322 §2.2.3).
func unfold(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(s)
}

// StripForged copies the message in r to w, leaving out every
// Authentication-Results field whose authserv-id is authServID (ASCII
// case-insensitive): RFC 8601 §5 requires a border MTA to remove such
// fields, since only it may have written them and a sender could
// otherwise pose as authenticated. Everything else, including the
// Authentication-Results of other services, every line ending as it was,
// and the body, passes through byte for byte. It returns how many fields
// it removed.
//
// The caller writes Verdict.Header first, then the output of StripForged.
func StripForged(w io.Writer, r io.Reader, authServID string) (removed int, err error) {
	br := bufio.NewReaderSize(r, 16<<10)
	var field []byte // the current field, all its lines, as read
	flush := func() error {
		if len(field) == 0 {
			return nil
		}
		if isOurs(field, authServID) {
			removed++
		} else if _, err := w.Write(field); err != nil {
			return err
		}
		field = field[:0]
		return nil
	}
	for {
		// No limit here: a field is held while it is read, but the
		// content stage strips only messages whose header Check read
		// within its bound.
		line, rerr := readLine(br, math.MaxInt)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return removed, rerr
		}
		l := trimEOL(line)
		switch {
		case len(line) == 0:
		case len(l) == 0 && rerr == nil:
			// The empty line: the header ends, the body follows untouched.
			if err := flush(); err != nil {
				return removed, err
			}
			if _, err := w.Write(line); err != nil {
				return removed, err
			}
			_, err := io.Copy(w, br)
			return removed, err
		case (l[0] == ' ' || l[0] == '\t') && len(field) > 0:
			field = append(field, line...)
		default:
			if err := flush(); err != nil {
				return removed, err
			}
			field = append(field, line...)
		}
		if rerr != nil {
			return removed, flush()
		}
	}
}

// countForged is how many of the parsed header fields StripForged would
// remove (FuzzStripForged holds the two to the same count).
func countForged(fields []string, authServID string) int {
	n := 0
	for _, f := range fields {
		if isOurs([]byte(f), authServID) {
			n++
		}
	}
	return n
}

// isOurs reports whether the raw field is an Authentication-Results
// field naming authServID.
func isOurs(field []byte, authServID string) bool {
	const name = "authentication-results"
	if len(field) <= len(name) || !strings.EqualFold(string(field[:len(name)]), name) {
		return false
	}
	rest := strings.TrimLeft(string(field[len(name):]), " \t")
	if !strings.HasPrefix(rest, ":") {
		return false
	}
	id, ok := authServIDOf(rest[1:])
	return ok && strings.EqualFold(id, authServID)
}

// maxCommentDepth bounds nested comments; real fields have one level.
const maxCommentDepth = 16

// authServIDOf returns the authserv-id at the start of an
// Authentication-Results value (RFC 8601 §2.2: [CFWS] authserv-id, a
// token or a quoted-string). ok is false when there is none.
func authServIDOf(v string) (id string, ok bool) {
	v, ok = skipCFWS(v)
	if !ok {
		return "", false
	}
	id, _, ok = readValue(v)
	return id, ok
}

// skipCFWS skips white space, line breaks and comments, nested and with
// quoted-pairs (RFC 5322 §3.2.2). ok is false for an unterminated or
// too deeply nested comment.
func skipCFWS(s string) (string, bool) {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case depth > 0 && c == '\\':
			i++
		case c == '(':
			if depth++; depth > maxCommentDepth {
				return "", false
			}
		case depth > 0 && c == ')':
			depth--
		case depth > 0, c == ' ', c == '\t', c == '\r', c == '\n':
		default:
			return s[i:], true
		}
	}
	return "", depth == 0
}

// readValue reads an RFC 2045 value (token or quoted-string) from the
// start of s and returns it unquoted, with the rest of s.
func readValue(s string) (value, rest string, ok bool) {
	if s == "" {
		return "", s, false
	}
	if s[0] != '"' {
		i := 0
		for i < len(s) && isTokenChar(s[i]) {
			i++
		}
		return s[:i], s[i:], i > 0
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], true
		case '\\':
			if i+1 == len(s) {
				return "", s, false
			}
			i++
			b.WriteByte(s[i])
		case '\r', '\n':
			// Folding inside a quoted string is not part of its value.
		default:
			b.WriteByte(c)
		}
	}
	return "", s, false
}

// isTokenChar: RFC 2045 token characters (printable ASCII except SPACE
// and tspecials).
func isTokenChar(c byte) bool {
	if c <= ' ' || c >= 0x7f {
		return false
	}
	return !strings.ContainsRune(`()<>@,;:\"/[]?=`, rune(c))
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// maxReason bounds a reason text in the header and in replies.
const maxReason = 200

// resinfo is one method's result (RFC 8601 §2.2 resinfo).
type resinfo struct {
	method string
	result Result
	reason string
	props  []prop
}

type prop struct{ name, value string }

// formatField renders the Authentication-Results field: the authserv-id,
// then one resinfo per continuation line (CRLF HTAB), so that every
// result can be read at a glance. Values from the message are quoted
// where RFC 8601's grammar needs it; none can break the field.
func formatField(authServID string, rs []resinfo) string {
	clauses := make([][]string, 0, len(rs)+1)
	clauses = append(clauses, []string{authServID + ";"})
	for i, r := range rs {
		words := []string{r.method + "=" + string(r.result)}
		if r.reason != "" {
			reason := r.reason
			if len(reason) > maxReason {
				reason = reason[:maxReason]
			}
			words = append(words, "reason="+quoteValue(reason))
		}
		for _, p := range r.props {
			words = append(words, p.name+"="+pvalue(p.value))
		}
		if i < len(rs)-1 {
			words[len(words)-1] += ";"
		}
		clauses = append(clauses, words)
	}
	return smtputil.FoldClauses("Authentication-Results:", clauses)
}

// pvalue formats a property value (RFC 8601 §2.2: value, i.e. token or
// quoted-string, or [local-part "@"] domain-name): bare when it is a
// token or a plain address, quoted otherwise.
func pvalue(s string) string {
	if isToken(s) || isPlainAddress(s) {
		return s
	}
	return quoteString(s)
}

// quoteValue formats an RFC 2045 value: a token, or a quoted-string.
func quoteValue(s string) string {
	if isToken(s) {
		return s
	}
	return quoteString(s)
}

// quoteString makes a quoted-string of s. Control characters and bytes
// that are not UTF-8 become '?', so the result is one line; UTF-8 text
// stays (RFC 8601 §2.2 allows it in internationalized mail, RFC 6532).
func quoteString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == utf8.RuneError, r < 0x20, r == 0x7f, 0x80 <= r && r < 0xa0:
			b.WriteByte('?')
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// isPlainAddress: a dot-atom local part, '@', and an LDH domain name.
func isPlainAddress(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return false
	}
	local, domain := s[:at], s[at+1:]
	if !smtputil.IsDotString(local) {
		return false
	}
	for _, label := range strings.Split(domain, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if !isLDH(label[i]) {
				return false
			}
		}
	}
	return true
}
