package encrypt

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"

	"securerelay/smtputil"
)

// recipient is a parsed recipient address with the spellings the key
// sources need.
type recipient struct {
	local  string // as given (case kept: RFC 5321 local parts are case-sensitive)
	domain string // lower case, no trailing dot, A-labels (smtputil.ParseMailbox)
	// key compares addresses with user IDs and names cache entries: the
	// whole address in lower case, as gpg and WKD match them.
	key string
}

func parseRecipient(s string) (recipient, error) {
	// Addresses from an SMTPUTF8 message: the key sources look the
	// domain up in its A-label form (WKD host, OPENPGPKEY owner name).
	a, err := smtputil.ParseMailbox(s, true)
	if err != nil {
		return recipient{}, fmt.Errorf("recipient %q: %w", s, err)
	}
	if a.IsIPLiteral() {
		return recipient{}, fmt.Errorf("recipient %q: an address literal has no key directory", s)
	}
	return recipient{local: a.Local, domain: a.Domain, key: strings.ToLower(a.Local) + "@" + a.Domain}, nil
}

func (r recipient) String() string { return r.local + "@" + r.domain }

// zbase32 is z-base-32 (the WKD draft, section 3.1, after Zooko's
// "human-oriented base-32 encoding"). For a SHA-1 digest (160 bits, a
// multiple of 5) it is exactly RFC 4648 base32 with this alphabet and no
// padding, so the standard library's encoder does the work.
var zbase32 = base32.NewEncoding("ybndrfg8ejkmcpqxot1uwisza345h769").WithPadding(base32.NoPadding)

// wkdHash is the hashed local part of a WKD URL: ASCII upper case mapped
// to lower case (other characters unchanged), SHA-1, z-base-32.
func wkdHash(local string) string {
	sum := sha1.Sum([]byte(asciiLower(local)))
	return zbase32.EncodeToString(sum[:])
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// wkdURLs returns the advanced and the direct WKD URL for r (WKD draft
// section 3.1). The l parameter carries the local part as given, so a
// server that maps names itself can.
func wkdURLs(r recipient) (advanced, direct string) {
	path := "/hu/" + wkdHash(r.local) + "?l=" + url.QueryEscape(r.local)
	advanced = "https://openpgpkey." + r.domain + "/.well-known/openpgpkey/" + r.domain + path
	direct = "https://" + r.domain + "/.well-known/openpgpkey" + path
	return advanced, direct
}

// openpgpkeyName is the owner name of r's OPENPGPKEY records (RFC 7929
// section 3): the SHA2-256 of the local part, truncated to 28 octets, in
// hex, under _openpgpkey of the domain.
func openpgpkeyName(local, domain string) string {
	sum := sha256.Sum256([]byte(local))
	return hex.EncodeToString(sum[:28]) + "._openpgpkey." + domain
}

// WKDURLs returns the advanced and the direct WKD URL of address, for
// "encrypt lookup" to show where it looked.
func WKDURLs(address string) (advanced, direct string, err error) {
	r, err := parseRecipient(address)
	if err != nil {
		return "", "", err
	}
	advanced, direct = wkdURLs(r)
	return advanced, direct, nil
}

// OPENPGPKEYName returns the DNS name of address's OPENPGPKEY records.
func OPENPGPKEYName(address string) (string, error) {
	r, err := parseRecipient(address)
	if err != nil {
		return "", err
	}
	return openpgpkeyName(r.local, r.domain), nil
}
