package tlspolicy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// check is one certificate check's verdict: Code is empty when it passed.
type check struct {
	Code   Code
	Reason string
	Err    error
}

func (c check) ok() bool { return c.Code == "" }

// pkixCheck verifies the chain against roots (system roots when nil) at
// now, then that the leaf names one of names. A name "example.com" is
// matched with x509's VerifyHostname (RFC 6125 wildcards); ".example.com"
// accepts any DNS name in the certificate under example.com.
func pkixCheck(certs []*x509.Certificate, names []string, roots *x509.CertPool, now time.Time, eku []x509.ExtKeyUsage) check {
	if len(certs) == 0 {
		return check{Code: CodeUntrusted, Reason: "the server sent no certificate"}
	}
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: eku})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return check{Code: CodeExpired, Reason: "certificate expired or not yet valid: " + err.Error(), Err: err}
		}
		return check{Code: CodeUntrusted, Reason: "certificate not trusted: " + err.Error(), Err: err}
	}
	if !nameMatch(leaf, names) {
		return check{Code: CodeNameMismatch, Reason: fmt.Sprintf("certificate name mismatch: it names %s, accepted are %s",
			certNames(leaf), strings.Join(names, " "))}
	}
	return check{}
}

func nameMatch(leaf *x509.Certificate, names []string) bool {
	for _, n := range names {
		if suffix, ok := strings.CutPrefix(n, "."); ok {
			for _, dn := range leaf.DNSNames {
				if strings.HasSuffix(strings.ToLower(strings.TrimSuffix(dn, ".")), "."+suffix) {
					return true
				}
			}
			continue
		}
		if leaf.VerifyHostname(n) == nil {
			return true
		}
	}
	return false
}

func certNames(c *x509.Certificate) string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		return "no DNS name (subject " + c.Subject.String() + ")"
	}
	return strings.Join(names, " ")
}

// usableTLSA keeps the records RFC 7672 §3.1 lets SMTP use: DANE-TA(2)
// and DANE-EE(3), selector Cert(0) or SPKI(1), matching Full(0),
// SHA2-256(1) or SHA2-512(2), with association data of the right size.
// PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP.
func usableTLSA(recs []*dns.TLSA) []*dns.TLSA {
	var out []*dns.TLSA
	for _, r := range recs {
		if r.Usage != 2 && r.Usage != 3 || r.Selector > 1 {
			continue
		}
		data, err := hex.DecodeString(r.Certificate)
		if err != nil || len(data) == 0 {
			continue
		}
		switch r.MatchingType {
		case 0:
		case 1:
			if len(data) != sha256.Size {
				continue
			}
		case 2:
			if len(data) != 64 {
				continue
			}
		default:
			continue
		}
		out = append(out, r)
	}
	return out
}

func tlsaMatches(r *dns.TLSA, c *x509.Certificate) bool {
	got, err := dns.CertificateToDANE(r.Selector, r.MatchingType, c)
	return err == nil && strings.EqualFold(got, r.Certificate)
}

// daneCheck authenticates a chain with usable TLSA records (RFC 7671 §5,
// RFC 7672 §3): a DANE-EE(3) match on the leaf is enough, names and dates
// do not count; a DANE-TA(2) record must match a certificate of the chain
// that then serves as the trust anchor for the usual validation, names
// included. A DANE-TA key that the server does not send in its chain is
// not supported.
func daneCheck(certs []*x509.Certificate, recs []*dns.TLSA, names []string, now time.Time) check {
	if len(certs) == 0 {
		return check{Code: CodeTLSAMismatch, Reason: "the server sent no certificate"}
	}
	for _, r := range recs {
		if r.Usage == 3 && tlsaMatches(r, certs[0]) {
			return check{}
		}
	}
	var taFail *check
	for _, r := range recs {
		if r.Usage != 2 {
			continue
		}
		for i, c := range certs {
			if !tlsaMatches(r, c) {
				continue
			}
			roots := x509.NewCertPool()
			roots.AddCert(c)
			chain := []*x509.Certificate{certs[0]}
			if i > 1 {
				chain = append(chain, certs[1:i]...)
			}
			// Any EKU: RFC 7671 does not ask for serverAuth, and mail
			// servers' private CAs often leave it out.
			res := pkixCheck(chain, names, roots, now, []x509.ExtKeyUsage{x509.ExtKeyUsageAny})
			if res.ok() {
				return res
			}
			taFail = &res
		}
	}
	if taFail != nil {
		taFail.Reason = "TLSA mismatch: a DANE-TA record matches the chain, but " + taFail.Reason
		if taFail.Code == CodeUntrusted {
			taFail.Code = CodeTLSAMismatch
		}
		return *taFail
	}
	return check{Code: CodeTLSAMismatch, Reason: fmt.Sprintf("TLSA mismatch: none of %d usable TLSA records matches the server's certificate chain", len(recs))}
}

// pinCheck matches the leaf's certificate or public key digest.
func pinCheck(certs []*x509.Certificate, pins [][sha256.Size]byte) check {
	if len(certs) == 0 {
		return check{Code: CodeFingerprint, Reason: "the server sent no certificate"}
	}
	leaf := certs[0]
	certSum, keySum := sha256.Sum256(leaf.Raw), sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	for _, p := range pins {
		if p == certSum || p == keySum {
			return check{}
		}
	}
	return check{Code: CodeFingerprint, Reason: fmt.Sprintf("fingerprint mismatch: certificate %s, public key %s, none pinned",
		formatFingerprint(certSum), formatFingerprint(keySum))}
}

func cipherName(id uint16) string { return tls.CipherSuiteName(id) }
