package tlspolicy

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Rule is one entry of the admin's policy list (YAML outbound.tls.policies).
//
// Match selects what the rule applies to:
//
//	partner.example         mail to exactly this recipient domain
//	.partner.example        mail to any domain under partner.example (not itself)
//	host:mx1.provider.net   connections to this next-hop host (MX or relay)
//	host:.provider.net      connections to any host under provider.net
//
// Domain rules win over host rules (the exact domain first, then the
// closest parent), because a rule written for a recipient domain is the
// organisation's promise about that partner, whatever server takes the
// mail. A matching rule decides alone: DANE and MTA-STS are not consulted
// for the level (only REQUIRETLS can still raise it).
type Rule struct {
	Match string
	Level Level
	// Names are accepted in addition to the default reference identities
	// of verify (the MX host), secure (the domain and names under it) and
	// DANE-TA (the MX host and the domain). "example.com" is one name, ".example.com"
	// accepts any name under it. Certificate wildcards follow RFC 6125 as
	// crypto/x509 implements it.
	Names []string
	// Fingerprints pin the server certificate (level fingerprint): each is
	// the SHA-256 of the certificate's DER or of its SubjectPublicKeyInfo
	// (either matches), written as hex with or without colons and with an
	// optional "sha256:" prefix, as Postfix and openssl print it.
	Fingerprints []string
	// MinVersion is the lowest TLS version accepted (tls.VersionTLS12 when
	// zero). For may it is TLS 1.0 unless set: any encryption beats the
	// clear text an opportunistic level falls back to.
	MinVersion uint16
	// Ciphers restricts TLS 1.2 cipher suites (TLS 1.3 suites are all
	// strong and not configurable). Empty means Go's defaults.
	Ciphers []uint16
	// Fallback is carried through to the delivery engine, which decides
	// what happens when the level is not met: "defer" (default), "bounce"
	// or "encrypt" (end-to-end, OpenPGP).
	Fallback string
}

// Fallbacks a Rule may name.
const (
	FallbackDefer   = "defer"
	FallbackBounce  = "bounce"
	FallbackEncrypt = "encrypt"
)

type matchKind int

const (
	matchDomain     matchKind = iota // partner.example
	matchSubdomains                  // .partner.example
	matchHost                        // host:mx.partner.example
	matchHostSuffix                  // host:.partner.example
)

// parseMatch normalises a Match to lower case without trailing dot.
func parseMatch(m string) (matchKind, string, error) {
	s := strings.ToLower(strings.TrimSpace(m))
	kind := matchDomain
	if rest, ok := strings.CutPrefix(s, "host:"); ok {
		s, kind = rest, matchHost
	}
	if rest, ok := strings.CutPrefix(s, "."); ok {
		s = rest
		kind++ // matchDomain→matchSubdomains, matchHost→matchHostSuffix
	}
	s = strings.TrimSuffix(s, ".")
	if strings.HasPrefix(s, "[") || strings.Contains(s, "*") {
		return 0, "", fmt.Errorf("match %q: write a domain (partner.example), its subdomains (.partner.example) or a next-hop host (host:mx.partner.example)", m)
	}
	if err := checkName(s); err != nil {
		return 0, "", fmt.Errorf("match %q: %w", m, err)
	}
	return kind, s, nil
}

// checkName accepts a host name in A-label form.
func checkName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	for _, c := range []byte(s) {
		if c >= 0x80 {
			return errors.New("non-ASCII name; write internationalised names as A-labels (xn--…)")
		}
		if c == ' ' || c == '\\' {
			return errors.New("not a valid domain name")
		}
	}
	if _, ok := dns.IsDomainName(s); !ok || strings.HasPrefix(s, ".") || strings.Contains(s, "..") {
		return errors.New("not a valid domain name")
	}
	return nil
}

