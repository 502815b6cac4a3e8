package authres

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzStripForged: the body passes untouched, the number of fields
// removed agrees with the header reader Check uses, and stripping is
// idempotent.
func FuzzStripForged(f *testing.F) {
	f.Add([]byte("Authentication-Results: mx.test; spf=pass\r\nSubject: x\r\n\r\nbody"))
	f.Add([]byte("Authentication-Results:\r\n (c) \"mx.\\test\" 1; none\nX: y\n\n"))
	f.Add([]byte(" lead\r\nAuthentication-Results: (unterminated mx.test\r\n"))
	f.Add([]byte("Authentication-Results : ((((((((((((((((((deep)))))))))))))))))) mx.test;\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		n, err := StripForged(&out, bytes.NewReader(in), testID)
		if err != nil {
			t.Fatal(err)
		}
		raw, fields, complete, err := readHeader(bufio.NewReader(bytes.NewReader(in)), len(in)+1)
		if err != nil {
			t.Fatal(err)
		}
		if ours := countForged(fields, testID); ours != n {
			t.Errorf("removed %d, header reader finds %d of ours", n, ours)
		}
		if complete && !bytes.HasSuffix(out.Bytes(), in[len(raw):]) {
			t.Errorf("body changed")
		}
		if out.Len() > len(in) || (n == 0 && !bytes.Equal(out.Bytes(), in)) {
			t.Errorf("output %q from %q", out.Bytes(), in)
		}
		var again bytes.Buffer
		if n2, _ := StripForged(&again, bytes.NewReader(out.Bytes()), testID); n2 != 0 || !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Errorf("second pass removed %d", n2)
		}
	})
}

// FuzzFromDomains: whatever the From field holds, the author domains
// are lower-case ASCII host names (A-labels).
func FuzzFromDomains(f *testing.F) {
	for _, s := range []string{"a@example.com", "\"x\" <a@EXAMPLE.com.>", "=?x?q?a?= <b@bücher.example>", "g: a@x.y, b@z.w;", "ceo@bank.example <", "@@@.", "a@-x-.y",
		"ceo@bank.test, x@d0.example.net, x@d1.example.net, x@d2.example.net", "a@b.c,,, ,b@c.d", "\"a,b@x.y\" <c@z.w>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ds, reason := fromDomains([]string{"From: " + v, "Subject: x"})
		if len(ds) == 0 && reason == "" {
			t.Error("no domain and no reason")
		}
		seen := map[string]bool{}
		for _, d := range ds {
			if seen[d] {
				t.Errorf("duplicate %q", d)
			}
			seen[d] = true
			if !strings.Contains(d, ".") || strings.HasPrefix(d, ".") {
				t.Errorf("domain %q", d)
			}
			for i := 0; i < len(d); i++ {
				if c := d[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
					t.Errorf("domain %q has %q", d, c)
				}
			}
		}
	})
}

