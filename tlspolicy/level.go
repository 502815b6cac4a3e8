package tlspolicy

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
)

// Level is the TLS requirement for a delivery, named as Postfix's
// smtp_tls_policy_maps names it so that admins recognise it. The order of
// the constants is not a strength order beyond Encrypt: dane and verify
// prove different things. Use RequiresTLS and Authenticates to compare.
type Level int

// The zero Level is unset, so that a rule or option that forgot its level
// is an error instead of silently meaning none.
const (
	// None never uses STARTTLS.
	None Level = iota + 1
	// May uses STARTTLS when offered and falls back to clear text when it
	// is not offered or the handshake fails (RFC 7435 opportunistic).
	May
	// Encrypt requires TLS but does not check the certificate.
	Encrypt
	// Dane uses DANE TLSA records (RFC 7672) when the MX host has
	// DNSSEC-validated ones, and is May otherwise.
	Dane
	// Verify requires TLS with a certificate that chains to a trusted root
	// and names the MX host (or one of the policy's names).
	Verify
	// Secure is Verify, but the name must be the destination domain or a
	// name under it (or one of the policy's names), which a forged MX
	// answer cannot satisfy.
	Secure
	// DaneOnly requires usable DNSSEC-validated TLSA records and a match.
	DaneOnly
	// Fingerprint requires the server certificate or its public key to
	// have one of the pinned SHA-256 digests; nothing else is checked.
	Fingerprint
)

var levelNames = [...]string{"none", "may", "encrypt", "dane", "verify", "secure", "dane-only", "fingerprint"}

func (l Level) String() string {
	if l >= None && l <= Fingerprint {
		return levelNames[l-1]
	}
	if l == 0 {
		return "unset"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// ParseLevel accepts the Postfix names, case-insensitively.
func ParseLevel(s string) (Level, error) {
	if i := slices.Index(levelNames[:], strings.ToLower(strings.TrimSpace(s))); i >= 0 {
		return Level(i + 1), nil
	}
	return 0, fmt.Errorf("unknown TLS level %q (want one of %s)", s, strings.Join(levelNames[:], ", "))
}

// MarshalText and UnmarshalText let configuration decoders read levels.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseLevel.
func (l *Level) UnmarshalText(b []byte) error {
	v, err := ParseLevel(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// authenticates reports whether a level checks the server's identity
// (chain and name, TLSA or pin), as REQUIRETLS demands. Dane counts: it
// becomes May without TLSA records, and ForMX raises that host then.
func (l Level) authenticates() bool { return l >= Dane }

// ParseVersion reads a TLS version as admins write it: "1.2", "TLS1.2",
// "TLSv1.2" or "TLS 1.2". SSL 3.0 and older are not versions we speak.
func ParseVersion(s string) (uint16, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	v = strings.TrimPrefix(v, "tls")
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	switch v {
	case "1.0", "1":
		return tls.VersionTLS10, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("unknown TLS version %q (want 1.0, 1.1, 1.2 or 1.3)", s)
}

// versionName gives "TLS 1.2" for logs and DSNs.
func versionName(v uint16) string { return tls.VersionName(v) }

// ParseCipherSuites maps IANA/Go suite names ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
// to IDs. Only suites Go considers secure are accepted: a restriction that
// lets weak suites in would be a configuration error, not a policy.
// TLS 1.3 suites are not configurable in Go and are rejected as such.
func ParseCipherSuites(names []string) ([]uint16, error) {
	var ids []uint16
	for _, n := range names {
		id, err := parseCipher(n)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func parseCipher(name string) (uint16, error) {
	n := strings.TrimSpace(name)
	for _, cs := range tls.CipherSuites() {
		if strings.EqualFold(cs.Name, n) {
			if !slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
				return 0, fmt.Errorf("cipher suite %s is a TLS 1.3 suite, which cannot be restricted (TLS 1.3 has only strong suites)", cs.Name)
			}
			return cs.ID, nil
		}
	}
	for _, cs := range tls.InsecureCipherSuites() {
		if strings.EqualFold(cs.Name, n) {
			return 0, fmt.Errorf("cipher suite %s is insecure and cannot be required", cs.Name)
		}
	}
	return 0, fmt.Errorf("unknown cipher suite %q", name)
}

// checkCiphers validates IDs given directly in a Rule.
func checkCiphers(ids []uint16) error {
	for _, id := range ids {
		if _, err := parseCipher(tls.CipherSuiteName(id)); err != nil {
			return err
		}
	}
	return nil
}
