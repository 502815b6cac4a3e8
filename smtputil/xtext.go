package smtputil

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Lengths RFC 3461 allows the DSN parameters (section 4: the MAIL line
// grows by at most 100 characters for ENVID, the RCPT line by 500 for
// NOTIFY and ORCPT), counted as sent, in xtext.
const (
	MaxEnvIDLen = 100
	MaxORCPTLen = 500
)

// EncodeXtext writes s as xtext (RFC 3461 §4): the printable ASCII
// characters other than "+" and "=" as they are, every other octet as "+"
// and two upper-case hex digits. ENVID and an rfc822 ORCPT travel so.
func EncodeXtext(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '!' && c <= '~' && c != '+' && c != '=' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('+')
		b.WriteByte("0123456789ABCDEF"[c>>4])
		b.WriteByte("0123456789ABCDEF"[c&15])
	}
	return b.String()
}

// EncodeUTF8AddrXtext writes an address as utf-8-addr-xtext (RFC 6533
// §3), the ASCII form of a "utf-8" ORCPT: the printable ASCII characters
// other than "+", "=" and "\" as they are, every other character as
// \x{HEX} (upper-case hex, at least two digits). It suits every next hop,
// with or without SMTPUTF8, and message/delivery-status. ok is false when
// s holds something no address can (NUL, invalid UTF-8).
func EncodeUTF8AddrXtext(s string) (enc string, ok bool) {
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return "", false
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		switch {
		case r >= '!' && r <= '~' && r != '+' && r != '=' && r != '\\':
			b.WriteRune(r)
		default:
			h := strings.ToUpper(strconv.FormatInt(int64(r), 16))
			if len(h) < 2 {
				h = "0" + h
			}
			b.WriteString(`\x{` + h + "}")
		}
	}
	return b.String(), true
}

// EncodeORCPT writes an ORCPT value (RFC 3461 §4.2) from the form the
// queue keeps ("rfc822;bob@example.org", the address decoded): the
// address type, ";", and the address in xtext, or in utf-8-addr-xtext for
// the "utf-8" type (RFC 6533). ok is false for a value that cannot be
// sent (no type, an address type we do not know, bad UTF-8).
func EncodeORCPT(orcpt string) (string, bool) {
	typ, addr, found := strings.Cut(orcpt, ";")
	if !found || typ == "" || addr == "" {
		return "", false
	}
	switch strings.ToLower(typ) {
	case "rfc822":
		for i := 0; i < len(addr); i++ {
			if addr[i] < ' ' || addr[i] > '~' {
				return "", false // §4.2: printable US-ASCII only
			}
		}
		return "rfc822;" + EncodeXtext(addr), true
	case "utf-8":
		enc, ok := EncodeUTF8AddrXtext(addr)
		return "utf-8;" + enc, ok
	}
	return "", false
}
