package tlspolicy_test

import (
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	"securerelay/tlspolicy"
)

// FuzzParseSTSPolicy: the policy body comes from any web server. A policy
// that parses must be self-consistent and survive a round trip.
func FuzzParseSTSPolicy(f *testing.F) {
	for _, s := range []string{
		"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n",
		"version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400",
		"version: STSv1\nmode: none\nmax_age: 0\n",
		"Version:STSv1\nMODE: Enforce\nmx: A.EXAMPLE.\nmax_age: 9999999999\nfoo: bar\n",
		"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
		"mode: enforce\n\n\n",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\r\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		p, err := tlspolicy.ParseSTSPolicy(body)
		if err != nil {
			return
		}
		switch p.Mode {
		case tlspolicy.STSEnforce, tlspolicy.STSTesting:
			if len(p.MX) == 0 {
				t.Fatalf("mode %s without mx: %q", p.Mode, body)
			}
		case tlspolicy.STSNone:
		default:
			t.Fatalf("mode %q from %q", p.Mode, body)
		}
		if p.MaxAge < 0 || p.MaxAge > 31557600*time.Second {
			t.Fatalf("max_age %v from %q", p.MaxAge, body)
		}
		for _, mx := range p.MX {
			if mx != strings.ToLower(mx) || strings.Count(mx, "*") > 1 || strings.Contains(mx, "*") && !strings.HasPrefix(mx, "*.") {
				t.Fatalf("mx pattern %q from %q", mx, body)
			}
		}
		q, err := tlspolicy.ParseSTSPolicy(p.String())
		if err != nil {
			t.Fatalf("round trip of %q: %v", p.String(), err)
		}
		if q.Mode != p.Mode || q.MaxAge != p.MaxAge || !slices.Equal(q.MX, p.MX) {
			t.Fatalf("round trip changed %+v to %+v", p, q)
		}
	})
}

// FuzzParseSTSRecord: the TXT record comes from any DNS zone.
func FuzzParseSTSRecord(f *testing.F) {
	for _, s := range []string{"v=STSv1; id=20160831085700Z;", "v=STSv1;id=1;ext=x", "v=STSv1 ; id=abc ;", "v=STSv1;", "v=STSv1; id=a; id=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, txt string) {
		id, err := tlspolicy.ParseSTSRecord(txt)
		if err != nil {
			return
		}
		if !strings.HasPrefix(txt, "v=STSv1") || len(id) == 0 || len(id) > 32 || strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != "" {
			t.Fatalf("ParseSTSRecord(%q) = %q", txt, id)
		}
		if again, err := tlspolicy.ParseSTSRecord("v=STSv1; id=" + id); err != nil || again != id {
			t.Fatalf("id %q does not round-trip: %q, %v", id, again, err)
		}
	})
}

// FuzzParseFingerprint: pins come from configuration, often pasted from
// tool output; a pin that parses must be exactly 32 bytes and read back.
func FuzzParseFingerprint(f *testing.F) {
	for _, s := range []string{
		strings.Repeat("ab", 32), "sha256:" + strings.Repeat("AB:", 31) + "AB", "SHA-256:" + strings.Repeat("0", 64), "sha1:00", ":", "ab:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fp, err := tlspolicy.ParseFingerprint(s)
		if err != nil {
			return
		}
		h := hex.EncodeToString(fp[:])
		if !strings.Contains(strings.ToLower(strings.ReplaceAll(s, ":", "")), h) {
			t.Fatalf("ParseFingerprint(%q) = %s, not in the input", s, h)
		}
		again, err := tlspolicy.ParseFingerprint("sha256:" + strings.ToUpper(h))
		if err != nil || again != fp {
			t.Fatalf("%s does not round-trip: %v", h, err)
		}
	})
}
