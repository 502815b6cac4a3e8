package smtputil

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// decodeXtext is RFC 3461 §4's grammar read strictly (xchar and "+" with
// two upper-case hex digits), written from the RFC for the tests alone:
// the relay itself never decodes xtext (go-smtp does, on the way in).
func decodeXtext(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) || !isUpperHex(s[i+1]) || !isUpperHex(s[i+2]) {
				return "", errors.New("bad hexchar")
			}
			n, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(n))
			i += 2
		case c >= '!' && c <= '~' && c != '=':
			b.WriteByte(c)
		default:
			return "", errors.New("not an xchar")
		}
	}
	return b.String(), nil
}

func isUpperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func TestEncodeXtext(t *testing.T) {
	for in, want := range map[string]string{
		"":                       "",
		"QQ314159":               "QQ314159",
		"a+b=c d":                "a+2Bb+3Dc+20d",
		"\x01\x7f\xff":           "+01+7F+FF",
		"Bob@Example.org":        "Bob@Example.org",
		`<id.1@host> "quoted"\x`: `<id.1@host>+20"quoted"\x`,
	} {
		if got := EncodeXtext(in); got != want {
			t.Errorf("EncodeXtext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEncodeUTF8AddrXtext(t *testing.T) {
	for in, want := range map[string]string{
		"jörg@müller.example": `j\x{F6}rg@m\x{FC}ller.example`,
		"a+b=c\\d e":          `a\x{2B}b\x{3D}c\x{5C}d\x{20}e`,
		"\x01":                `\x{01}`,
		"東京@例え.jp":            `\x{6771}\x{4EAC}@\x{4F8B}\x{3048}.jp`,
		"😀@x.example":         `\x{1F600}@x.example`,
	} {
		got, ok := EncodeUTF8AddrXtext(in)
		if !ok || got != want {
			t.Errorf("EncodeUTF8AddrXtext(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, bad := range []string{"a\x00b", "\xff@x"} {
		if _, ok := EncodeUTF8AddrXtext(bad); ok {
			t.Errorf("EncodeUTF8AddrXtext(%q) accepted", bad)
		}
	}
}

func TestEncodeORCPT(t *testing.T) {
	for in, want := range map[string]string{
		"rfc822;Bob+tag@example.org": "rfc822;Bob+2Btag@example.org",
		"RFC822;a b@example.org":     "rfc822;a+20b@example.org",
		"utf-8;jörg@example.org":     `utf-8;j\x{F6}rg@example.org`,
		"rfc822;":                    "",
		";a@b.example":               "",
		"x400;/G=a/":                 "",
		"rfc822;jörg@example.org":    "",
		"noseparator":                "",
	} {
		got, ok := EncodeORCPT(in)
		if got != want || ok != (want != "") {
			t.Errorf("EncodeORCPT(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

var utf8AddrXtext = regexp.MustCompile(`^(?:[!-*,-<>-\[\]-~]|\\x\{[0-9A-F]{2,6}\})*$`)

// FuzzXtext: the encoders only ever write their grammar, and xtext decodes
// back to exactly what was encoded.
func FuzzXtext(f *testing.F) {
	for _, s := range []string{"", "QQ314159", "a+b=c d", "\x00\xff", "jörg@müller.example", `a\b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := EncodeXtext(s)
		dec, err := decodeXtext(enc)
		if err != nil || dec != s {
			t.Fatalf("EncodeXtext(%q) = %q, decodes to %q, %v", s, enc, dec, err)
		}
		u, ok := EncodeUTF8AddrXtext(s)
		if ok != (utf8.ValidString(s) && !strings.Contains(s, "\x00")) {
			t.Fatalf("EncodeUTF8AddrXtext(%q) ok = %v", s, ok)
		}
		if ok && !utf8AddrXtext.MatchString(u) {
			t.Fatalf("EncodeUTF8AddrXtext(%q) = %q is not utf-8-addr-xtext", s, u)
		}
		if o, ok := EncodeORCPT("rfc822;" + s); ok {
			if d, err := decodeXtext(strings.TrimPrefix(o, "rfc822;")); err != nil || d != s {
				t.Fatalf("EncodeORCPT(rfc822;%q) = %q", s, o)
			}
		}
	})
}
