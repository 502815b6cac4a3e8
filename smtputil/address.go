// Package smtputil holds the SMTP details that the inbound and outbound
// listeners, the delivery engine and the DSN generator share: envelope
// address parsing and anti-relay checks, Received trace fields, the bare
// CR/LF (SMTP smuggling) defence and the reply codes sent to clients.
package smtputil

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Error kinds returned (wrapped in *AddressError) by ParseAddress. They are
// separate so that the listener can pick the reply: a syntax error is 501,
// an unqualified or non-ASCII address is a policy refusal (553), see
// AddressReply.
var (
	// ErrBadSyntax: the text is not an RFC 5321 §4.1.2 Mailbox.
	ErrBadSyntax = errors.New("bad address syntax")
	// ErrTooLong: a length limit of RFC 5321 §4.5.3.1 is exceeded.
	ErrTooLong = errors.New("address too long")
	// ErrNotFQDN: the domain has no dot (a@localhost, a@mailhost). Such a
	// name only means something inside the sender's own network, so the
	// address cannot be answered or routed from here (DESIGN.md 2.2/2.3).
	ErrNotFQDN = errors.New("domain is not fully qualified")
	// ErrNonASCII: the address has octets above 0x7f and the transaction
	// did not declare SMTPUTF8 (RFC 6531 §3.4): only ParseMailbox with
	// smtputf8 accepts a UTF-8 local part or U-label domain.
	ErrNonASCII = errors.New("non-ASCII address")
)

// AddressError describes why ParseAddress refused its input. Kind is one of
// the Err* values above; errors.Is works on it.
type AddressError struct {
	Kind   error
	Detail string
}

func (e *AddressError) Error() string { return e.Kind.Error() + ": " + e.Detail }
func (e *AddressError) Unwrap() error { return e.Kind }

