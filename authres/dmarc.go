package authres

import (
	"context"
	"io"
	"mime"
	"net/mail"
	"strconv"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"

	"securerelay/dnsutil"
)

// DMARCResult is the DMARC (RFC 7489) verdict for one author domain.
type DMARCResult struct {
	Result Result
	// From is the author domain (RFC5322.From), lower case, A-labels;
	// empty when the message has no usable From address.
	From string
	// PolicyDomain is where the record was found: From, or its
	// organizational domain.
	PolicyDomain string
	// Policy is the policy that applies to this message after sp= and
	// pct= (none, quarantine or reject); empty without a valid record.
	Policy string
	// SPFAligned and DKIMAligned tell which identifier passed aligned.
	SPFAligned, DKIMAligned bool
	// Reason explains none (when a From exists), temperror and permerror.
	Reason string

	// uncertain: the result is fail, but SPF or an aligned DKIM signature
	// ended in temperror, so a retry might pass.
	uncertain bool
	// mayReject: the result is temperror and no strictly aligned
	// identifier passed, so the record we could not read might say reject.
	mayReject bool
	// refusal names the check that refuses a message DMARC cannot be
	// evaluated for (checkMultipleFrom, checkAuthorDomains); authors is
	// how many fields or domains made it so.
	refusal string
	authors int
}

func (r *DMARCResult) resinfo() resinfo {
	ri := resinfo{method: "dmarc", result: r.Result, reason: r.Reason}
	if r.From != "" {
		ri.props = append(ri.props, prop{"header.from", r.From})
	}
	if r.Policy != "" {
		// RFC 8601 §2.3's "policy" ptype: the policy this receiver
		// applied, after sp= and pct=.
		ri.props = append(ri.props, prop{"policy.dmarc", r.Policy})
	}
	return ri
}

// why explains a failure for the reply text.
func (r *DMARCResult) why(v *Verdict) string {
	var s string
	switch {
	case v.SPF.Result == Pass:
		s = "SPF passed only for " + v.SPF.Domain + ", which is not aligned with it"
	case v.SPF.Domain != "":
		s = "SPF gave " + string(v.SPF.Result) + " for " + v.SPF.Domain
	default:
		s = "SPF gave " + string(v.SPF.Result)
	}
	var passed []string
	temp := false
	for _, d := range v.DKIM {
		switch d.Result {
		case Pass:
			passed = append(passed, d.Domain)
		case TempError:
			temp = true
		}
	}
	switch {
	case len(v.DKIM) == 0:
		s += ", and the message has no DKIM signature"
	case len(passed) > 0:
		s += ", and DKIM passed only for " + strings.Join(passed, ", ") + ", not aligned with it"
	case temp:
		s += ", and a DKIM key lookup failed temporarily"
	default:
		s += ", and no DKIM signature verified"
	}
	return s
}

// evalDMARC evaluates DMARC for every author domain of the message
// (RFC 7489 §6.6.1: a From with several domains is checked for each,
// and the strictest failing policy applies). A message that cannot be
// checked that way is marked for refusal instead, without a lookup:
// several From fields (RFC 5322 §3.6 allows one, and §6.6.1 leaves such
// messages to local policy; which field would a reader's client show?),
// or more author domains than are looked up. Both used to end in
// permerror, which never refuses: an attacker could add them to any
// spoof of a p=reject domain. With IgnoreDMARCReject nothing is
// refused, and the domains of every From field are evaluated.
func (c *Checker) evalDMARC(ctx context.Context, fields []string, spf *SPFResult, dk []DKIMResult) []DMARCResult {
	if n := fromFields(fields); n > 1 && !c.o.IgnoreDMARCReject {
		return []DMARCResult{{Result: PermError, Reason: strconv.Itoa(n) + " From fields", refusal: checkMultipleFrom, authors: n}}
	}
	domains, reason := fromDomains(fields)
	switch {
	case len(domains) == 0:
		return []DMARCResult{{Result: None, Reason: reason}}
	case len(domains) > maxFromDomains:
		return []DMARCResult{{Result: PermError, Reason: "too many author domains in From", refusal: checkAuthorDomains, authors: len(domains)}}
	}
	out := make([]DMARCResult, 0, len(domains))
	for _, d := range domains {
		out = append(out, c.dmarcFor(ctx, d, spf, dk))
	}
	return out
}

