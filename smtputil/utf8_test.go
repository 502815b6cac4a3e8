package smtputil

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestParseMailboxSMTPUTF8: under SMTPUTF8 (RFC 6531) a UTF-8 local part
// and a U-label domain parse; the domain compares in A-labels (Domain,
// Key) and is written as the sender wrote it (String); without SMTPUTF8
// the same addresses are ErrNonASCII, the 553 5.6.7 of today.
func TestParseMailboxSMTPUTF8(t *testing.T) {
	tests := []struct {
		in                 string
		local, dom, udom   string
		str                string // String(); "" means in
		ascii              string // ASCII(); "" means none
		err                error
		errWithoutSMTPUTF8 error
		description        string
	}{
		{in: "jörg@müller.example", local: "jörg", dom: "xn--mller-kva.example", udom: "müller.example", errWithoutSMTPUTF8: ErrNonASCII},
		{in: "user@müller.example", local: "user", dom: "xn--mller-kva.example", udom: "müller.example", ascii: "user@xn--mller-kva.example", errWithoutSMTPUTF8: ErrNonASCII},
		{in: "User@MÜLLER.Example.", local: "User", dom: "xn--mller-kva.example", udom: "müller.example", str: "User@müller.example", ascii: "User@xn--mller-kva.example",
			errWithoutSMTPUTF8: ErrNonASCII, description: "IDNA Lookup maps case; local part kept"},
		{in: "jörg@xn--mller-kva.example", local: "jörg", dom: "xn--mller-kva.example", errWithoutSMTPUTF8: ErrNonASCII, description: "A-label kept as written"},
		{in: "jörg@example.com", local: "jörg", dom: "example.com", errWithoutSMTPUTF8: ErrNonASCII},
		{in: "user@example.com", local: "user", dom: "example.com", ascii: "user@example.com"},
		{in: "δοκιμή@παράδειγμα.δοκιμή", local: "δοκιμή", dom: "xn--hxajbheg2az3al.xn--jxalpdlp", udom: "παράδειγμα.δοκιμή", errWithoutSMTPUTF8: ErrNonASCII},
		{in: "用户@例子.广告", local: "用户", dom: "xn--fsqu00a.xn--4rr70v", udom: "例子.广告", errWithoutSMTPUTF8: ErrNonASCII},
		{in: "a@faß.de", local: "a", dom: "xn--fa-hia.de", udom: "faß.de", ascii: "a@xn--fa-hia.de", errWithoutSMTPUTF8: ErrNonASCII, description: "non-transitional: ß stays"},
		{in: `"jö rg"@example.com`, local: "jö rg", dom: "example.com", errWithoutSMTPUTF8: ErrNonASCII, description: "quoted UTF-8 (RFC 6531 qtextSMTP)"},
		{in: `jö rg@example.com`, local: "jö rg", dom: "example.com", str: `"jö rg"@example.com`, errWithoutSMTPUTF8: ErrNonASCII},
		{in: strings.Repeat("ö", 32) + "@example.com", local: strings.Repeat("ö", 32), dom: "example.com", errWithoutSMTPUTF8: ErrNonASCII, description: "64 octets"},

		{in: strings.Repeat("ö", 33) + "@example.com", err: ErrTooLong, errWithoutSMTPUTF8: ErrNonASCII, description: "limits count octets (RFC 6531 §3.3)"},
		{in: "a\xff@example.com", err: ErrBadSyntax, errWithoutSMTPUTF8: ErrNonASCII, description: "not UTF-8"},
		{in: "a\u0085b@example.com", err: ErrBadSyntax, errWithoutSMTPUTF8: ErrNonASCII, description: "C1 control"},
		{in: "a@bü_cher.example", err: ErrBadSyntax, errWithoutSMTPUTF8: ErrNonASCII},
		{in: "a@ü..example", err: ErrBadSyntax, errWithoutSMTPUTF8: ErrNonASCII},
		{in: "a@[192.0.2.1ü]", err: ErrBadSyntax, errWithoutSMTPUTF8: ErrNonASCII},
		{in: "a@müller", err: ErrNotFQDN, errWithoutSMTPUTF8: ErrNonASCII},
		{in: "a@" + strings.Repeat("ü", 60) + ".example", err: ErrTooLong, errWithoutSMTPUTF8: ErrNonASCII, description: "A-label over 63 octets"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if _, err := ParseAddress(tt.in); !errors.Is(err, tt.errWithoutSMTPUTF8) {
				t.Errorf("without SMTPUTF8: error %v, want %v", err, tt.errWithoutSMTPUTF8)
			}
			a, err := ParseMailbox(tt.in, true)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("error = %v, want %v", err, tt.err)
				}
				if strings.ContainsAny(err.Error(), "\r\n") || !utf8.ValidString(err.Error()) {
					t.Errorf("unsafe error text %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Local != tt.local || a.Domain != tt.dom || a.UDomain != tt.udom {
				t.Errorf("= %q @ %q (U %q), want %q @ %q (U %q)", a.Local, a.Domain, a.UDomain, tt.local, tt.dom, tt.udom)
			}
			want := tt.str
			if want == "" {
				want = tt.in
			}
			if a.String() != want {
				t.Errorf("String() = %q, want %q", a.String(), want)
			}
			got, ok := a.ASCII()
			if ok != (tt.ascii != "") || got != tt.ascii {
				t.Errorf("ASCII() = %q, %v; want %q", got, ok, tt.ascii)
			}
			if d, ok := DowngradeAddress(a.String()); ok != (tt.ascii != "") || d != tt.ascii {
				t.Errorf("DowngradeAddress = %q, %v; want %q", d, ok, tt.ascii)
			}
			if NeedsSMTPUTF8(a.String()) == (tt.ascii == a.String()) {
				t.Errorf("NeedsSMTPUTF8(%q) wrong", a.String())
			}
			if AddressDomain(a.String()) != tt.dom {
				t.Errorf("AddressDomain = %q, want %q", AddressDomain(a.String()), tt.dom)
			}
			b, err := ParseMailbox(a.String(), true)
			if err != nil || b != a {
				t.Errorf("round trip: %+v, %v", b, err)
			}
		})
	}
}

