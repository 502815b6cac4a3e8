package smtputil

import (
	"errors"
	"strings"
)

// HopCounter counts the Received: fields in a message's header as the
// message streams through it (an io.Writer for io.TeeReader). A message
// that has passed too many hops is almost certainly in a mail loop; RFC
// 5321 §6.3 asks relays to detect that by counting Received: fields, and
// Postfix refuses above 50 (hopcount_limit).
//
// A field is recognised by its name as RFC 5322 parses it, obsolete
// syntax included: "Received", in any case, then optional white space
// (§4.5.3 obs-received, "Received :"), then the colon; HeaderFields reads
// field names the same way. Only the header is examined; once the empty
// line that ends it has gone by, Write returns at once, so the cost does
// not grow with the body.
type HopCounter struct {
	// N is the number of Received: fields seen so far.
	N int
	// Header keeps the first MaxHeader octets of the header (through the
	// empty line), for the loop checks that look at field contents.
	Header []byte
	// Max, if positive, bounds the whole header: past it Write fails with
	// ErrHeaderTooLarge (and io.TeeReader's reader with it).
	Max int

	done  bool
	size  int // header octets so far
	line  int // octets of the current line so far, CR not counted
	match int // octets of "received" matched at the start of this line
	// differ: the current line is known not to start a Received field.
	differ bool
}

const receivedName = "received"

// MaxHeader bounds HopCounter.Header: loop markers and Auto-Submitted sit
// near the top, and a header larger than this is not worth keeping.
const MaxHeader = 256 << 10

// ErrHeaderTooLarge is HopCounter's error for a header over its Max.
var ErrHeaderTooLarge = errors.New("message header exceeds the size limit")

// Write implements io.Writer; it fails only with ErrHeaderTooLarge.
func (h *HopCounter) Write(p []byte) (int, error) {
	if h.done {
		return len(p), nil
	}
	for i, c := range p {
		if h.Max > 0 && h.size >= h.Max {
			return i, ErrHeaderTooLarge
		}
		h.size++
		if len(h.Header) < MaxHeader {
			h.Header = append(h.Header, c)
		}
		switch c {
		case '\n':
			if h.line == 0 {
				h.done = true // the empty line that ends the header
				return len(p), nil
			}
			h.line, h.match, h.differ = 0, 0, false
			continue
		case '\r':
			continue
		}
		h.line++
		if h.differ {
			continue
		}
		switch {
		case h.match < len(receivedName):
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c == receivedName[h.match] {
				h.match++
			} else {
				// Also a continuation line (leading WSP), never a field.
				h.differ = true
			}
		case c == ' ' || c == '\t':
			// obs-received: WSP between the name and the colon.
		case c == ':':
			h.N++
			h.differ = true
		default:
			h.differ = true // a longer name ("Received-SPF")
		}
	}
	return len(p), nil
}

// HeaderFields returns the unfolded values of every field called name in
// header, in order. Names compare as RFC 5322 reads them: case-insensitive,
// with the obsolete white space before the colon (§4.5) allowed.
// With dkim.ReadHeader it is the one header reader of the relay;
// docs/flow.md ("Header readers") says why authres, milter and attach
// read headers their own way.
func HeaderFields(header []byte, name string) []string {
	var out []string
	lines := strings.Split(strings.ReplaceAll(string(header), "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l == "" {
			break
		}
		k, ok := fieldName(l)
		if !ok || !strings.EqualFold(k, name) {
			continue
		}
		_, v, _ := strings.Cut(l, ":")
		for i+1 < len(lines) && lines[i+1] != "" && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v += " " + strings.TrimSpace(lines[i])
		}
		out = append(out, strings.TrimSpace(v))
	}
	return out
}

// fieldName returns the name of the field a header line starts, as RFC
// 5322 reads it: the text before the first colon, without the white space
// the obsolete syntax allows before the colon (§4.5); ok is false for a
// continuation line and for a line that starts no field.
func fieldName(line string) (name string, ok bool) {
	if line == "" || line[0] == ' ' || line[0] == '\t' {
		return "", false
	}
	k, _, ok := strings.Cut(line, ":")
	k = strings.TrimRight(k, " \t")
	if !ok || k == "" || strings.ContainsAny(k, " \t") {
		return "", false
	}
	return k, true
}

// IsAutomatic reports whether a header marks the message as sent by a
// program rather than a person (RFC 3834 Auto-Submitted other than "no",
// Precedence bulk/junk/list, and the de-facto X-Autoreply and
// X-Auto-Response-Suppress).
func IsAutomatic(header []byte) bool {
	for _, v := range HeaderFields(header, "Auto-Submitted") {
		if v, _, _ := strings.Cut(strings.ToLower(v), ";"); strings.TrimSpace(v) != "no" {
			return true
		}
	}
	for _, v := range HeaderFields(header, "Precedence") {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "bulk", "junk", "list":
			return true
		}
	}
	return len(HeaderFields(header, "X-Autoreply")) > 0 || len(HeaderFields(header, "X-Auto-Response-Suppress")) > 0
}

// automaticLocalParts are addresses that only programs send from; an
// automatic message to one of them is half of a loop between two programs.
var automaticLocalParts = map[string]bool{
	"mailer-daemon": true, "noreply": true, "no-reply": true, "donotreply": true,
	"do-not-reply": true, "postmaster": false, "bounce": true, "bounces": true,
}

// IsAutomaticSender reports whether an address belongs to a program that
// sends automatic mail (MAILER-DAEMON, noreply, …; postmaster is a person),
// or is in extra: local parts or whole addresses, case-insensitive.
func IsAutomaticSender(addr string, extra []string) bool {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return false
	}
	local := strings.ToLower(addr[:at])
	if automaticLocalParts[local] {
		return true
	}
	// An address in the list matches whether either side writes its
	// domain in U-labels or A-labels.
	full := ""
	for _, x := range extra {
		x = strings.ToLower(x)
		if x == local {
			return true
		}
		if i := strings.LastIndexByte(x, '@'); i >= 0 {
			if full == "" {
				full = local + "@" + AddressDomain(addr)
			}
			if x[:i]+"@"+AddressDomain(x) == full {
				return true
			}
		}
	}
	return false
}
