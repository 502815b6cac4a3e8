package dkim

import (
	"bufio"
	"bytes"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// DefaultHeaders are the header fields signed when present (RFC 6376
// §5.4.1's recommendation, the fields a reader sees or a client threads and
// renders by). An entry ending in "*" is a prefix: "List-*" signs every
// List-Id, List-Unsubscribe, List-Unsubscribe-Post, … present (RFC 2369,
// RFC 2919, RFC 8058). From is always signed, listed or not (RFC 6376
// §5.4: it MUST be).
var DefaultHeaders = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date",
	"Message-ID", "In-Reply-To", "References",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-*",
}

// DefaultOversign are the fields over-signed: h= names each one once more
// than the message has (once even when absent), so that a field of that
// name added after signing breaks the signature (RFC 6376 §5.4.2, §8.15)
// instead of sitting unsigned above the signed one, where most readers
// display it. These are the fields whose forged addition changes who the
// mail seems to come from, who it went to, what it says, or how its body
// is rendered.
//
// Date and Message-ID are deliberately not over-signed by default: mail
// from scripts and appliances often lacks them and hops downstream add
// them (RFC 5321 §6.4 tolerates it), which over-signing would turn into a
// failed signature. From is over-signed even when not listed.
var DefaultOversign = []string{
	"From", "Sender", "Reply-To", "To", "Cc", "Subject",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
}

// Options for signing. The zero value signs relaxed/relaxed with
// DefaultHeaders and DefaultOversign and no expiry.
type Options struct {
	// "relaxed" (default) or "simple" (RFC 6376 §3.4). relaxed/relaxed
	// survives the whitespace and folding changes common on the way.
	HeaderCanonicalization, BodyCanonicalization string
	// Over-signed field names (see DefaultOversign; nil means it). From
	// is always over-signed. Names not in Headers are signed as well.
	// An empty non-nil slice over-signs only From.
	Oversign []string
	// Field names signed when present (see DefaultHeaders; nil means it),
	// case-insensitive; a trailing "*" makes a prefix match.
	Headers []string
	// Signature lifetime: x= is Now()+Expiration (RFC 6376 §3.5). Zero
	// means no x=. Keep it comfortably longer than the queue's maximum
	// age, since a receiver treats an expired signature as none.
	Expiration time.Duration
	// IdentityFromHeader sets i= (the AUID, RFC 6376 §3.5) to the From:
	// address when its domain is the signing domain or a subdomain of it
	// and its local part needs no quoting; otherwise i= is left out, which
	// means "@d=" (the default). Receivers that show the signer, and
	// reputation systems that track users, see who sent the message.
	IdentityFromHeader bool
	// Clock for x=; default time.Now. go-msgauth writes t= from its own
	// clock (the real time), so a Now far from the real time gives an
	// x= that verifiers reject as not after t=.
	Now func() time.Time
}

func (o Options) canonicalization(v, which string) (msgauth.Canonicalization, error) {
	switch strings.ToLower(v) {
	case "", "relaxed":
		return msgauth.CanonicalizationRelaxed, nil
	case "simple":
		return msgauth.CanonicalizationSimple, nil
	}
	return "", fmt.Errorf("dkim: unknown %s canonicalization %q (want relaxed or simple)", which, v)
}

