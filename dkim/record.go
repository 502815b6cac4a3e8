package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// RecordName is the owner name of a key's TXT record (RFC 6376 §3.6.2.1):
// selector + "._domainkey." + domain.
func RecordName(domain, selector string) string {
	return selector + "._domainkey." + domain
}

// TXTRecord is the DNS TXT value publishing pub (RFC 6376 §3.6.1):
// "v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>" for RSA, or
// "v=DKIM1; k=ed25519; p=<base64 of the 32-byte key>" for Ed25519 (RFC 8463
// §4: the raw key, not wrapped in SubjectPublicKeyInfo).
func TXTRecord(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return "", fmt.Errorf("dkim: encoding RSA public key: %w", err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return "", fmt.Errorf("dkim: Ed25519 public key has %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k), nil
	}
	return "", fmt.Errorf("dkim: public key type %T is not usable for DKIM", pub)
}

// maxTXTString is the longest character-string in a TXT RDATA (RFC 1035
// §3.3: one length octet). Longer values are published as several strings
// of one record, which verifiers concatenate (RFC 6376 §3.6.2.2).
const maxTXTString = 255

// ZoneEntry renders a master-file line for the key record:
//
//	selector._domainkey.domain. IN TXT "v=DKIM1; ..."
//
// or, when txt is longer than 255 octets, the value split into strings of
// at most 255 octets inside parentheses, one per line, as zone files and
// most DNS hosting panels accept it.
func ZoneEntry(domain, selector, txt string) string {
	owner := RecordName(strings.TrimSuffix(domain, "."), selector) + "."
	var chunks []string
	for len(txt) > maxTXTString {
		chunks = append(chunks, txt[:maxTXTString])
		txt = txt[maxTXTString:]
	}
	chunks = append(chunks, txt)
	if len(chunks) == 1 {
		return owner + " IN TXT " + quoteTXT(chunks[0])
	}
	var b strings.Builder
	b.WriteString(owner + " IN TXT ( " + quoteTXT(chunks[0]))
	for _, c := range chunks[1:] {
		b.WriteString("\n\t" + quoteTXT(c))
	}
	b.WriteString(" )")
	return b.String()
}

// quoteTXT quotes one character-string for a master file (RFC 1035 §5.1):
// '"' and '\' are escaped, non-printable octets written as \DDD.
func quoteTXT(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c >= 0x7f:
			fmt.Fprintf(&b, "\\%03d", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// CheckResult is the outcome of comparing a published key record with a
// private key.
type CheckResult int

const (
	// CheckOK: the single DKIM1 record publishes exactly this key.
	CheckOK CheckResult = iota
	// CheckMissing: no TXT record at the name.
	CheckMissing
	// CheckMismatch: a well-formed DKIM1 record publishes another key.
	CheckMismatch
	// CheckMalformed: TXT data but no parsable DKIM1 record, p= not a
	// key, k= not the key's type, h=/s= excluding this use, or several
	// key records.
	CheckMalformed
	// CheckRevoked: the record has an empty p= (RFC 6376 §3.6.1).
	CheckRevoked
)

func (c CheckResult) String() string {
	switch c {
	case CheckOK:
		return "ok"
	case CheckMissing:
		return "missing"
	case CheckMismatch:
		return "mismatch"
	case CheckMalformed:
		return "malformed"
	case CheckRevoked:
		return "revoked"
	}
	return fmt.Sprintf("CheckResult(%d)", int(c))
}

// CheckRecord compares the TXT data published at the key's record name
// with pub and says whether receivers will find this key there.
//
// txts is what a resolver returned, one element per TXT record with the
// record's strings already concatenated (as net.LookupTXT does; RFC 6376
// §3.6.2.2). A caller that passes the strings of one record as separate
// elements is tolerated: if no element alone is a usable key record but
// their concatenation is, it is taken as one record.
//
// Several key records at one name are CheckMalformed: RFC 6376 §3.6.2.2
// leaves the result undefined, and verifiers differ (go-msgauth fails
// them all).
func CheckRecord(txts []string, pub crypto.PublicKey) (CheckResult, string) {
	alg := algorithmOf(pub)
	if alg == "" {
		return CheckMalformed, fmt.Sprintf("private key type %T is not usable for DKIM", pub)
	}
	var records []string
	for _, t := range txts {
		if looksLikeKeyRecord(t) {
			records = append(records, t)
		}
	}
	if len(txts) > 1 {
		usable := false
		for _, t := range records {
			if _, _, err := parseKeyRecord(t); err == nil {
				usable = true
			}
		}
		joined := strings.Join(txts, "")
		if _, _, err := parseKeyRecord(joined); !usable && err == nil {
			records = []string{joined}
		}
	}
	switch len(records) {
	case 0:
		if len(txts) == 0 {
			return CheckMissing, "no TXT record published"
		}
		return CheckMalformed, fmt.Sprintf("%d TXT record(s) published, none is a DKIM1 key record", len(txts))
	case 1:
	default:
		return CheckMalformed, fmt.Sprintf("%d DKIM key records published at one name; verifiers may pick any or fail (RFC 6376 §3.6.2.2): keep exactly one", len(records))
	}

	tags, published, err := parseKeyRecord(records[0])
	if errors.Is(err, errRevoked) {
		return CheckRevoked, "key revoked: empty p= (RFC 6376 §3.6.1)"
	}
	if err != nil {
		return CheckMalformed, err.Error()
	}
	k := tags["k"]
	if k == "" {
		k = "rsa" // RFC 6376 §3.6.1: k= defaults to rsa
	}
	want := "rsa"
	if alg == AlgEd25519SHA256 {
		want = "ed25519"
	}
	if k != want {
		return CheckMalformed, fmt.Sprintf("record says k=%s but the private key is %s", k, want)
	}
	if !sameKey(published, pub) {
		return CheckMismatch, fmt.Sprintf("published key %s differs from the private key %s", fingerprint(published), fingerprint(pub))
	}
	detail := "published record matches the private key " + fingerprint(pub)
	if hasFlag(tags["t"], "y") {
		detail += "; t=y: the domain is testing DKIM, verifiers may ignore failures (RFC 6376 §3.6.1)"
	}
	return CheckOK, detail
}

var errRevoked = errors.New("key revoked")

// looksLikeKeyRecord separates key records from other TXT data that may
// share the name: a DKIM1 record starts with v=DKIM1 (RFC 6376 §3.6.1: v=,
// if present, MUST be first) or, lacking v=, carries a p= tag.
func looksLikeKeyRecord(s string) bool {
	t := strings.TrimLeft(s, " \t\r\n")
	if strings.HasPrefix(t, "v=") || strings.HasPrefix(t, "v =") {
		return true
	}
	tags, err := parseTagList(s)
	if err != nil {
		return strings.Contains(s, "p=")
	}
	_, ok := tags["p"]
	return ok
}

// parseKeyRecord parses a key record (RFC 6376 §3.6.1) and decodes its
// p= into an *rsa.PublicKey or ed25519.PublicKey.
func parseKeyRecord(s string) (map[string]string, crypto.PublicKey, error) {
	tags, err := parseTagList(s)
	if err != nil {
		return nil, nil, err
	}
	if v, ok := tags["v"]; ok {
		if v != "DKIM1" {
			return nil, nil, fmt.Errorf("v=%s: only DKIM1 is defined (RFC 6376 §3.6.1)", v)
		}
		if !strings.HasPrefix(strings.TrimLeft(s, " \t\r\n"), "v") {
			return nil, nil, errors.New("v= is not the first tag (RFC 6376 §3.6.1)")
		}
	}
	if h, ok := tags["h"]; ok && !hasFlag(h, "sha256") {
		return nil, nil, fmt.Errorf("h=%s excludes sha256, the only hash the relay signs with", h)
	}
	if sv, ok := tags["s"]; ok && !hasFlag(sv, "email") && !hasFlag(sv, "*") {
		return nil, nil, fmt.Errorf("s=%s excludes email", sv)
	}
	p, ok := tags["p"]
	if !ok {
		return nil, nil, errors.New("no p= tag (RFC 6376 §3.6.1 requires it)")
	}
	p = stripFWS(p)
	if p == "" {
		return tags, nil, errRevoked
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, nil, fmt.Errorf("p= is not valid base64: %v", err)
	}
	switch k := tags["k"]; k {
	case "", "rsa":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// RFC 6376 §3.6.1 says RSAPublicKey but its examples and
			// every implementation use SubjectPublicKeyInfo (erratum
			// 3017); accept the bare form as verifiers do.
			rk, err2 := x509.ParsePKCS1PublicKey(der)
			if err2 != nil {
				return nil, nil, fmt.Errorf("p= is not an RSA public key: %v", err)
			}
			return tags, rk, nil
		}
		rk, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, nil, fmt.Errorf("p= holds a %T key, not RSA", pub)
		}
		return tags, rk, nil
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, nil, fmt.Errorf("p= holds %d bytes; an Ed25519 key is %d (RFC 8463 §4)", len(der), ed25519.PublicKeySize)
		}
		return tags, ed25519.PublicKey(der), nil
	default:
		return nil, nil, fmt.Errorf("k=%s is not a key type the relay signs with", k)
	}
}