func addrErr(kind error, format string, args ...any) error {
	return &AddressError{Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

// Limits from RFC 5321 §4.5.3.1.1 (local part), §4.5.3.1.2 (domain) and
// §4.5.3.1.3 (path: 256 octets including the angle brackets, hence 254 for
// the address itself, see erratum 1690).
const (
	maxLocalLen   = 64
	maxDomainLen  = 255
	maxLabelLen   = 63
	maxAddressLen = 254
)

// Address is an envelope mailbox. Local is the local part without quoting
// (as go-smtp hands it over; UTF-8 under SMTPUTF8); Domain is lower-case
// ASCII without a trailing dot, an internationalised domain in its A-label
// (xn--) form, or an address literal such as "[192.0.2.1]" or
// "[ipv6:2001:db8::1]". Domain is what every comparison, route, TLS rule
// and DNS lookup uses, so that "müller.example" and
// "xn--mller-kva.example" are one domain.
type Address struct {
	Local, Domain string
	// UDomain is the domain in U-labels (normalised by IDNA: lower case,
	// NFC) when the sender wrote it that way, else "": String keeps the
	// address as its sender wrote it, while Domain compares.
	UDomain string
}

// ParseAddress parses a mailbox as go-smtp passes it to Session.Mail and
// Session.Rcpt: angle brackets and any source route already removed.
//
// go-smtp v0.25 removes the quotes of a quoted-string local part (and
// resolves its backslash escapes), so `"a b"@x` arrives as `a b@x` and
// `"user@other"@x` as `user@other@x`. ParseAddress therefore splits at the
// last '@' (a domain never contains one) and accepts any printable ASCII
// in the local part: whatever is not a valid dot-string must have been a
// quoted-string on the wire. Input that still carries the quotes is
// accepted too, which makes the function usable on addresses from other
// sources (configuration, headers). The one ambiguity: a local part that
// literally starts and ends with '"' is read as quoted.
//
// The null reverse-path (MAIL FROM:<>) reaches the session as "" and must
// be handled by the caller; here it is a syntax error.
//
// ParseAddress is ParseMailbox without SMTPUTF8: non-ASCII is ErrNonASCII.
func ParseAddress(s string) (Address, error) { return ParseMailbox(s, false) }

// ParseMailbox parses a mailbox as ParseAddress does; with smtputf8 (the
// transaction declared SMTPUTF8, RFC 6531 §3.4, or the address comes from
// a message that did) it also accepts a UTF-8 local part (RFC 6531 §3.3:
// atext and qtext extended by UTF8-non-ascii, limits in octets) and a
// domain in U-labels, which IDNA (the Lookup profile: the sender typed a
// name, we look it up) maps to the A-labels in Domain.
func ParseMailbox(s string, smtputf8 bool) (Address, error) {
	if s == "" {
		return Address{}, addrErr(ErrBadSyntax, "empty address")
	}
	if len(s) > 4*maxAddressLen {
		// Bound the work done on hostile input before looking closer.
		return Address{}, addrErr(ErrTooLong, "address is %d octets, limit is %d", len(s), maxAddressLen)
	}
	var local, domain string
	if q, rest, ok := cutQuotedString(s); ok && strings.HasPrefix(rest, "@") {
		local, domain = q, rest[1:]
	} else {
		at := strings.LastIndexByte(s, '@')
		if at < 0 {
			// "<user>" is the classic unqualified address (DESIGN.md 2.2);
			// go-smtp already refuses it, other sources may not.
			return Address{}, addrErr(ErrNotFQDN, "%s has no @domain part", quoteForError(s))
		}
		local, domain = s[:at], s[at+1:]
	}

	if local == "" {
		return Address{}, addrErr(ErrBadSyntax, "%s has an empty local part", quoteForError(s))
	}
	if !smtputf8 && !isASCII(local) {
		return Address{}, addrErr(ErrNonASCII, "local part of %s contains non-ASCII characters, which need the SMTPUTF8 parameter on MAIL FROM (RFC 6531)", quoteForError(s))
	}
	if !smtputf8 && !isASCII(domain) {
		return Address{}, addrErr(ErrNonASCII, "domain of %s contains non-ASCII characters, which need the SMTPUTF8 parameter on MAIL FROM (RFC 6531); or use its xn-- (A-label) form", quoteForError(s))
	}
	if err := checkLocalChars(local, s); err != nil {
		return Address{}, err
	}

	a := Address{Local: local}
	var err error
	if isASCII(domain) {
		a.Domain, err = normalizeDomain(domain)
	} else {
		a.Domain, a.UDomain, err = idnDomain(domain)
	}
	if err != nil {
		return Address{}, err
	}

	if n := len(quoteLocal(local)); n > maxLocalLen {
		return Address{}, addrErr(ErrTooLong, "local part is %d octets, limit is %d (RFC 5321 section 4.5.3.1.1)", n, maxLocalLen)
	}
	// Both forms must fit: the one written, and the A-label one a
	// downgrade would send (RFC 6531 §3.3 counts octets).
	if n := max(len(a.String()), len(quoteLocal(local))+1+len(a.Domain)); n > maxAddressLen {
		return Address{}, addrErr(ErrTooLong, "address is %d octets, limit is %d (RFC 5321 section 4.5.3.1.3)", n, maxAddressLen)
	}
	return a, nil
}

// checkLocalChars refuses what no local part can hold even when quoted:
// RFC 5321 §4.1.2's qtextSMTP and quoted-pairSMTP cover %d32-126, and RFC
// 6531 §3.3 adds UTF8-non-ascii (RFC 6532 §3.1: valid UTF-8 only). C1
// controls are refused with the C0 ones: they are invisible, and no mail
// store takes them.
func checkLocalChars(local, whole string) error {
	if !utf8.ValidString(local) {
		return addrErr(ErrBadSyntax, "local part of %s is not valid UTF-8 (RFC 6532 section 3.1)", quoteForError(whole))
	}
	for _, r := range local {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
			return addrErr(ErrBadSyntax, "local part of %s contains control character %U", quoteForError(whole), r)
		}
	}
	return nil
}

// idnDomain maps a domain written with U-labels to its A-label form and
// its normalised U-label form, with IDNA's Lookup profile (UTS #46
// mapping, non-transitional: what a mail client or a resolver does with a
// name a person typed, as mox and Postfix's midna do). The A-label form
// must then be a valid host name like any other domain.
func idnDomain(d string) (ascii, unicode string, err error) {
	d = strings.TrimSuffix(d, ".")
	if strings.HasPrefix(d, "[") {
		return "", "", addrErr(ErrBadSyntax, "address literal %s contains non-ASCII characters", quoteForError(d))
	}
	a, ierr := idna.Lookup.ToASCII(d)
	if ierr != nil {
		return "", "", addrErr(ErrBadSyntax, "domain %s is not a valid internationalised domain name (IDNA2008/UTS #46: %s)", quoteForError(d), quoteForError(strings.TrimPrefix(ierr.Error(), "idna: ")))
	}
	if ascii, err = normalizeDomain(a); err != nil {
		return "", "", err
	}
	u, ierr := idna.Lookup.ToUnicode(ascii)
	if ierr != nil {
		return "", "", addrErr(ErrBadSyntax, "domain %s is not a valid internationalised domain name (IDNA2008/UTS #46: %s)", quoteForError(d), quoteForError(strings.TrimPrefix(ierr.Error(), "idna: ")))
	}
	if u == ascii {
		u = ""
	}
	return ascii, u, nil
}

// DomainToASCII returns the form of a domain every comparison and DNS
// lookup uses: lower case, no trailing dot, U-labels as A-labels (IDNA
// Lookup profile). ASCII names are only checked as host names (LDH), not
// by IDNA's stricter label rules, so that names that exist in DNS today
// ("r3--sn-x.example") keep working.
func DomainToASCII(d string) (string, error) {
	if len(d) > 4*maxDomainLen {
		return "", addrErr(ErrTooLong, "domain is %d octets, limit is %d", len(d), maxDomainLen)
	}
	if isASCII(d) {
		return normalizeDomain(d)
	}
	a, _, err := idnDomain(d)
	return a, err
}

// AddressDomain returns the domain of an envelope address (as the queue
// keeps it) in the form DomainToASCII gives, for routing and policy. An
// address that does not parse yields its text after the last '@' in
// lower case, as before IDNA: such an address never got into the queue
// through a listener.
func AddressDomain(addr string) string {
	d := addr[strings.LastIndexByte(addr, '@')+1:]
	if a, err := DomainToASCII(d); err == nil {
		return a
	}
	return strings.TrimSuffix(strings.ToLower(d), ".")
}

// NeedsSMTPUTF8 reports whether an address (as ParseMailbox accepted it)
// has non-ASCII octets: such an address only travels with SMTPUTF8 or, if
// only its domain is non-ASCII, in its A-label form (ASCII).
func NeedsSMTPUTF8(addr string) bool { return !isASCII(addr) }

// ASCII returns the address with its domain in A-labels, the form a next
// hop without SMTPUTF8 may be sent (RFC 6531 §3.2); ok is false when the
// local part is not ASCII, which no such form exists for.
func (a Address) ASCII() (s string, ok bool) {
	if !isASCII(a.Local) {
		return "", false
	}
	return quoteLocal(a.Local) + "@" + a.Domain, true
}

// DowngradeAddress is Address.ASCII for an address as the queue keeps it:
// "" (the null sender) stays "", an ASCII address is returned as is.
func DowngradeAddress(addr string) (string, bool) {
	if isASCII(addr) {
		return addr, true
	}
	a, err := ParseMailbox(addr, true)
	if err != nil {
		return "", false
	}
	return a.ASCII()
}

// ParseDomain validates and normalises an ASCII domain name or address literal
// the way ParseAddress does for the part after '@' (lower case, no
// trailing dot, LDH labels, ErrNotFQDN without a dot). Useful for HELO
// names, configured domains and host names.
func ParseDomain(s string) (string, error) {
	if len(s) > 4*maxDomainLen {
		return "", addrErr(ErrTooLong, "domain is %d octets, limit is %d", len(s), maxDomainLen)
	}
	if !isASCII(s) {
		return "", addrErr(ErrNonASCII, "domain %s contains non-ASCII characters; use its xn-- (A-label) form", quoteForError(s))
	}
	return normalizeDomain(s)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// cutQuotedString reads an RFC 5321 Quoted-string at the start of s and
// returns its unescaped content and the text after the closing quote.
func cutQuotedString(s string) (content, rest string, ok bool) {
	if !strings.HasPrefix(s, `"`) {
		return "", s, false
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], true
		case '\\':
			if i+1 >= len(s) {
				return "", s, false
			}
			i++
			b.WriteByte(s[i])
		default:
			b.WriteByte(c)
		}
	}
	return "", s, false
}