// Sign reads the whole message from r once and returns one DKIM-Signature
// header field per key, in the order of keys: result[i] is keys[i]'s. Each
// is complete ("DKIM-Signature: …", folded, ending in CRLF). Prepend them
// in the returned order: result[0] becomes the topmost field. RFC 6376
// §5.6 has the last-added signature on top, but the order among these has
// no cryptographic meaning: none of them covers another (DKIM-Signature is
// never in h=), so each verifies wherever it sits above the message.
//
// The message should be CRLF-terminated as it goes on the wire; bare LF
// line ends are tolerated and signed as CRLF (which is what SMTP
// transmits). The header is buffered (at most MaxHeaderBytes) to decide
// the h= list; the body is streamed to every key's signer.
//
// A message without exactly one From field is refused: RFC 5322 §3.6
// requires one, RFC 6376 §5.4 requires signing it, and a verifier facing
// several From fields rejects the message (RFC 6376 §8.15).
func Sign(r io.Reader, keys []Key, o Options) ([]string, error) {
	if len(keys) == 0 {
		return nil, errors.New("dkim: no signing keys")
	}
	headerCan, err := o.canonicalization(o.HeaderCanonicalization, "header")
	if err != nil {
		return nil, err
	}
	bodyCan, err := o.canonicalization(o.BodyCanonicalization, "body")
	if err != nil {
		return nil, err
	}
	if o.Expiration < 0 {
		return nil, fmt.Errorf("dkim: negative expiration %v", o.Expiration)
	}
	var expires time.Time
	if o.Expiration > 0 {
		now := time.Now
		if o.Now != nil {
			now = o.Now
		}
		// x= has one-second resolution; round up so the signature is
		// never shorter-lived than configured.
		expires = now().Add(o.Expiration + time.Second - 1).Truncate(time.Second)
	}
	for _, n := range slices.Concat(o.Headers, o.Oversign) {
		if !plainName(strings.TrimSuffix(n, "*")) {
			return nil, fmt.Errorf("dkim: %q is not a header field name usable in h=", n)
		}
	}
	for _, k := range keys {
		if err := checkKey(k); err != nil {
			return nil, err
		}
	}

	br := bufio.NewReaderSize(r, 64<<10)
	header, err := readHeader(br, MaxHeaderBytes)
	if err != nil {
		return nil, err
	}
	fields := parseFields(header)
	nFrom := 0
	for _, f := range fields {
		if strings.EqualFold(f.name, "From") {
			nFrom++
		}
	}
	if nFrom != 1 {
		return nil, fmt.Errorf("dkim: message has %d From: fields; RFC 5322 §3.6 requires exactly one", nFrom)
	}
	hkeys := headerList(fields, o.Headers, o.Oversign)
	var from string
	if o.IdentityFromHeader {
		from, _ = FromAddress(header)
	}

	signers := make([]*msgauth.Signer, 0, len(keys))
	writers := make([]io.Writer, 0, len(keys))
	defer func() {
		// Close is idempotent; this frees the signing goroutines of
		// go-msgauth on every error path.
		for _, s := range signers {
			_ = s.Close()
		}
	}()
	for _, k := range keys {
		s, err := msgauth.NewSigner(&msgauth.SignOptions{
			Domain:                 k.Domain,
			Selector:               k.Selector,
			Signer:                 k.Signer,
			HeaderCanonicalization: headerCan,
			BodyCanonicalization:   bodyCan,
			HeaderKeys:             hkeys,
			Expiration:             expires,
			Identifier:             identity(from, k.Domain),
		})
		if err != nil {
			return nil, fmt.Errorf("dkim: %s/%s: %w", k.Domain, k.Selector, err)
		}
		signers = append(signers, s)
		writers = append(writers, s)
	}
	w := io.MultiWriter(writers...)
	if _, err := w.Write(header); err != nil {
		return nil, fmt.Errorf("dkim: signing: %w", err)
	}
	if !headerComplete(header) {
		// The message is all header (RFC 5322 §3.5 makes the body
		// optional). go-msgauth insists on the empty line, which is not
		// part of what is hashed (RFC 6376 §3.7), so supply it.
		end := "\r\n"
		if len(header) > 0 && header[len(header)-1] != '\n' {
			end = "\r\n\r\n"
		}
		if _, err := io.WriteString(w, end); err != nil {
			return nil, fmt.Errorf("dkim: signing: %w", err)
		}
	}
	if _, err := br.WriteTo(w); err != nil {
		return nil, fmt.Errorf("dkim: signing: %w", err)
	}
	sigs := make([]string, len(signers))
	for i, s := range signers {
		if err := s.Close(); err != nil {
			return nil, fmt.Errorf("dkim: %s/%s: %w", keys[i].Domain, keys[i].Selector, err)
		}
		sigs[i] = s.Signature()
		if err := checkLineLengths(sigs[i]); err != nil {
			return nil, err
		}
	}
	return sigs, nil
}