// fromFields counts the From fields of the header (by name as RFC 5322
// reads it: case-insensitive, white space before the colon allowed).
func fromFields(fields []string) int {
	n := 0
	for _, f := range fields {
		if name, _ := splitField(f); strings.EqualFold(name, "From") {
			n++
		}
	}
	return n
}

func (c *Checker) dmarcFor(ctx context.Context, from string, spf *SPFResult, dk []DKIMResult) DMARCResult {
	r := DMARCResult{From: from}
	org := orgDomain(from)
	rec, at, res, reason := c.discover(ctx, from, org)
	if res != "" {
		r.Result, r.Reason = res, reason
		if res == TempError {
			r.mayReject = !anyAligned(from, org, dmarc.AlignmentStrict, dmarc.AlignmentStrict, spf, dk)
		}
		return r
	}
	r.PolicyDomain = at
	policy := rec.Policy
	if at != from && rec.SubdomainPolicy != "" {
		policy = rec.SubdomainPolicy
	}
	if rec.Percent != nil && *rec.Percent < 100 {
		// RFC 7489 §6.6.4 samples: pct% of failing mail gets the policy,
		// the rest the next weaker one. We do not draw lots, so that a
		// message gets the same answer when it is retried: the weaker
		// policy applies to all. A domain still testing DMARC loses no
		// mail by it.
		switch policy {
		case dmarc.PolicyReject:
			policy = dmarc.PolicyQuarantine
		case dmarc.PolicyQuarantine:
			policy = dmarc.PolicyNone
		}
	}
	r.Policy = string(policy)

	r.SPFAligned = spf.Result == Pass && aligned(spf.Domain, from, org, rec.SPFAlignment)
	for _, d := range dk {
		if d.Result == Pass && aligned(d.Domain, from, org, rec.DKIMAlignment) {
			r.DKIMAligned = true
		}
	}
	if r.SPFAligned || r.DKIMAligned {
		r.Result = Pass
		return r
	}
	r.Result = Fail
	r.uncertain = spf.Result == TempError && aligned(spf.Domain, from, org, rec.SPFAlignment)
	for _, d := range dk {
		if d.Result == TempError && aligned(d.Domain, from, org, rec.DKIMAlignment) {
			r.uncertain = true
		}
	}
	return r
}

// anyAligned reports whether SPF or a DKIM signature passed for a
// domain aligned with from in the given modes.
func anyAligned(from, org string, spfMode, dkimMode dmarc.AlignmentMode, spf *SPFResult, dk []DKIMResult) bool {
	if spf.Result == Pass && aligned(spf.Domain, from, org, spfMode) {
		return true
	}
	for _, d := range dk {
		if d.Result == Pass && aligned(d.Domain, from, org, dkimMode) {
			return true
		}
	}
	return false
}

// aligned implements RFC 7489 §3.1: strict means the same domain,
// relaxed the same organizational domain.
func aligned(d, from, org string, mode dmarc.AlignmentMode) bool {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if d == "" {
		return false
	}
	if d == from {
		return true
	}
	return mode != dmarc.AlignmentStrict && orgDomain(d) == org
}

// orgDomain is the organizational domain (RFC 7489 §3.2): one label
// below the public suffix. A name that is itself a public suffix is its
// own organizational domain.
func orgDomain(d string) string {
	o, err := publicsuffix.EffectiveTLDPlusOne(d)
	if err != nil {
		return d
	}
	return o
}

