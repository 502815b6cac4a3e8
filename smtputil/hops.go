package smtputil

import "strings"

// HopCounter counts the Received: fields in a message's header as the
// message streams through it (an io.Writer for io.TeeReader). A message
// that has passed too many hops is almost certainly in a mail loop; RFC
// 5321 §6.3 asks relays to detect that by counting Received: fields, and
// Postfix refuses above 50 (hopcount_limit).
//
// Only the header is examined; once the empty line that ends it has gone
// by, Write returns at once, so the cost does not grow with the body.
type HopCounter struct {
	// N is the number of Received: fields seen so far.
	N int
	// Header keeps the first MaxHeader octets of the header (through the
	// empty line), for the loop checks that look at field contents.
	Header []byte

	done    bool
	lineLen int  // octets of the current line so far, CR not counted
	differ  bool // the current line is known not to start with "Received:"
}

const receivedPrefix = "received:"

// MaxHeader bounds HopCounter.Header: loop markers and Auto-Submitted sit
// near the top, and a header larger than this is not worth keeping.
const MaxHeader = 256 << 10

// Write implements io.Writer; it never fails.
func (h *HopCounter) Write(p []byte) (int, error) {
	if h.done {
		return len(p), nil
	}
	for _, c := range p {
		if len(h.Header) < MaxHeader {
			h.Header = append(h.Header, c)
		}
		switch c {
		case '\n':
			if h.lineLen == 0 {
				h.done = true // the empty line that ends the header
				return len(p), nil
			}
			h.lineLen, h.differ = 0, false
			continue
		case '\r':
			continue
		}
		if !h.differ && h.lineLen < len(receivedPrefix) {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != receivedPrefix[h.lineLen] {
				h.differ = true
			} else if h.lineLen == len(receivedPrefix)-1 {
				h.N++
			}
		}
		h.lineLen++
	}
	return len(p), nil
}

// HeaderFields returns the unfolded values of every field called name in
// header, in order.
func HeaderFields(header []byte, name string) []string {
	var out []string
	lines := strings.Split(strings.ReplaceAll(string(header), "\r\n", "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if l == "" {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), name) {
			continue
		}
		for i+1 < len(lines) && lines[i+1] != "" && (lines[i+1][0] == ' ' || lines[i+1][0] == '\t') {
			i++
			v += " " + strings.TrimSpace(lines[i])
		}
		out = append(out, strings.TrimSpace(v))
	}
	return out
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
	for _, x := range extra {
		x = strings.ToLower(x)
		if x == local || x == strings.ToLower(addr) {
			return true
		}
	}
	return false
}
