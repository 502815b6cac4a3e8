package smtputil

import (
	"crypto/tls"
	"net/netip"
	"strings"
	"time"
)

// ReceivedInfo is what one Received trace field records about a hop.
type ReceivedInfo struct {
	FromHelo   string     // HELO/EHLO argument as the client sent it (untrusted)
	ClientIP   netip.Addr // peer address of the connection
	ClientHost string     // verified reverse name if known, else empty
	ByHost     string     // our host name
	Listener   string     // name of the listener from the configuration
	Protocol   string     // SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA (RFC 3848); see ProtocolName
	TLSVersion string     // e.g. "TLS1.3", see TLSVersionName
	TLSCipher  string     // e.g. tls.CipherSuiteName(state.CipherSuite)
	QueueID    string
	// For names the recipient; set it only when the transaction has
	// exactly one, since with several it would disclose Bcc recipients
	// to all of them (RFC 5321 §7.2).
	For  string
	Time time.Time // zero means now
}

const (
	// RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; we stay
	// below that. Tokens longer than a line are kept whole (still far
	// below the 998 limit because every input is bounded).
	foldWidth   = 77
	maxHeloLen  = 255 // a Domain is at most 255 octets (RFC 5321 §4.5.3.1.2)
	maxTokenLen = 64  // bound for free text from configuration or peers
)

// Received returns one RFC 5321 §4.4 Time-stamp-line ("Received:" field),
// folded with CRLF TAB and ending in CRLF, e.g.
//
//	Received: from mail.example.org (mail.example.org [192.0.2.1])
//		by mx1.example.com (securerelay) with ESMTPS id 0123ABCD
//		(TLS1.3 TLS_AES_128_GCM_SHA256; listener mx)
//		for <a@example.com>; Mon, 2 Jan 2006 15:04:05 +0000
//
// The HELO name comes from the peer: it is used as the From-domain only
// when it is a syntactically valid domain or address literal; otherwise
// the client IP literal is used and the HELO text appears, stripped to
// printable ASCII without parentheses or backslashes and bounded, only
// inside the comment, so it can neither break the field (CR/LF) nor end
// the comment early and inject tokens that a parser of the trace would
// believe.
func Received(ri ReceivedInfo) string {
	ipLit := ""
	if ri.ClientIP.IsValid() {
		ipLit = AddressLiteral(ri.ClientIP)
	}

	helo, heloOK := cleanHelo(ri.FromHelo)
	from := helo
	var tcpInfo []string
	if host := cleanDomain(ri.ClientHost); host != "" {
		tcpInfo = append(tcpInfo, host)
	}
	if ipLit != "" {
		tcpInfo = append(tcpInfo, ipLit)
	}
	if !heloOK {
		from = ipLit
		if from == "" {
			from = "unknown"
		}
		// Spaces are replaced too: the HELO becomes one token, so words
		// in it cannot pose as "by" or "for" clauses to naive parsers.
		if h := strings.ReplaceAll(commentText(ri.FromHelo, maxTokenLen), " ", "?"); h != "" {
			tcpInfo = append(tcpInfo, "helo="+h)
		} else {
			tcpInfo = append(tcpInfo, "no-helo")
		}
	}

	var clauses [][]string
	c1 := []string{"from", from}
	if len(tcpInfo) > 0 {
		c1 = append(c1, parenthesize(tcpInfo)...)
	}
	clauses = append(clauses, c1)

	by := cleanDomain(ri.ByHost)
	if by == "" {
		by = "localhost"
	}
	c2 := []string{"by", by, "(securerelay)"}
	if p := atom(ri.Protocol); p != "" {
		c2 = append(c2, "with", p)
	}
	if id := atom(ri.QueueID); id != "" {
		c2 = append(c2, "id", id)
	}
	clauses = append(clauses, c2)

	var info []string
	if v := commentText(ri.TLSVersion, maxTokenLen); v != "" {
		info = append(info, v)
	}
	if c := commentText(ri.TLSCipher, maxTokenLen); c != "" {
		info = append(info, c)
	}
	if l := commentText(ri.Listener, maxTokenLen); l != "" {
		if len(info) > 0 {
			info[len(info)-1] += ";"
		}
		info = append(info, "listener", l)
	}
	if len(info) > 0 {
		clauses = append(clauses, parenthesize(info))
	}

	t := ri.Time
	if t.IsZero() {
		t = time.Now()
	}
	date := t.Format(DateFormat)
	if f := TraceFor(ri.For); f != "" {
		clauses = append(clauses, []string{"for", "<" + f + ">;"})
	} else {
		last := clauses[len(clauses)-1]
		last[len(last)-1] += ";"
	}
	clauses[len(clauses)-1] = append(clauses[len(clauses)-1], strings.Fields(date)...)

	return FoldClauses("Received:", clauses)
}

// DateFormat is the RFC 5322 §3.3 date-time layout used in trace and
// Date fields.
const DateFormat = "Mon, 2 Jan 2006 15:04:05 -0700"