// TestSameDomainBothForms: the two spellings of a domain are one key.
func TestSameDomainBothForms(t *testing.T) {
	u, err1 := ParseMailbox("jörg@müller.example", true)
	a, err2 := ParseMailbox("jörg@XN--MLLER-KVA.example", true)
	if err1 != nil || err2 != nil || !u.Equal(a) || u.Key() != "jörg@xn--mller-kva.example" {
		t.Errorf("%+v %v / %+v %v: keys %q %q", u, err1, a, err2, u.Key(), a.Key())
	}
	for in, want := range map[string]string{
		"Müller.Example.":       "xn--mller-kva.example",
		"xn--mller-kva.example": "xn--mller-kva.example",
		"r3--sn-x.example":      "r3--sn-x.example", // LDH, not IDNA: names DNS holds keep working
		"Example.COM":           "example.com",
	} {
		if got, err := DomainToASCII(in); err != nil || got != want {
			t.Errorf("DomainToASCII(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"bü_cher.example", "müller", "", "a..b"} {
		if got, err := DomainToASCII(in); err == nil {
			t.Errorf("DomainToASCII(%q) = %q, want an error", in, got)
		}
	}
}

// TestTraceFor: the Received: "for" clause keeps a downgradable address
// ASCII, so that our own trace field never blocks a downgrade.
func TestTraceFor(t *testing.T) {
	for in, want := range map[string]string{
		"user@example.com":     "user@example.com",
		"user@müller.example":  "user@xn--mller-kva.example",
		"jörg@müller.example":  "jörg@müller.example",
		"not an address":       "",
		`"a b"@müller.example`: `"a b"@xn--mller-kva.example`,
	} {
		if got := TraceFor(in); got != want {
			t.Errorf("TraceFor(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseMailbox: the parser of every MAIL and RCPT address. It must
// never panic; whatever it accepts has an ASCII Domain (what routes and
// DNS see), round-trips through String, compares equal in both domain
// forms, and its ASCII form, when there is one, parses without SMTPUTF8
// to the same key. Without SMTPUTF8 nothing non-ASCII is accepted.
func FuzzParseMailbox(f *testing.F) {
	for _, s := range []string{
		"jörg@müller.example", "user@MÜLLER.Example.", "jörg@xn--mller-kva.example", `"jö rg"@x.example`,
		"δοκιμή@παράδειγμα.δοκιμή", "a@faß.de", "a@ﬁ.example", "a\xff@x.example", "a@bü_cher.example",
		"a@[192.0.2.1]", "user@example.com", "a@xn--zz.example", "a@\u200dx.example", "a@٣.example",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, smtputf8 bool) {
		a, err := ParseMailbox(s, smtputf8)
		if err != nil {
			var ae *AddressError
			if !errors.As(err, &ae) {
				t.Fatalf("error of wrong type: %T %v", err, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error text with CR/LF: %q", err)
			}
			return
		}
		if !smtputf8 && !isASCII(a.String()) {
			t.Fatalf("accepted non-ASCII %q without SMTPUTF8", s)
		}
		if !isASCII(a.Domain) || strings.ToLower(a.Domain) != a.Domain || strings.HasSuffix(a.Domain, ".") {
			t.Fatalf("Domain %q is not lower-case ASCII", a.Domain)
		}
		if a.UDomain != "" {
			if d, err := DomainToASCII(a.UDomain); err != nil || d != a.Domain {
				t.Fatalf("UDomain %q maps to %q, %v; Domain is %q", a.UDomain, d, err, a.Domain)
			}
		}
		out := a.String()
		if !utf8.ValidString(out) || len(out) > maxAddressLen {
			t.Fatalf("String() %q invalid or too long", out)
		}
		for _, r := range out {
			if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
				t.Fatalf("String() %q contains control %U", out, r)
			}
		}
		b, err := ParseMailbox(out, true)
		if err != nil || b != a {
			t.Fatalf("round trip %q -> %q -> %+v, %v", s, out, b, err)
		}
		if AddressDomain(out) != a.Domain {
			t.Fatalf("AddressDomain(%q) = %q, want %q", out, AddressDomain(out), a.Domain)
		}
		if ascii, ok := a.ASCII(); ok {
			c, err := ParseAddress(ascii)
			if err != nil || c.Key() != a.Key() || len(ascii) > maxAddressLen {
				t.Fatalf("ASCII form %q of %q: %+v, %v", ascii, out, c, err)
			}
		} else if isASCII(a.Local) {
			t.Fatalf("no ASCII form for ASCII local part %q", a.Local)
		}
		if f := TraceFor(out); f == "" || strings.ContainsAny(f, "\r\n") {
			t.Fatalf("TraceFor(%q) = %q", out, f)
		}
	})
}

// BenchmarkParseMailbox: the cost per MAIL/RCPT address, ASCII (every
// address before SMTPUTF8) and internationalised (IDNA mapping).
func BenchmarkParseMailbox(b *testing.B) {
	for _, s := range []string{"first.last@example.com", "user@müller.example", "jörg@παράδειγμα.δοκιμή"} {
		b.Run(s, func(b *testing.B) {
			for b.Loop() {
				if _, err := ParseMailbox(s, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
