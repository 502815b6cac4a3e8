package authres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// DKIMResult is the verification result of one DKIM-Signature field
// (RFC 6376; Ed25519 per RFC 8463).
type DKIMResult struct {
	Result Result
	// Domain (d=), Selector (s=) and Algorithm (a=) as the signature
	// states them; Domain is lower case.
	Domain, Selector, Algorithm string
	// B is the start of the signature value (b=), which tells apart
	// several signatures of one domain (RFC 6008).
	B string
	// Reason explains every result but pass.
	Reason string
}

// bPrefix is how much of b= the header reports: RFC 6008 §4 asks for at
// least eight characters.
const bPrefix = 8

func (r *DKIMResult) resinfo() resinfo {
	ri := resinfo{method: "dkim", result: r.Result, reason: r.Reason}
	for _, p := range []prop{{"header.d", r.Domain}, {"header.s", r.Selector}, {"header.a", r.Algorithm}, {"header.b", r.B}} {
		if p.value != "" {
			ri.props = append(ri.props, p)
		}
	}
	return ri
}

// verifyDKIM checks the first maxSignatures signatures of the message in
// r, whose header fields are fields. go-msgauth reports results in the
// order of the DKIM-Signature fields, which is how they are matched to
// the tags read here (go-msgauth does not return s=, a= or b=).
func (c *Checker) verifyDKIM(ctx context.Context, fields []string, r io.Reader) ([]DKIMResult, error) {
	var out []DKIMResult
	for _, f := range fields {
		name, value := splitField(f)
		if !strings.EqualFold(name, "DKIM-Signature") {
			continue
		}
		if len(out) == maxSignatures {
			break
		}
		tags := parseTags(value)
		b := stripFWS(tags["b"])
		if len(b) > bPrefix {
			b = b[:bPrefix]
		}
		out = append(out, DKIMResult{
			Domain:    strings.ToLower(stripFWS(tags["d"])),
			Selector:  stripFWS(tags["s"]),
			Algorithm: stripFWS(tags["a"]),
			B:         b,
		})
	}
	if len(out) == 0 {
		return nil, nil
	}

	lookup := func(name string) ([]string, error) {
		txt, err := c.o.Resolver.LookupTXT(ctx, name)
		if err != nil {
			// go-msgauth tells temporary failures by net.Error.Temporary.
			return nil, netError(name, err)
		}
		return txt, nil
	}
	verifs, err := dkim.VerifyWithOptions(r, &dkim.VerifyOptions{LookupTXT: lookup, MaxVerifications: maxSignatures})
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		// Not a verdict on a signature but a failure to read the message
		// (go-msgauth classifies every signature problem): no result can
		// be trusted.
		return nil, fmt.Errorf("authres: verifying DKIM: %w", err)
	}
	if len(verifs) != len(out) {
		// Both sides read the same header with the same rules; a mismatch
		// is a bug, and pairing results with the wrong signature would be
		// worse than reporting none.
		return nil, fmt.Errorf("authres: DKIM verifier saw %d signatures, header parser %d", len(verifs), len(out))
	}
	now := c.o.Now()
	for i, v := range verifs {
		d := &out[i]
		switch {
		case v.Err == nil && !v.Expiration.IsZero() && now.After(v.Expiration):
			d.Result, d.Reason = PermError, "signature has expired"
		case v.Err == nil:
			d.Result = Pass
		case dkim.IsTempFail(v.Err):
			d.Result = TempError
		case dkim.IsPermFail(v.Err):
			d.Result = PermError
		default:
			d.Result = Fail
		}
		if v.Err != nil {
			d.Reason = strings.TrimPrefix(v.Err.Error(), "dkim: ")
		}
		if d.Domain == "" {
			d.Domain = strings.ToLower(v.Domain)
		}
	}
	return out, nil
}

// parseTags reads a DKIM tag-list (RFC 6376 §3.2) the way go-msgauth
// does (split at ';', then at the first '=', trimmed), keeping the first
// of duplicate tags; go-msgauth fails such a signature anyway.
func parseTags(s string) map[string]string {
	tags := make(map[string]string)
	for len(s) > 0 {
		var part string
		part, s, _ = strings.Cut(s, ";")
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, dup := tags[k]; !dup {
			tags[k] = strings.TrimSpace(v)
		}
	}
	return tags
}

// stripFWS removes the folding white space RFC 6376 §3.2 allows inside
// tag values.
func stripFWS(s string) string {
	if !strings.ContainsAny(s, " \t\r\n") {
		return s
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}