// FuzzFormatField: values from the message cannot break the header: it
// is one field whatever they hold, the authserv-id reads back, and clean
// values read back unchanged.
func FuzzFormatField(f *testing.F) {
	for _, s := range []string{"example.com", "a b", `q"u\o`, "x\r\nInjected: yes", "ünï", "a;b=c", ""} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, reason, value string) {
		h := formatField(testID, []resinfo{
			{method: "dkim", result: Fail, reason: reason, props: []prop{{"header.d", value}, {"header.s", "s"}}},
			{method: "dmarc", result: None},
		})
		if !strings.HasPrefix(h, "Authentication-Results: ") || !strings.HasSuffix(h, "\r\n") {
			t.Fatalf("field %q", h)
		}
		body := strings.TrimSuffix(h, "\r\n")
		unfolded := strings.NewReplacer("\r\n ", " ", "\r\n\t", "\t").Replace(body)
		if strings.ContainsAny(unfolded, "\r\n") {
			t.Fatalf("line break that is no fold in %q", h)
		}
		v := strings.TrimPrefix(unfolded, "Authentication-Results:")
		if id, ok := authServIDOf(v); !ok || id != testID {
			t.Errorf("authserv-id %q, %v", id, ok)
		}
		if !isOurs([]byte(h), testID) {
			t.Error("StripForged would not recognise our own field")
		}
		clean := func(s string) bool {
			if !utf8.ValidString(s) {
				return false
			}
			for _, r := range s {
				if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
					return false
				}
			}
			return true
		}
		_, rest, _ := strings.Cut(v, "dkim=fail")
		if reason != "" {
			after, ok := strings.CutPrefix(rest, " reason=")
			got, r, ok2 := readValue(after)
			if !ok || !ok2 {
				t.Fatalf("no reason in %q", v)
			}
			if clean(reason) && len(reason) <= maxReason && got != reason {
				t.Errorf("reason %q reads back as %q", reason, got)
			}
			rest = r
		}
		after, ok := strings.CutPrefix(rest, " header.d=")
		if !ok {
			t.Fatalf("no header.d in %q", v)
		}
		var got string
		if strings.HasPrefix(after, `"`) {
			got, after, ok = readValue(after)
		} else {
			got, after, ok = strings.Cut(after, " ")
			after = " " + after
		}
		if !ok || !strings.HasPrefix(after, " header.s=s;") {
			t.Fatalf("header.d value does not end where it should in %q", v)
		}
		if clean(value) && got != value {
			t.Errorf("value %q reads back as %q", value, got)
		}
	})
}

// FuzzParseTags: the DKIM tag-list reader never panics and never
// returns a value spanning tags.
func FuzzParseTags(f *testing.F) {
	f.Add("v=1; a=rsa-sha256; d=example.com; s=sel;\r\n b=abc\r\n def; bh=x")
	f.Add(";;=;a==b;a=c; ;")
	f.Fuzz(func(t *testing.T, s string) {
		for k, v := range parseTags(s) {
			if strings.Contains(v, ";") || strings.Contains(k, ";") || strings.Contains(k, "=") {
				t.Errorf("tag %q=%q", k, v)
			}
			if strings.ContainsAny(stripFWS(v), " \t\r\n") {
				t.Errorf("stripFWS(%q)", v)
			}
		}
	})
}

// FuzzParseRecord: the lenient DMARC record reader never panics, gives
// only RFC 7489 keyword values, and keeps a valid p= whatever else the
// record holds (a slip elsewhere must not switch a policy off).
func FuzzParseRecord(f *testing.F) {
	for _, s := range []string{"v=DMARC1; p=reject", "v=DMARC1; p=reject; ri=86400s", "v=DMARC1; p=reject; rf=iodef",
		"v=DMARC1; p=rejct; rua=mailto:a@b.c!10m", "v=DMARC1; sp=none; pct=abc; adkim=S", ";;==;p", "v=DMARC1; rua=,,!; p="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rec, ok := parseRecord(s)
		if !ok {
			if rec != nil {
				t.Errorf("record %+v with ok false", rec)
			}
			return
		}
		switch rec.Policy {
		case "none", "quarantine", "reject":
		default:
			t.Errorf("p %q", rec.Policy)
		}
		switch rec.SubdomainPolicy {
		case "", "none", "quarantine", "reject":
		default:
			t.Errorf("sp %q", rec.SubdomainPolicy)
		}
		if rec.Percent != nil && (*rec.Percent < 0 || *rec.Percent > 100) {
			t.Errorf("pct %d", *rec.Percent)
		}
		if rec.SPFAlignment != "r" && rec.SPFAlignment != "s" || rec.DKIMAlignment != "r" && rec.DKIMAlignment != "s" {
			t.Errorf("alignment %q %q", rec.SPFAlignment, rec.DKIMAlignment)
		}
		if !strings.Contains(s, "\x00") {
			with, ok := parseRecord("v=DMARC1; p=reject; " + s)
			if !ok || with.Policy != "reject" {
				t.Errorf("p=reject before %q gives %+v, %v", s, with, ok)
			}
		}
	})
}