// checkKey refuses keys LoadKey would have refused, for Keys built in
// code, and keys without the names a signature needs.
func checkKey(k Key) error {
	if k.Domain == "" || k.Selector == "" {
		return fmt.Errorf("dkim: key %q needs a domain and a selector", k.Path)
	}
	if k.Signer == nil {
		return fmt.Errorf("dkim: key %s/%s has no signer", k.Domain, k.Selector)
	}
	switch pub := k.Signer.Public().(type) {
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < MinRSABits {
			return fmt.Errorf("dkim: key %s/%s: RSA key has %d bits; at least %d are required (RFC 8301 §3.2)", k.Domain, k.Selector, bits, MinRSABits)
		}
	default:
		if k.Algorithm() == "" {
			return fmt.Errorf("dkim: key %s/%s: key type %T is not usable for DKIM", k.Domain, k.Selector, pub)
		}
	}
	return nil
}

func headerComplete(h []byte) bool {
	return bytes.HasSuffix(h, []byte("\n\n")) || bytes.HasSuffix(h, []byte("\n\r\n")) ||
		string(h) == "\r\n" || string(h) == "\n"
}

// checkLineLengths guards RFC 5322 §2.1.1's 998-octet line limit: an h=
// list go-msgauth cannot fold (it writes a tag value on one line) would
// otherwise produce a field that SMTP servers reject or break.
func checkLineLengths(sig string) error {
	for line := range strings.SplitSeq(sig, "\r\n") {
		if len(line) > 998 {
			return fmt.Errorf("dkim: DKIM-Signature line of %d octets exceeds 998 (too many signed header fields)", len(line))
		}
	}
	return nil
}

// headerList computes the h= list for a message with the given fields:
// each present field matched by headers (DefaultHeaders if nil) is named
// once per occurrence, and each name matched by oversign (DefaultOversign
// if nil; From always) once more, also when absent. Verifiers pick
// instances from the bottom up (RFC 6376 §5.4.2), so the extra name
// matches only a field added later, on top, which then breaks the
// signature.
func headerList(fields []field, headers, oversign []string) []string {
	if headers == nil {
		headers = DefaultHeaders
	}
	if oversign == nil {
		oversign = DefaultOversign
	}
	count := map[string]int{}
	var present []string // distinct present names, in header order
	for _, f := range fields {
		l := strings.ToLower(f.name)
		if count[l] == 0 {
			present = append(present, f.name)
		}
		count[l]++
	}
	over := func(name string) bool {
		if strings.EqualFold(name, "From") {
			return true
		}
		for _, p := range oversign {
			if matchName(p, name) {
				return true
			}
		}
		return false
	}
	var h []string
	done := map[string]bool{}
	add := func(name string) {
		l := strings.ToLower(name)
		if done[l] {
			return
		}
		done[l] = true
		for range count[l] {
			h = append(h, name)
		}
		if over(name) {
			h = append(h, name)
		}
	}
	visit := func(pattern string) {
		if strings.HasSuffix(pattern, "*") {
			for _, name := range present {
				if matchName(pattern, name) && plainName(name) {
					add(name)
				}
			}
			return
		}
		if pattern != "" {
			add(pattern)
		}
	}
	visit("From")
	for _, p := range headers {
		visit(p)
	}
	for _, p := range oversign {
		visit(p)
	}
	return h
}

// plainName limits names taken from the message into h= to letters,
// digits, '-', '_' and '.': RFC 5322 field names may contain ';' and
// other characters that would break the tag list (RFC 6376 §3.2).
func plainName(name string) bool {
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return name != ""
}

func matchName(pattern, name string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return len(name) >= len(prefix) && strings.EqualFold(name[:len(prefix)], prefix)
	}
	return strings.EqualFold(pattern, name)
}

// identity is the i= for a From: address and a signing domain, or "" (no
// i=) when the address is not in that domain or its subdomains (i= would
// make the signature invalid, RFC 6376 §3.5) or its local part would need
// quoting in a tag value.
func identity(from, domain string) string {
	at := strings.LastIndexByte(from, '@')
	if from == "" || at <= 0 {
		return ""
	}
	local := from[:at]
	dom, err := asciiDomain(from[at+1:])
	if err != nil {
		return ""
	}
	domain = strings.ToLower(domain)
	if dom != domain && !strings.HasSuffix(dom, "."+domain) {
		return ""
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+/=?^_`{|}~.-", c) >= 0) {
			return ""
		}
	}
	return local + "@" + dom
}