// discover finds the DMARC record for from (RFC 7489 §6.6.3): at from,
// else at its organizational domain. It returns the record and where it
// was found, or a final result (none, temperror, permerror) and why.
func (c *Checker) discover(ctx context.Context, from, org string) (rec *dmarc.Record, at string, res Result, reason string) {
	for _, d := range []string{from, org} {
		if d == at {
			break // org == from: asked already
		}
		at = d
		name := "_dmarc." + d
		txts, err := c.o.Resolver.LookupTXT(ctx, name)
		switch {
		case err == nil:
		case dnsutil.IsTemporary(err):
			return nil, "", TempError, "DNS lookup of " + name + " failed: temporary DNS failure"
		default:
			// NXDOMAIN, NODATA or a name that cannot exist: no record here.
			continue
		}
		var recs []string
		for _, t := range txts {
			if isDMARC1(t) {
				recs = append(recs, t)
			}
		}
		switch len(recs) {
		case 0:
			continue
		case 1:
		default:
			// §6.6.3 step 5: several records end policy discovery.
			return nil, "", None, "several DMARC records at " + name
		}
		r, ok := parseRecord(recs[0])
		if !ok {
			// §6.6.3 step 6: no valid p= and no report address to fall
			// back to p=none with: no DMARC processing.
			return nil, "", None, "no valid p= in the DMARC record at " + name
		}
		return r, d, "", ""
	}
	return nil, "", None, "no DMARC record"
}

// isDMARC1 reports whether a TXT record starts with the tag v=DMARC1
// (RFC 7489 §6.6.3 step 3; the version value is case-sensitive, §6.4).
func isDMARC1(t string) bool {
	first, _, _ := strings.Cut(t, ";")
	k, v, ok := strings.Cut(first, "=")
	return ok && strings.TrimSpace(k) == "v" && strings.TrimSpace(v) == "DMARC1"
}

// fromDomains returns the distinct author domains of the From fields,
// in order, or why there is none. net/mail reads the addresses; when it
// cannot, the domains of anything address-like are taken instead, since
// a From that a strict parser rejects may still show a forged address in
// a mail client, and must not escape DMARC for that.
func fromDomains(fields []string) ([]string, string) {
	var values []string
	for _, f := range fields {
		if name, v := splitField(f); strings.EqualFold(name, "From") {
			values = append(values, unfold(v))
		}
	}
	if len(values) == 0 {
		return nil, "no From field"
	}
	seen := map[string]bool{}
	var out []string
	add := func(addr string) {
		at := strings.LastIndexByte(addr, '@')
		if at < 0 {
			return
		}
		d := strings.TrimSuffix(strings.ToLower(addr[at+1:]), ".")
		if a, err := idna.Lookup.ToASCII(d); err == nil {
			d = a
		} else if !isASCII(d) {
			return
		}
		// An ASCII name that IDNA's stricter rules refuse is still a
		// name DNS can hold and a reader sees.
		if !isHostName(d) {
			return
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	for _, v := range values {
		list, err := fromParser.ParseList(v)
		if err != nil {
			for _, a := range looseAddresses(v) {
				add(a)
			}
			continue
		}
		for _, a := range list {
			add(a.Address)
		}
	}
	if len(out) == 0 {
		return nil, "no usable address in From"
	}
	return out, ""
}

// fromParser reads From fields; see anyCharset.
var fromParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: anyCharset}}

// anyCharset passes encoded-word text through undecoded: only the
// address matters here, and an unknown charset in a display name must
// not make the whole From unreadable.
func anyCharset(_ string, input io.Reader) (io.Reader, error) { return input, nil }

// looseAddresses finds "local@domain" words in s: the domain runs from
// an '@' to the next character that cannot be part of a host name.
func looseAddresses(s string) []string {
	var out []string
	for i := 0; i < len(s); i++ {
		if s[i] != '@' {
			continue
		}
		j := i + 1
		for j < len(s) && (isLDH(s[j]) || s[j] == '.' || s[j] >= 0x80) {
			j++
		}
		if j > i+1 {
			out = append(out, "x"+s[i:j])
		}
	}
	return out
}

// isHostName: at least two labels of letters, digits and hyphens (and
// underscores, which DNS allows and some hosts use), none empty or
// longer than 63 octets, not starting or ending with a hyphen.
func isHostName(d string) bool {
	if len(d) > 253 || !strings.Contains(d, ".") {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			if !isLDH(l[i]) && l[i] != '_' {
				return false
			}
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isLDH(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}
