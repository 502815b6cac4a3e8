// Package tlspolicy decides, for every delivery, the TLS level the
// destination requires, and checks a live connection against it, so that
// no message goes out below that level (DESIGN.md principle 5).
//
// # Levels and where they come from
//
// Levels carry Postfix's smtp_tls_policy_maps names: none, may, encrypt,
// dane, dane-only, verify, secure, fingerprint. Decide and ForMX take the
// level from the first of these that applies, and Explain lists every
// step they considered:
//
//  1. the admin's rules (Rule): the recipient domain, then its closest
//     parent (".partner.example"), then, per connection, the next-hop
//     host ("host:mx.partner.example"). A matching rule decides alone.
//  2. DANE (RFC 7672), when the MX RRset, the MX host's addresses and its
//     TLSA records at _25._tcp.<mx> are all validated by the resolver the
//     configuration marks as validating (the AD bit). Usable records
//     (DANE-TA, DANE-EE) make the connection dane; validated records that
//     are all unusable make it encrypt; no records leave the host to
//     MTA-STS and the default. A host that the validated MX RRset does
//     not name is refused.
//  3. MTA-STS (RFC 8461): the _mta-sts TXT record, the policy fetched over
//     HTTPS from mta-sts.<domain> with a valid certificate and without
//     redirects, cached for its max_age and kept when the TXT lookup or
//     the fetch fails (so that an attacker who blocks them cannot switch
//     the policy off). enforce means verify, on an MX host the policy
//     lists; testing delivers as the default says and reports what
//     enforce would have refused (Outcome.Report).
//  4. the configured default (may).
//
// A message with REQUIRETLS (RFC 8689) is sent only over verified TLS to
// an MX host that DNSSEC or MTA-STS vouches for, and only to a server
// that advertises REQUIRETLS, whatever a rule says. "TLS-Required: No"
// can, where the admin allows it, set aside DANE and MTA-STS (what the
// destination publishes), never a rule or the configured default (what
// the organisation requires).
//
// # Use per delivery
//
// Decide once per destination domain and message; ForMX (or ForRelay for
// a configured next hop) per host before connecting; TLSConfig for
// STARTTLS; Evaluate (or Check) after it and before MAIL FROM;
// CheckRequireTLS after the EHLO that follows STARTTLS. A *Failure from
// any of them means: not one byte of the message to this host, try the
// next one. What finally happens (defer, bounce, encrypt end to end) is
// the delivery engine's decision, guided by Failure.Fallback and
// Failure.Temporary; Failure.UserText is the sentence for the DSN.
//
// # Design choices
//
//   - Every certificate check runs in tls.Config.VerifyConnection with
//     InsecureSkipVerify set, because DANE and pinning have no PKIX
//     counterpart in crypto/tls; one code path reports all failures with
//     a Code, a reason for the log and a sentence for the DSN. Check runs
//     the same check on the final state, so a caller that built its own
//     tls.Config still cannot pass a server that fails the level.
//   - A domain rule beats a host rule: a rule for a partner is the
//     organisation's promise about that partner, whoever runs its MX.
//   - DNSSEC is trusted only through the AD bit of a resolver the admin
//     declared validating (DNSSECResolver); no signatures are checked
//     here.
//   - The MTA-STS cache is an interface (STSCache) so that a cluster can
//     share it; MemoryCache is the embedded one. Concurrent deliveries to
//     one domain share one policy fetch; an MX the cached policy does not
//     list makes the policy be fetched once more before it is refused.
//   - For may the minimum TLS version is 1.0 unless a rule sets one: any
//     encryption beats the clear text may falls back to. Every level that
//     requires TLS defaults to 1.2.
//   - The zero Level is "unset", so a rule without a level is an error
//     rather than none.
//
// # Not done here
//
// No SMTP: the delivery engine speaks it and passes what it saw. No
// TLSRPT (RFC 8460) reports: Outcome.Report carries the findings. DANE is
// used for MX hosts only (not for relays or ports other than 25), with
// the MX name as TLSA base domain (no CNAME expansion, RFC 7672 §2.2.3),
// and a DANE-TA record matches only a certificate the server sends in its
// chain. Domain names must be A-labels; converting U-labels is the
// caller's job.
package tlspolicy