// FoldClauses renders a header field from name and clauses of words.
// Each clause after the first starts on a continuation line (CRLF TAB); a
// clause that does not fit is folded between words (CRLF SP). The result ends in
// CRLF. Words must not contain CR or LF.
func FoldClauses(name string, clauses [][]string) string {
	var b strings.Builder
	b.WriteString(name)
	col := len(name)
	for ci, words := range clauses {
		for wi, w := range words {
			switch {
			case ci > 0 && wi == 0:
				b.WriteString("\r\n\t")
				col = 1
			case col+1+len(w) > foldWidth && col > 1:
				// Fold before the space that separates the words, so that
				// unfolding (RFC 5322 §2.2.3: remove the CRLF) gives back
				// exactly the original text, e.g. a quoted remote reply.
				b.WriteString("\r\n ")
				col = 1
			default:
				b.WriteByte(' ')
				col++
			}
			b.WriteString(w)
			col += len(w)
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

// FoldField renders "Name: value" folded at spaces below 78 columns,
// ending in CRLF. value must already be free of CR and LF.
func FoldField(name, value string) string {
	return FoldClauses(name+":", [][]string{strings.Fields(value)})
}

// AddressLiteral formats ip as an RFC 5321 §4.1.3 address literal.
func AddressLiteral(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return "[" + ip.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}

// ProtocolName returns the RFC 3848 "with" keyword for a session: SMTP for
// HELO, ESMTP for EHLO, plus S when TLS is active and A when the client
// authenticated. (A transaction with SMTPUTF8 is "UTF8SMTP" plus S and A,
// RFC 6531 §4.3; the session writes that itself.)
func ProtocolName(ehlo, tls, auth bool) string {
	if !ehlo {
		return "SMTP"
	}
	p := "ESMTP"
	if tls {
		p += "S"
	}
	if auth {
		p += "A"
	}
	return p
}

// TLSVersionName returns "TLS1.3" etc. for a tls.ConnectionState.Version.
func TLSVersionName(v uint16) string {
	return strings.ReplaceAll(tls.VersionName(v), " ", "")
}

// TraceFor is an envelope recipient as our Received: field's "for"
// clause writes it, and as the loop check looks for it; "" for one that
// does not parse (left out rather than written into the trace). An
// internationalised address is written in ASCII (its domain in A-labels)
// whenever that exists, so that the trace field does not by itself keep
// a message from being downgraded for a next hop without SMTPUTF8 (RFC
// 6531 §3.2); only a UTF-8 local part, which never downgrades, is
// written in UTF-8 (RFC 6532).
func TraceFor(s string) string {
	if s == "" {
		return ""
	}
	a, err := ParseMailbox(s, true)
	if err != nil {
		return ""
	}
	if f, ok := a.ASCII(); ok {
		return f
	}
	return a.String()
}

// cleanHelo returns the HELO argument lower-cased and whether it is a
// syntactically valid domain or IPv4/IPv6 address literal. RFC 5321
// §4.1.4 forbids refusing mail for a bad HELO alone, so a bad one is only
// recorded, never trusted.
func cleanHelo(h string) (string, bool) {
	if h == "" || len(h) > maxHeloLen {
		return "", false
	}
	d, err := normalizeDomain(h)
	if err != nil {
		// Single-label names ("localhost", NetBIOS names) are common and
		// harmless as long as they are syntactically clean.
		if !isKind(err, ErrNotFQDN) {
			return "", false
		}
		d = strings.TrimSuffix(strings.ToLower(h), ".")
	}
	// normalizeDomain accepts the lower-case "ipv6:" tag; RFC 5321
	// spells it "IPv6:" and so do we.
	if rest, ok := strings.CutPrefix(d, "[ipv6:"); ok {
		d = "[IPv6:" + rest
	}
	return d, true
}

// cleanDomain returns d if it is a valid domain name (used for names that
// come from DNS or configuration), else "".
func cleanDomain(d string) string {
	if d == "" || len(d) > maxDomainLen || strings.HasPrefix(d, "[") {
		return ""
	}
	n, err := normalizeDomain(d)
	if err != nil && !isKind(err, ErrNotFQDN) {
		return ""
	}
	if err != nil {
		n = strings.TrimSuffix(strings.ToLower(d), ".")
	}
	return n
}

func isKind(err, kind error) bool {
	ae, ok := err.(*AddressError)
	return ok && ae.Kind == kind
}

// commentText reduces untrusted text to something safe inside an RFC
// 5322 comment: printable ASCII except '(', ')' and '\' (which would end
// or escape the comment) and ';' (which parsers use to find the date);
// runs of anything else become one '?'. Spaces are kept (the folder may
// break there). The result is bounded to max octets.
func commentText(s string, max int) string {
	var b strings.Builder
	lastBad := false
	for i := 0; i < len(s) && b.Len() < max; i++ {
		c := s[i]
		if c == ' ' || (c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '\\' && c != ';') {
			b.WriteByte(c)
			lastBad = false
			continue
		}
		if !lastBad {
			b.WriteByte('?')
			lastBad = true
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// atom keeps only RFC 5322 atext characters, bounded: for Protocol and ID,
// which the grammar requires to be an Atom.
func atom(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < maxTokenLen; i++ {
		if isAtext(s[i]) {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// parenthesize turns words into one comment, "(" on the first and ")" on
// the last word.
func parenthesize(words []string) []string {
	var out []string
	for _, w := range words {
		out = append(out, strings.Fields(w)...)
	}
	if len(out) == 0 {
		return nil
	}
	out[0] = "(" + out[0]
	out[len(out)-1] += ")"
	return out
}
