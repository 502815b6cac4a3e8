package tlspolicy

import (
	"fmt"
	"strings"
)

// Code names why a connection did not meet its level, for logs, metrics,
// the queue entry and tests. The values are stable.
type Code string

const (
	CodeNoSTARTTLS   Code = "no-starttls"   // STARTTLS not offered (or not used)
	CodeHandshake    Code = "handshake"     // the TLS handshake failed
	CodeVersion      Code = "tls-version"   // below the minimum TLS version
	CodeCipher       Code = "cipher"        // cipher suite not in the allowed list
	CodeUntrusted    Code = "untrusted"     // chain does not lead to a trusted root
	CodeExpired      Code = "expired"       // certificate expired or not yet valid
	CodeNameMismatch Code = "name-mismatch" // certificate does not name an accepted identity
	CodeTLSAMismatch Code = "tlsa-mismatch" // no TLSA record matches the chain
	CodeNoTLSA       Code = "no-tlsa"       // dane-only without usable DNSSEC-validated TLSA
	CodeFingerprint  Code = "fingerprint-mismatch"
	// CodeMXNotAllowed: MTA-STS enforce and the MX host matches no mx
	// pattern, or DANE applies and the host is not in the validated MX RRset.
	CodeMXNotAllowed Code = "mx-not-allowed"
	// CodeMXNotAuthenticated: REQUIRETLS needs an MX from DNSSEC or MTA-STS.
	CodeMXNotAuthenticated Code = "mx-not-authenticated"
	// CodeNoRequireTLS: the server does not advertise REQUIRETLS.
	CodeNoRequireTLS Code = "requiretls-not-offered"
	// CodeDNS: a DNSSEC lookup the decision depends on failed temporarily.
	CodeDNS Code = "dns"
)

// origin says who asked for the level, which decides the DSN wording.
type origin int

const (
	originDefault origin = iota
	originRule
	originDANE
	originSTS
	originRequireTLS
)

// String names the origin for Outcome.Origin (a metric label).
func (o origin) String() string {
	switch o {
	case originRule:
		return "rule"
	case originDANE:
		return "dane"
	case originSTS:
		return "mta-sts"
	case originRequireTLS:
		return "requiretls"
	}
	return "default"
}

// Failure says that a connection (or an MX host, before connecting) does
// not meet the required level. No message data may be sent when a Check
// returns one. The delivery engine decides from Fallback and Temporary
// what to do: try the next MX, defer, bounce or encrypt end to end.
type Failure struct {
	Code   Code
	Reason string // for the log: "certificate name mismatch: …"
	Domain string // recipient domain
	Host   string // next-hop host
	Level  Level  // the level that was required
	Source string // where the level came from (HostPolicy.Source)
	// Fallback is the rule's fallback ("" when no rule set one).
	Fallback string
	// Temporary is set when the cause is a failed lookup that may succeed
	// later without anyone changing anything (DNS), as opposed to what the
	// receiving side offers.
	Temporary bool
	Err       error // underlying error, if any
	// Explain is set by ForMX and ForRelay: the steps that led to refusing
	// the host, as HostPolicy.Explain would have listed them.
	Explain []string

	origin origin
}

func (f *Failure) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "TLS policy %s for %s not met", f.Level, f.Domain)
	if f.Host != "" {
		fmt.Fprintf(&b, " by %s", f.Host)
	}
	if f.Source != "" {
		fmt.Fprintf(&b, " (from %s)", f.Source)
	}
	b.WriteString(": ")
	b.WriteString(f.Reason)
	return b.String()
}

func (f *Failure) Unwrap() error { return f.Err }

// Status is the enhanced status code (RFC 3463) for a reply or DSN, with
// class 5 when permanent is set, else 4.
func (f *Failure) Status(permanent bool) string {
	class := "4"
	if permanent {
		class = "5"
	}
	switch f.Code {
	case CodeNoSTARTTLS, CodeHandshake, CodeVersion, CodeCipher:
		return class + ".7.10" // encryption needed
	case CodeNoRequireTLS:
		return class + ".7.30" // REQUIRETLS support required (RFC 8689)
	case CodeDNS:
		return class + ".4.3" // directory server failure
	}
	return class + ".7.5" // cryptographic failure: the peer could not be authenticated
}

// UserText is one sentence for the end user, in a DSN: what went wrong,
// in words without protocol jargon where possible.
func (f *Failure) UserText() string {
	server := "the receiving mail server"
	if f.Host != "" {
		server += " (" + f.Host + ")"
	}
	if f.origin == originRule {
		server = "the partner's mail server"
		if f.Host != "" {
			server += " (" + f.Host + ")"
		}
	}
	var required string
	switch f.origin {
	case originRule, originDefault:
		required = "the encryption that your organisation requires for " + f.Domain
	case originDANE:
		required = "the encryption that " + f.Domain + " requires through its DANE records"
	case originSTS:
		required = "the encryption that " + f.Domain + " requires through its MTA-STS policy"
	case originRequireTLS:
		required = "the verified encryption that the sender required for this message (REQUIRETLS)"
	}
	switch f.Code {
	case CodeNoSTARTTLS:
		return server + " did not offer " + required + "."
	case CodeHandshake:
		return server + " could not set up " + required + "."
	case CodeVersion:
		return server + " only offers outdated encryption (an old TLS version), weaker than " + required + "."
	case CodeCipher:
		return server + " only offers encryption methods weaker than " + required + "."
	case CodeUntrusted, CodeExpired, CodeNameMismatch, CodeTLSAMismatch, CodeFingerprint:
		return server + " could not prove that it is the genuine server for " + f.Domain + ", as " + required + " demands."
	case CodeNoTLSA:
		return server + " publishes no DANE records, which your organisation requires for " + f.Domain + "."
	case CodeMXNotAllowed:
		if f.origin == originSTS {
			return "the security policy (MTA-STS) published by " + f.Domain + " does not list " + f.Host + " among its mail servers, so the message was not sent there."
		}
		return "the signed DNS records (DNSSEC) of " + f.Domain + " do not list " + f.Host + " among its mail servers, so the message was not sent there."
	case CodeMXNotAuthenticated:
		return "the message required verified encryption (REQUIRETLS), and the mail server of " + f.Domain + " could not be confirmed as genuine (its domain publishes neither DNSSEC nor MTA-STS)."
	case CodeNoRequireTLS:
		return server + " does not support REQUIRETLS, which the sender required for this message."
	case CodeDNS:
		return "the security records of " + f.Domain + " could not be looked up; delivery will be retried."
	}
	return server + " did not meet " + required + "."
}