// normalizeDomain lower-cases and checks the domain or address literal.
func normalizeDomain(d string) (string, error) {
	if d == "" {
		return "", addrErr(ErrBadSyntax, "empty domain")
	}
	d = strings.ToLower(d) // ASCII only at this point
	if strings.HasPrefix(d, "[") {
		if err := checkAddressLiteral(d); err != nil {
			return "", err
		}
		return d, nil
	}
	// A single trailing dot is the DNS root; "example.com." and
	// "example.com" are the same domain and must not be two keys.
	d = strings.TrimSuffix(d, ".")
	if err := checkDomainName(d); err != nil {
		return "", err
	}
	return d, nil
}

// checkDomainName validates an RFC 5321 §4.1.2 Domain: dot-separated
// sub-domains of letters, digits and inner hyphens (LDH). A-labels
// ("xn--...") are LDH and pass; underscores are not allowed in host names.
func checkDomainName(d string) error {
	if d == "" {
		return addrErr(ErrBadSyntax, "empty domain")
	}
	if len(d) > maxDomainLen {
		return addrErr(ErrTooLong, "domain is %d octets, limit is %d (RFC 5321 section 4.5.3.1.2)", len(d), maxDomainLen)
	}
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if l == "" {
			return addrErr(ErrBadSyntax, "domain %s has an empty label", quoteForError(d))
		}
		if len(l) > maxLabelLen {
			return addrErr(ErrTooLong, "domain label %s is longer than %d octets", quoteForError(l), maxLabelLen)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return addrErr(ErrBadSyntax, "domain label %s starts or ends with a hyphen", quoteForError(l))
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return addrErr(ErrBadSyntax, "domain %s contains %s; only letters, digits, '-' and '.' are allowed", quoteForError(d), quoteForError(string(c)))
			}
		}
	}
	if len(labels) < 2 {
		return addrErr(ErrNotFQDN, "domain %s has no dot; use the full domain name", quoteForError(d))
	}
	// No top-level domain is all-numeric (RFC 3696 §2); a name like
	// 192.0.2.1 is an IP address written without the brackets of an
	// address literal, which RFC 5321 §4.1.3 requires.
	if tld := labels[len(labels)-1]; strings.Trim(tld, "0123456789") == "" {
		return addrErr(ErrBadSyntax, "domain %s looks like an IP address; write it as an address literal, e.g. [192.0.2.1]", quoteForError(d))
	}
	return nil
}

