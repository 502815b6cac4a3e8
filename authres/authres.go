package authres

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dkim"
	"securerelay/dnsutil"
	"securerelay/smtputil"
)

// Result is an RFC 8601 §2.7 result value. SPF uses all seven; DKIM uses
// none, pass, fail, temperror and permerror; DMARC none, pass, fail,
// temperror and permerror.
type Result string

const (
	None      Result = "none"
	Neutral   Result = "neutral"
	Pass      Result = "pass"
	Fail      Result = "fail"
	SoftFail  Result = "softfail"
	TempError Result = "temperror"
	PermError Result = "permerror"
)

// DefaultTimeout bounds all lookups of one SPF check, and separately all
// lookups of one Check, when Options.Timeout is not positive. A sender's
// SPF tree may take ten lookups in a row; an SMTP client waits minutes
// for the reply to DATA (RFC 5321 §4.5.3.2.6), so this is generous.
const DefaultTimeout = 20 * time.Second

// maxSignatures is how many DKIM signatures are verified per message,
// from the top. Each costs a key lookup and a public-key operation, and
// a sender can add any number; real mail carries one to three (author,
// ESP, mailing list).
const maxSignatures = 5

// maxFromDomains bounds the DMARC evaluations of one message with several
// author domains (RFC 7489 §6.6.1); each costs up to two TXT lookups.
const maxFromDomains = 10

// Options configure a Checker. Resolver and AuthServID are required.
type Options struct {
	// AuthServID names this relay in Authentication-Results (RFC 8601
	// §2.5): normally its host name. Fields claiming it that arrive from
	// outside are forgeries and are removed by StripForged.
	AuthServID string
	// Resolver answers every DNS question; the relay's dnsutil.Client.
	Resolver dnsutil.Resolver
	// Timeout bounds all lookups of one SPF call and of one Check call;
	// DefaultTimeout when not positive.
	Timeout time.Duration
	// IgnoreDMARCReject turns the refusal of mail failing DMARC with an
	// effective policy of reject into accepting it with the result
	// recorded. The zero value refuses, as RFC 7489 §6.7 expects of a
	// receiver that honours published policy.
	IgnoreDMARCReject bool
	// RejectSPFFail refuses a MAIL FROM whose SPF result is fail (and
	// defers one whose result is temperror). Off by default: RFC 7489
	// §10.1 warns that rejecting on SPF alone, before DATA, refuses
	// forwarded mail that DKIM would have authenticated under DMARC.
	RejectSPFFail bool
	// Now is the clock for DKIM signature expiry (x=); time.Now when nil.
	// go-msgauth checks x= against the wall clock as well, so Now can
	// only make signatures expire earlier, which is what tests need.
	Now func() time.Time
}

// Checker evaluates SPF, DKIM and DMARC for inbound mail. It is safe for
// concurrent use and holds no per-message state.
type Checker struct {
	o Options
}

