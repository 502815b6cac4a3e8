package smtputil

import (
	"errors"
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		in          string
		local, dom  string
		str         string // String(); empty means in
		err         error
		trick       bool
		ipLiteral   bool
		description string
	}{
		{in: "user@example.com", local: "user", dom: "example.com"},
		{in: "USER@EXAMPLE.COM", local: "USER", dom: "example.com", str: "USER@example.com", description: "domain folded, local kept"},
		{in: "user@example.com.", local: "user", dom: "example.com", str: "user@example.com"},
		{in: "first.last+tag@sub.example.co.uk", local: "first.last+tag", dom: "sub.example.co.uk"},
		{in: "user@xn--bcher-kva.example", local: "user", dom: "xn--bcher-kva.example"},
		{in: "user@1example.com", local: "user", dom: "1example.com"},
		{in: "user@[127.0.0.1]", local: "user", dom: "[127.0.0.1]", ipLiteral: true},
		{in: "user@[IPv6:2001:DB8::1]", local: "user", dom: "[ipv6:2001:db8::1]", str: "user@[ipv6:2001:db8::1]", ipLiteral: true},
		{in: "user@[IPv6:::ffff:192.0.2.1]", local: "user", dom: "[ipv6:::ffff:192.0.2.1]", str: "user@[ipv6:::ffff:192.0.2.1]", ipLiteral: true},

		// Quoted local parts, both as go-smtp hands them (unquoted) and
		// with the quotes still present.
		{in: `"a b"@example.com`, local: "a b", dom: "example.com"},
		{in: `a b@example.com`, local: "a b", dom: "example.com", str: `"a b"@example.com`},
		{in: `"a\"b"@example.com`, local: `a"b`, dom: "example.com"},
		{in: `"a\\b"@example.com`, local: `a\b`, dom: "example.com"},
		{in: `a..b@example.com`, local: "a..b", dom: "example.com", str: `"a..b"@example.com`},
		{in: `.a@example.com`, local: ".a", dom: "example.com", str: `".a"@example.com`},
		{in: `"plain"@example.com`, local: "plain", dom: "example.com", str: "plain@example.com"},

		// Routing tricks: valid syntax, refused by RoutingTrick.
		{in: "user%other.test@example.com", local: "user%other.test", dom: "example.com", trick: true},
		{in: "other!user@example.com", local: "other!user", dom: "example.com", trick: true},
		{in: `"user@other"@example.com`, local: "user@other", dom: "example.com", trick: true},
		{in: `user@other@example.com`, local: "user@other", dom: "example.com", str: `"user@other"@example.com`, trick: true},
		{in: `"@hop:user"@example.com`, local: "@hop:user", dom: "example.com", trick: true},
		{in: `"hop:user"@example.com`, local: "hop:user", dom: "example.com", trick: true},
		{in: `"a,b"@example.com`, local: "a,b", dom: "example.com", trick: true},

		// Limits.
		{in: long(64) + "@example.com", local: long(64), dom: "example.com"},
		{in: long(65) + "@example.com", err: ErrTooLong},
		{in: `"` + long(62) + ` "@example.com`, err: ErrTooLong, description: "quotes count toward 64"},
		{in: "u@" + long(63) + ".com", local: "u", dom: long(63) + ".com"},
		{in: "u@" + long(64) + ".com", err: ErrTooLong},
		{in: "u@" + strings.Repeat(long(60)+".", 5) + "com", err: ErrTooLong, description: "address over 254"},
		{in: strings.Repeat("a", 5000), err: ErrTooLong},

		// Syntax errors.
		{in: "", err: ErrBadSyntax},
		{in: "user", err: ErrNotFQDN},
		{in: "@example.com", err: ErrBadSyntax},
		{in: `""@example.com`, err: ErrBadSyntax},
		{in: "user@", err: ErrBadSyntax},
		{in: "user@.", err: ErrBadSyntax},
		{in: "user@example..com", err: ErrBadSyntax},
		{in: "user@example.com..", err: ErrBadSyntax},
		{in: "user@.example.com", err: ErrBadSyntax},
		{in: "user@exa_mple.com", err: ErrBadSyntax},
		{in: "user@-example.com", err: ErrBadSyntax},
		{in: "user@example-.com", err: ErrBadSyntax},
		{in: "user@exa mple.com", err: ErrBadSyntax},
		{in: "user@1.2.3.4", err: ErrBadSyntax, description: "IP without brackets"},
		{in: "user@[1.2.3]", err: ErrBadSyntax},
		{in: "user@[300.1.1.1]", err: ErrBadSyntax},
		{in: "user@[127.0.0.1", err: ErrBadSyntax},
		{in: "user@[2001:db8::1]", err: ErrBadSyntax, description: "IPv6 needs the tag"},
		{in: "user@[IPv6:1.2.3.4]", err: ErrBadSyntax},
		{in: "user@[IPv6:fe80::1%eth0]", err: ErrBadSyntax},
		{in: "user@[x-tag:foo]", err: ErrBadSyntax},
		{in: "us\x01er@example.com", err: ErrBadSyntax},
		{in: "us\ter@example.com", err: ErrBadSyntax},
		{in: "a@localhost", err: ErrNotFQDN},
		{in: "a@localhost.", err: ErrNotFQDN},
		{in: "üser@example.com", err: ErrNonASCII},
		{in: "user@bücher.example", err: ErrNonASCII},
	}
	for _, tt := range tests {
		name := tt.in
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			a, err := ParseAddress(tt.in)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("ParseAddress(%q) error = %v, want %v", tt.in, err, tt.err)
				}
				var ae *AddressError
				if !errors.As(err, &ae) || ae.Detail == "" {
					t.Errorf("error %v is not an *AddressError with detail", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAddress(%q): %v", tt.in, err)
			}
			if a.Local != tt.local || a.Domain != tt.dom {
				t.Errorf("ParseAddress(%q) = %q @ %q, want %q @ %q", tt.in, a.Local, a.Domain, tt.local, tt.dom)
			}
			want := tt.str
			if want == "" {
				want = tt.in
			}
			if got := a.String(); got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}
			if got := RoutingTrick(a) != ""; got != tt.trick {
				t.Errorf("RoutingTrick(%q) = %q, want trick=%v", tt.in, RoutingTrick(a), tt.trick)
			}
			if a.IsIPLiteral() != tt.ipLiteral {
				t.Errorf("IsIPLiteral() = %v", a.IsIPLiteral())
			}
			if _, ok := a.LiteralIP(); ok != tt.ipLiteral {
				t.Errorf("LiteralIP ok = %v", ok)
			}
			// What String() produces must parse back to the same address.
			b, err := ParseAddress(a.String())
			if err != nil || !b.Equal(a) || b != a {
				t.Errorf("round trip of %q: %+v, %v", a.String(), b, err)
			}
		})
	}
}

