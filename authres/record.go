package authres

import (
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/emersion/go-msgauth/dmarc"
)

// parseRecord reads a DMARC policy record (one that starts with
// v=DMARC1) the way RFC 7489 §6.3 asks a receiver to: unknown tags are
// ignored, and "syntax errors in the remainder of the record SHOULD be
// discarded in favor of default values (if any) or ignored outright".
// Only v= and p= decide whether there is a policy at all. A strict
// parser (go-msgauth's, which this replaced) throws the whole record
// away over a slip such as ri=86400s or rf=iodef, and with it the
// domain's p=reject: a spoofer only has to pick targets whose records
// have one.
//
// Tag names and the keyword values are case-insensitive (RFC 7489's ABNF
// uses quoted strings); the first occurrence of a tag counts. What is
// read, and how a bad value falls back:
//
//   - p: none, quarantine or reject. Missing or invalid: §6.6.3 step 6,
//     a record with at least one syntactically valid rua= URI is treated
//     as "v=DMARC1; p=none" (every other tag at its default), and one
//     without gets no DMARC processing (ok false). p= is accepted
//     wherever it stands, not only second as §6.4 wants: the order is
//     the publisher's slip, and honouring a p=reject is the safe side.
//   - sp: as p; invalid or missing: p applies to subdomains (§6.3's
//     default). §6.6.3 step 6 also names an invalid sp= as a reason to
//     fall back to p=none, which would let a slip in sp= switch off the
//     domain's own p=reject; the §6.3 reading is kept deliberately.
//   - pct: an integer 0..100; otherwise 100 (the default).
//   - adkim, aspf: r or s; otherwise r (the default).
//
// rua is only checked for the p= fallback; ruf, rf, ri and fo are not
// used by this receiver (no reports are sent) and cannot invalidate
// anything.
func parseRecord(txt string) (rec *dmarc.Record, ok bool) {
	tags := map[string]string{}
	for _, part := range strings.Split(txt, ";") {
		k, v, found := strings.Cut(part, "=")
		if !found {
			continue // not a tag: ignored
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if _, dup := tags[k]; !dup {
			tags[k] = strings.TrimSpace(v)
		}
	}
	rec = &dmarc.Record{SPFAlignment: dmarc.AlignmentRelaxed, DKIMAlignment: dmarc.AlignmentRelaxed}
	p, pOK := policyValue(tags["p"])
	if !pOK {
		if !anyValidURI(tags["rua"]) {
			return nil, false
		}
		rec.Policy = dmarc.PolicyNone
		return rec, true
	}
	rec.Policy = p
	if sp, ok := policyValue(tags["sp"]); ok {
		rec.SubdomainPolicy = sp
	}
	if v, ok := tags["pct"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 100 {
			rec.Percent = &n
		}
	}
	if strings.EqualFold(tags["adkim"], "s") {
		rec.DKIMAlignment = dmarc.AlignmentStrict
	}
	if strings.EqualFold(tags["aspf"], "s") {
		rec.SPFAlignment = dmarc.AlignmentStrict
	}
	return rec, true
}

func policyValue(v string) (dmarc.Policy, bool) {
	switch p := dmarc.Policy(strings.ToLower(v)); p {
	case dmarc.PolicyNone, dmarc.PolicyQuarantine, dmarc.PolicyReject:
		return p, true
	}
	return "", false
}

// uriSize is the optional size limit after a DMARC URI (RFC 7489 §6.4:
// "!" 1*DIGIT [ "k" / "m" / "g" / "t" ]).
var uriSize = regexp.MustCompile(`![0-9]+[kKmMgGtT]?$`)

// anyValidURI reports whether a rua= value holds at least one
// syntactically valid URI (RFC 7489 §6.6.3 step 6.1): absolute, with a
// scheme and something after it.
func anyValidURI(v string) bool {
	for _, u := range strings.Split(v, ",") {
		u = uriSize.ReplaceAllString(strings.TrimSpace(u), "")
		if u == "" || strings.ContainsAny(u, " \t\r\n") {
			continue
		}
		p, err := url.Parse(u)
		if err == nil && p.Scheme != "" && (p.Opaque != "" || p.Host != "" || p.Path != "") {
			return true
		}
	}
	return false
}