// checkAddressLiteral accepts the RFC 5321 §4.1.3 IPv4 and IPv6 forms
// (already lower-cased). General-address-literal tags are refused: none is
// registered that we could route to.
func checkAddressLiteral(d string) error {
	if !strings.HasSuffix(d, "]") || len(d) < 3 {
		return addrErr(ErrBadSyntax, "address literal %s is not closed with ']'", quoteForError(d))
	}
	inner := d[1 : len(d)-1]
	if v6, ok := strings.CutPrefix(inner, "ipv6:"); ok {
		ip, err := netip.ParseAddr(v6)
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return addrErr(ErrBadSyntax, "address literal %s is not a valid IPv6 address", quoteForError(d))
		}
		return nil
	}
	ip, err := netip.ParseAddr(inner)
	if err != nil || !ip.Is4() {
		if err == nil && ip.Is6() {
			return addrErr(ErrBadSyntax, "IPv6 address literal %s needs the IPv6: tag, e.g. [IPv6:2001:db8::1]", quoteForError(d))
		}
		return addrErr(ErrBadSyntax, "address literal %s is not a valid IPv4 address", quoteForError(d))
	}
	return nil
}

// IsIPLiteral reports whether the domain is an address literal. Callers
// usually refuse these for recipients: our domains are names, and mail to
// [our-ip] bypasses the per-domain policy.
func (a Address) IsIPLiteral() bool { return strings.HasPrefix(a.Domain, "[") }

// LiteralIP returns the IP address of an address-literal domain.
func (a Address) LiteralIP() (netip.Addr, bool) {
	if !a.IsIPLiteral() || len(a.Domain) < 3 {
		return netip.Addr{}, false
	}
	inner := strings.TrimPrefix(a.Domain[1:len(a.Domain)-1], "ipv6:")
	ip, err := netip.ParseAddr(inner)
	if err != nil {
		return netip.Addr{}, false
	}
	return ip, true
}