// Validate reports contradictions an admin should fix before the rule is
// used; New calls it for every rule. The messages name the field.
func (r Rule) Validate() error {
	if _, _, err := parseMatch(r.Match); err != nil {
		return err
	}
	if r.Level < None || r.Level > Fingerprint {
		return fmt.Errorf("level: missing or invalid (%s)", r.Level)
	}
	if len(r.Names) > 0 {
		switch r.Level {
		case Verify, Secure, Dane, DaneOnly:
		default:
			return fmt.Errorf("names: level %s checks no certificate names; names need verify, secure, dane or dane-only", r.Level)
		}
		for _, n := range r.Names {
			if err := checkName(strings.TrimPrefix(strings.ToLower(n), ".")); err != nil {
				return fmt.Errorf("names: %q: %w", n, err)
			}
		}
	}
	if r.Level == Fingerprint && len(r.Fingerprints) == 0 {
		return errors.New("fingerprints: level fingerprint needs at least one fingerprint")
	}
	if r.Level != Fingerprint && len(r.Fingerprints) > 0 {
		return fmt.Errorf("fingerprints: only level fingerprint uses them (level is %s)", r.Level)
	}
	for _, f := range r.Fingerprints {
		if _, err := ParseFingerprint(f); err != nil {
			return fmt.Errorf("fingerprints: %w", err)
		}
	}
	if r.MinVersion != 0 {
		if r.MinVersion < tls.VersionTLS10 || r.MinVersion > tls.VersionTLS13 {
			return fmt.Errorf("min_version: 0x%04x is not TLS 1.0 to 1.3", r.MinVersion)
		}
		if r.Level == None {
			return errors.New("min_version: level none never uses TLS")
		}
	}
	if len(r.Ciphers) > 0 {
		if r.Level == None {
			return errors.New("ciphers: level none never uses TLS")
		}
		if r.MinVersion == tls.VersionTLS13 {
			return errors.New("ciphers: apply to TLS 1.2 only, but min_version is 1.3")
		}
		if err := checkCiphers(r.Ciphers); err != nil {
			return fmt.Errorf("ciphers: %w", err)
		}
	}
	switch r.Fallback {
	case "":
	case FallbackDefer, FallbackBounce, FallbackEncrypt:
		if r.Level == None || r.Level == May {
			return fmt.Errorf("fallback: level %s never fails, so fallback %s would never apply", r.Level, r.Fallback)
		}
	default:
		return fmt.Errorf("fallback: %q is not defer, bounce or encrypt", r.Fallback)
	}
	return nil
}

// ParseFingerprint reads a SHA-256 fingerprint: 64 hex digits, or 32 hex
// pairs separated by colons, optionally prefixed "sha256:". Case does not
// matter. Older digests are refused rather than ignored, so that a pin
// copied from an old Postfix config does not silently never match.
func ParseFingerprint(s string) ([sha256.Size]byte, error) {
	var out [sha256.Size]byte
	v := strings.TrimSpace(s)
	if alg, rest, ok := strings.Cut(v, ":"); ok && len(alg) > 2 {
		switch strings.ToLower(alg) {
		case "sha256", "sha-256":
			v = rest
		case "sha1", "sha-1", "md5", "sha512", "sha-512":
			return out, fmt.Errorf("fingerprint %q: only SHA-256 fingerprints are supported", s)
		default:
			return out, fmt.Errorf("fingerprint %q: unknown digest %q", s, alg)
		}
	}
	if strings.Contains(v, ":") {
		parts := strings.Split(v, ":")
		for _, p := range parts {
			if len(p) != 2 {
				return out, fmt.Errorf("fingerprint %q: colons must separate pairs of hex digits", s)
			}
		}
		v = strings.Join(parts, "")
	}
	if len(v) != 2*sha256.Size {
		return out, fmt.Errorf("fingerprint %q: want 32 bytes of SHA-256 (64 hex digits), got %d characters", s, len(v))
	}
	if _, err := hex.Decode(out[:], []byte(v)); err != nil {
		return out, fmt.Errorf("fingerprint %q: %w", s, err)
	}
	return out, nil
}

// formatFingerprint is the canonical form, for Explain.
func formatFingerprint(b [sha256.Size]byte) string {
	return "sha256:" + strings.ToUpper(hex.EncodeToString(b[:]))
}