// parseTagList parses a tag=value list (RFC 6376 §3.2): names are
// case-sensitive, whitespace around names and values is ignored, a
// trailing ";" is allowed, duplicate tags are an error.
func parseTagList(s string) (map[string]string, error) {
	tags := map[string]string{}
	for spec := range strings.SplitSeq(s, ";") {
		if strings.TrimSpace(spec) == "" {
			continue
		}
		name, value, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("malformed tag %q (want name=value; RFC 6376 §3.2)", strings.TrimSpace(spec))
		}
		name = strings.TrimSpace(name)
		if name == "" {
			return nil, fmt.Errorf("empty tag name in %q", strings.TrimSpace(spec))
		}
		if _, dup := tags[name]; dup {
			return nil, fmt.Errorf("duplicate tag %s= (RFC 6376 §3.2)", name)
		}
		tags[name] = strings.TrimSpace(value)
	}
	return tags, nil
}

// hasFlag reports whether the colon-separated list contains want.
func hasFlag(list, want string) bool {
	for f := range strings.SplitSeq(list, ":") {
		if strings.EqualFold(strings.TrimSpace(f), want) {
			return true
		}
	}
	return false
}

func stripFWS(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}

func sameKey(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// fingerprint is a short SHA-256 of the public key as published, so that
// a detail message lets an operator tell keys apart.
func fingerprint(pub crypto.PublicKey) string {
	var der []byte
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, _ = x509.MarshalPKIXPublicKey(k)
	case ed25519.PublicKey:
		der = k
	default:
		return "(unknown key)"
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:8])
}