// String returns the address in RFC 5321 wire form (without angle
// brackets), quoting the local part when it is not a dot-string, with the
// domain as written (U-labels or A-labels).
func (a Address) String() string {
	if a.UDomain != "" {
		return quoteLocal(a.Local) + "@" + a.UDomain
	}
	return quoteLocal(a.Local) + "@" + a.Domain
}

// Key is a canonical map key, with the domain in A-labels. The local part keeps its case: RFC 5321 §2.4
// says only the destination host may interpret it, and it is formally
// case-sensitive, although most systems (Kopano, OTRS, Postfix lookups)
// fold it. Callers that want case-insensitive recipient lookup fold
// the local part themselves, deliberately.
func (a Address) Key() string { return a.Local + "@" + a.Domain }

// Equal compares by Key.
func (a Address) Equal(b Address) bool { return a.Key() == b.Key() }

// quoteLocal renders a local part as an RFC 5321 Dot-string when it is
// one, else as a Quoted-string (escaping '"' and '\').
func quoteLocal(l string) string {
	if IsDotString(l) {
		return l
	}
	var b strings.Builder
	b.Grow(len(l) + 2)
	b.WriteByte('"')
	for i := 0; i < len(l); i++ {
		if l[i] == '"' || l[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(l[i])
	}
	b.WriteByte('"')
	return b.String()
}

// IsDotString reports whether s is Atom *("." Atom) (RFC 5321 §4.1.2;
// RFC 5322's dot-atom-text): a local part that needs no quoting. UTF-8
// characters count as atext (RFC 6531 §3.3, RFC 6532 §3.2), so "jörg"
// needs no quotes; an ASCII-only caller never sees one.
func IsDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && !isAtext(s[i]) && s[i] < 0x80 {
			return false
		}
	}
	return utf8.ValidString(s)
}

// isAtext: RFC 5322 §3.2.3 atext, which RFC 5321 §4.1.2 uses for Atom.
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// RoutingTrick returns a non-empty reason when the local part contains
// syntax that some MTA downstream of us could treat as a route to another
// host rather than as an opaque mailbox name.
//
// We authorise a recipient by the domain after the last '@' and accept it
// if that domain is ours. The downstream system (Postfix with its default
// allow_percent_hack and swap_bangpath, sendmail, many groupware MTAs)
// may then read "user%other.test@example.com" as "user@other.test",
// "other!user@example.com" as UUCP path other!user, and a quoted
// "user@other" or "@hop:user@other" as a nested address or source route
// (RFC 5321 Appendix C; RFC 2505 asks relays to check for exactly these
// forms). The message would leave through our downstream to a third
// party: an open relay through the back door, with our IP on the
// reputation lists. RFC 5321 §2.3.11 reserves the interpretation of the
// local part to the destination host, so refusing is the only safe option
// for an MX that cannot know how its downstream interprets it; no real
// mailbox needs these characters.
func RoutingTrick(a Address) string {
	l := a.Local
	switch {
	case strings.IndexByte(l, '@') >= 0:
		return "the local part contains '@' (nested address)"
	case strings.IndexByte(l, '%') >= 0:
		return "the local part contains '%' (percent-hack routing)"
	case strings.IndexByte(l, '!') >= 0:
		return "the local part contains '!' (UUCP bang path)"
	case strings.IndexByte(l, ':') >= 0:
		return "the local part contains ':' (source route)"
	case strings.IndexByte(l, ',') >= 0:
		return "the local part contains ',' (address list or source route)"
	}
	return ""
}

// quoteForError makes untrusted text safe and short for error messages
// and SMTP replies: ASCII only, escaped, bounded.
func quoteForError(s string) string {
	const max = 80
	if len(s) > max {
		s = s[:max] + "..."
	}
	return fmt.Sprintf("%+q", s)
}

// MatchDomain reports whether domain (lower case) is matched by pattern as
// Postfix's maps match it: "example.org" that domain, ".example.org" its
// subdomains (not example.org itself).
func MatchDomain(pattern, domain string) bool {
	if strings.HasPrefix(pattern, ".") {
		return strings.HasSuffix(domain, pattern)
	}
	return pattern == domain
}
