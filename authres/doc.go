// Package authres decides SPF, DKIM and DMARC for inbound mail and
// records the outcome in an Authentication-Results header field
// (RFC 8601), for the MX role.
//
// # Use
//
//	c := authres.New(authres.Options{AuthServID: "mx1.example.com", Resolver: dnsClient})
//	spf := c.SPF(ctx, clientIP, helo, mailFrom)        // once, at the first accepted RCPT; spf.Reject only with RejectSPFFail
//	v, err := c.Check(ctx, clientIP, helo, mailFrom, &spf, spooled)  // err: spool unreadable -> 451
//	if v.Reject != nil { return v.Reject }             // 550 5.7.26/5.6.0/5.7.1, or 451 4.7.0; v.Check names it
//	w.Write([]byte(v.Header))                          // then the message again, from the start:
//	authres.StripForged(w, spooledAgain, "mx1.example.com")
//
// Every DNS question goes through the relay's dnsutil.Resolver, bounded
// by Options.Timeout per SPF call and per Check call.
//
// # SPF
//
// SPF (RFC 7208) is evaluated by blitiri.com.ar/go/spf (chasquid's, which
// runs the RFC 7208 test suite), because it takes an injected resolver
// and a context and implements the ten-lookup limit, the void-lookup
// limit of two, all mechanisms, macros and redirect=, all of which a
// home-made evaluator would have to get right again (exp= is ignored:
// our replies say themselves what to fix). An adapter maps
// dnsutil's error kinds onto the *net.DNSError flags the library reads:
// NXDOMAIN and NODATA are "not found" (void lookups), temporary failures
// give temperror. The adapter does no PTR lookup (the optional
// dnsutil.PTRResolver serves the milters' client name only), so the ptr
// mechanism never matches (RFC 7208 §5.5 says a failed reverse lookup is
// no match, and discourages ptr) and the %{p} macro expands to
// "unknown" (§7.3 allows that). The a and mx mechanisms ask only for
// the client's address family (§5.3, §5.4), exists for A (§5.7): the
// library does not say which mechanism asks, so the adapter follows the
// evaluation (see spfResolver); an exists from an IPv6 client asks A and
// AAAA. A record of ten mx terms of ten hosts, the most §4.6.4 allows
// short of permerror, costs 111 questions, not 211. The library enforces
// §4.6.4 itself (ten DNS terms, ten MX hosts per term, two void
// lookups); TestSPFLimits counts the questions at a DNS server.
//
// SPF costs that much per transaction, so the inbound role asks for it
// only at the first recipient it accepts, once per transaction, never
// for a client that names no valid recipient; Check reuses the result.
//
// With the null sender the HELO identity is checked as
// postmaster@helo (§2.4) and reported as smtp.helo; otherwise the
// reverse-path is reported as smtp.mailfrom.
//
// # DKIM
//
// go-msgauth verifies (rsa-sha256 and ed25519-sha256; rsa-sha1 and keys
// under 1024 bits are refused, RFC 8301), at most five signatures per
// message, each reported as its own dkim= result with header.d, header.s,
// header.a and the first eight characters of header.b (RFC 6008). Key
// lookups that fail temporarily give temperror, missing or broken keys
// and malformed signatures permerror, a wrong hash fail. go-msgauth does
// not expose s=, a= or b=, so this package reads the DKIM-Signature
// fields itself with the same line rules and pairs them by position.
// go-msgauth checks x= against the wall clock; Options.Now is checked in
// addition. Testing-mode keys (t=y) are treated like any other.
//
// # DMARC
//
// The author domains are those of every address in the From field
// (net/mail, with encoded words in display names left undecoded so an
// unknown charset cannot hide the address; a From that net/mail cannot
// parse still yields the domains of its address-like words). A From
// with several addresses is evaluated for each distinct domain and the
// strictest failing policy applies, as RFC 7489 §6.6.1 describes (one
// dmarc= result per domain): a p=reject failure of any of them refuses.
// At most ten domains are looked up (two TXT lookups each); a From with
// more is refused without a lookup (550 5.7.1, Verdict.Check
// "author_domains"). RFC 5322 §3.6 allows exactly one From field, and
// §6.6.1 leaves messages with several to local policy: they are refused
// (550 5.6.0, "multiple_from"), since a reader's client shows one of
// them and DMARC could vouch for another. Both used to be permerror,
// which never refuses, so that adding From fields or domains dodged any
// p=reject. With IgnoreDMARCReject nothing is refused: the domains of
// all From fields are evaluated, more than ten give permerror. No From
// address at all gives dmarc=none with a reason; refusing such messages
// is the inbound header checks' business, not DMARC's.
//
// The record is looked up at the author domain, then at its
// organizational domain (public suffix list from golang.org/x/net,
// ICANN and private sections), where sp= applies to subdomains. Records
// are selected by a leading v=DMARC1; several give none (§6.6.3). A
// record is read leniently, as §6.3 says (parseRecord): unknown tags and
// bad values of the others are ignored and their defaults used, so a
// slip such as ri=86400s or rf=iodef cannot switch a p=reject off (a
// strict parser, go-msgauth's, used to make that permerror, which never
// refuses). Only p= decides: invalid or missing, the record is p=none
// when it has a valid rua= and no DMARC at all otherwise (§6.6.3 step
// 6); a bad sp= falls back to p (§6.3, not step 6, which would let the
// slip switch the domain's own policy off). Tag names and keyword values
// are case-insensitive, as RFC 7489's ABNF makes them.
//
// pct= below 100 is not sampled: the next weaker policy applies to all
// failing mail (reject becomes quarantine, quarantine none), so a retry
// gets the same answer and a domain still testing its setup loses no
// mail. quarantine is recorded but not acted on here: the relay never
// quarantines silently (DESIGN.md); spam scoring downstream can use it.
//
// The header reports header.from (RFC 7489 §11.2) and the applied policy
// as policy.dmarc, a property of RFC 8601 §2.3's "policy" ptype as many
// receivers write it (whether the IANA registry lists it was not
// confirmed when this was written; RFC 9989's polrec.p is not emitted).
//
// # Refusing
//
// With Options.IgnoreDMARCReject unset, a DMARC fail whose applied
// policy is reject yields Verdict.Reject = 550 5.7.26 (RFC 7372:
// multiple authentication checks failed), and a message DMARC cannot be
// evaluated for 550 5.6.0 or 550 5.7.1 (above); Verdict.Check names the
// check for the log line and the counter. When SPF or an aligned DKIM
// signature ended in temperror, a retry could pass, so the reply is
// 451 4.7.0 instead; likewise when the DMARC record itself could not be
// looked up and nothing strictly aligned passed. With
// Options.RejectSPFFail, SPF fail gives 550 5.7.23 and temperror
// 451 4.7.24 (RFC 7372), which the inbound role sends at the first
// accepted RCPT and to every RCPT after it.
//
// # Authentication-Results
//
// The field is written by this package rather than go-msgauth's authres
// formatter, which neither folds nor escapes backslashes in quoted
// strings: every value here may come from the sender. Values are bare
// when they are a token or a plain address and quoted otherwise, control
// characters become '?', and each result starts a continuation line.
// StripForged removes fields that claim our authserv-id (RFC 8601 §5),
// streaming the rest of the message unchanged.
//
// Not done here: ARC, iprev, DMARC reports (rua/ruf), caching (the
// resolver's business), and rewriting of the message beyond the header.
package authres