func TestAddressKey(t *testing.T) {
	a, _ := ParseAddress("User@Example.COM.")
	b, _ := ParseAddress("User@example.com")
	c, _ := ParseAddress("user@example.com")
	if a.Key() != "User@example.com" || !a.Equal(b) {
		t.Errorf("Key = %q, Equal = %v", a.Key(), a.Equal(b))
	}
	if a.Equal(c) {
		t.Error("local parts differing in case must not be Equal (RFC 5321 §2.4)")
	}
}

func TestLiteralIP(t *testing.T) {
	a, err := ParseAddress("x@[IPv6:2001:db8::1]")
	if err != nil {
		t.Fatal(err)
	}
	ip, ok := a.LiteralIP()
	if !ok || ip.String() != "2001:db8::1" {
		t.Errorf("LiteralIP = %v, %v", ip, ok)
	}
	a, _ = ParseAddress("x@example.com")
	if _, ok := a.LiteralIP(); ok {
		t.Error("LiteralIP on a name")
	}
}

func TestParseDomain(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM.": "example.com",
		"[192.0.2.1]":  "[192.0.2.1]",
	} {
		if got, err := ParseDomain(in); err != nil || got != want {
			t.Errorf("ParseDomain(%q) = %q, %v", in, got, err)
		}
	}
	for in, kind := range map[string]error{
		"localhost":    ErrNotFQDN,
		"bücher.de":    ErrNonASCII,
		"a..b":         ErrBadSyntax,
		"":             ErrBadSyntax,
		"under_sc.com": ErrBadSyntax,
	} {
		if _, err := ParseDomain(in); !errors.Is(err, kind) {
			t.Errorf("ParseDomain(%q) error = %v, want %v", in, err, kind)
		}
	}
}

func TestErrorTextIsSafe(t *testing.T) {
	_, err := ParseAddress("a\x00b\rc\nd@exa mple.com")
	if err == nil || strings.ContainsAny(err.Error(), "\r\n\x00") {
		t.Errorf("error text must not carry control characters: %q", err)
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"user@example.com", "USER@EXAMPLE.COM.", `"a b"@x.example`, "a b@x.example",
		"user%other.test@example.com", "other!user@example.com", `"user@other"@example.com`,
		"user@[127.0.0.1]", "user@[IPv6:2001:db8::1]", "a@localhost", `"a\"b"@example.com`,
		`"unterminated@example.com`, "@", "a@b@c.d", "user@bücher.example", "a@1.2.3.4",
		strings.Repeat("x", 70) + "@example.com",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
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
		out := a.String()
		if len(out) > maxAddressLen {
			t.Fatalf("accepted %q longer than %d", out, maxAddressLen)
		}
		if strings.ToLower(a.Domain) != a.Domain || strings.HasSuffix(a.Domain, ".") {
			t.Fatalf("domain not normalised: %q", a.Domain)
		}
		for i := 0; i < len(out); i++ {
			if out[i] < 0x20 || out[i] > 0x7e {
				t.Fatalf("String() %q contains octet 0x%02x", out, out[i])
			}
		}
		b, err := ParseAddress(out)
		if err != nil || b != a {
			t.Fatalf("round trip %q -> %q -> %+v, %v", s, out, b, err)
		}
		if a.Key() != b.Key() {
			t.Fatalf("key changed on round trip")
		}
	})
}

func TestMatchDomain(t *testing.T) {
	for _, c := range []struct {
		pattern, domain string
		want            bool
	}{
		{"example.org", "example.org", true},
		{"example.org", "mail.example.org", false},
		{".example.org", "mail.example.org", true},
		{".example.org", "example.org", false},
		{".example.org", "badexample.org", false},
		{"example.org", "example.com", false},
	} {
		if got := MatchDomain(c.pattern, c.domain); got != c.want {
			t.Errorf("MatchDomain(%q, %q) = %v, want %v", c.pattern, c.domain, got, c.want)
		}
	}
}