// New returns a Checker. It panics if Resolver or AuthServID is missing,
// since that is a wiring error and not a runtime condition.
func New(o Options) *Checker {
	if o.Resolver == nil {
		panic("authres: Options.Resolver is nil")
	}
	if !isToken(o.AuthServID) {
		panic(fmt.Sprintf("authres: Options.AuthServID %q is not a host name", o.AuthServID))
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Checker{o: o}
}

// Verdict is the outcome of Check for one message.
type Verdict struct {
	SPF   SPFResult
	DKIM  []DKIMResult  // one per signature evaluated, top first; empty when unsigned
	DMARC []DMARCResult // one per author domain; normally exactly one
	// Header is the complete Authentication-Results field, folded, ending
	// in CRLF, to be prepended to the message (after StripForged).
	Header string
	// Forged counts the Authentication-Results fields in the message that
	// claim our authserv-id: when it is 0, StripForged has nothing to do.
	Forged int
	// Reject, when not nil, is the reply to send instead of accepting the
	// message: 550 when the published DMARC policy says reject or when
	// DMARC cannot be evaluated for every author (several From fields,
	// too many author domains), 451 when a temporary DNS failure left
	// open whether the policy says reject.
	Reject *smtp.SMTPError
	// Check names what made Reject, for the log line and the counter:
	// "dmarc", "multiple_from" or "author_domains"; "" without Reject.
	Check string
}

// The checks that can refuse a message in Check (Verdict.Check).
const (
	checkDMARC         = "dmarc"
	checkMultipleFrom  = "multiple_from"
	checkAuthorDomains = "author_domains"
)

// Check verifies the DKIM signatures of msg (the message as received,
// header and body, CRLF or LF line ends) and evaluates DMARC for its
// From domain(s) using spf, the result of SPF for this transaction; when
// spf is nil, SPF is evaluated here. ip is the client's address, helo its
// HELO/EHLO argument and mailFrom the reverse-path as smtputil.ReversePath
// returns it ("" for the null sender).
//
// Authentication failures are results, not errors: the error is non-nil
// only when msg cannot be read, and then the verdict is nil.
func (c *Checker) Check(ctx context.Context, ip netip.Addr, helo, mailFrom string, spf *SPFResult, msg io.Reader) (*Verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()

	v := &Verdict{}
	if spf != nil {
		v.SPF = *spf
	} else {
		v.SPF = c.spf(ctx, ip, helo, mailFrom)
	}

	br := bufio.NewReaderSize(msg, 16<<10)
	raw, fields, complete, err := readHeader(br, dkim.MaxHeaderBytes)
	if err != nil {
		return nil, fmt.Errorf("authres: reading message header: %w", err)
	}
	// The header is parsed already; counting here spares the caller a
	// second read of it just to learn whether stripping is needed.
	v.Forged = countForged(fields, c.o.AuthServID)
	if !complete {
		// A message that is all header has an empty body; the DKIM
		// verifier wants the separator line regardless.
		if len(raw) > 0 && raw[len(raw)-1] != '\n' {
			raw = append(raw, "\r\n"...)
		}
		raw = append(raw, "\r\n"...)
	}
	v.DKIM, err = c.verifyDKIM(ctx, fields, io.MultiReader(bytes.NewReader(raw), br))
	if err != nil {
		return nil, err
	}
	v.DMARC = c.evalDMARC(ctx, fields, &v.SPF, v.DKIM)
	v.Header = c.header(v)
	if !c.o.IgnoreDMARCReject {
		v.Reject, v.Check = dmarcReject(v)
	}
	return v, nil
}

// header renders the Authentication-Results field for v.
func (c *Checker) header(v *Verdict) string {
	var rs []resinfo
	rs = append(rs, v.SPF.resinfo())
	if len(v.DKIM) == 0 {
		rs = append(rs, resinfo{method: "dkim", result: None})
	}
	for i := range v.DKIM {
		rs = append(rs, v.DKIM[i].resinfo())
	}
	for i := range v.DMARC {
		rs = append(rs, v.DMARC[i].resinfo())
	}
	return formatField(c.o.AuthServID, rs)
}

// dmarcReject returns the reply for the strictest failing author domain
// and the check it comes from: a message DMARC cannot be evaluated for
// is refused first, and a definite reject wins over a deferral, so that
// a message is not retried only to be refused.
func dmarcReject(v *Verdict) (*smtp.SMTPError, string) {
	var deferral *smtp.SMTPError
	for i := range v.DMARC {
		d := &v.DMARC[i]
		switch {
		case d.refusal == checkMultipleFrom:
			return smtputil.MultipleFromFields(d.authors), d.refusal
		case d.refusal == checkAuthorDomains:
			return smtputil.TooManyAuthorDomains(d.authors, maxFromDomains), d.refusal
		case d.Result == Fail && d.Policy == "reject" && !d.uncertain:
			return smtputil.DMARCReject(d.From, d.why(v)), checkDMARC
		case d.Result == Fail && d.Policy == "reject" && deferral == nil:
			deferral = smtputil.DMARCTempFail(d.From, d.why(v))
		case d.Result == TempError && d.mayReject && deferral == nil:
			deferral = smtputil.DMARCLookupTempFail(d.From)
		}
	}
	if deferral != nil {
		return deferral, checkDMARC
	}
	return nil, ""
}
