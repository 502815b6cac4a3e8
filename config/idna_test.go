package config

import (
	"strings"
	"testing"
)

// FuzzDomainName: every domain in the configuration passes domainName.
// Whatever it accepts is a lower-case ASCII host name that it maps to
// itself (one form, so a normalised configuration normalises to the
// same), and U-labels and their A-labels give the same result.
func FuzzDomainName(f *testing.F) {
	for _, s := range []string{"müller.example", "Müller.Example.", "xn--mller-kva.example", "XN--MLLER-KVA.example",
		"ﬁle.example", "xn--zz.example", "r3--sn-x.example", "a_b.example", "日本.jp", "faß.de", " x.example ", "ab--cd.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := domainName(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error text with CR/LF: %q", err)
			}
			return
		}
		for i := 0; i < len(d); i++ {
			if c := d[i]; c >= 0x80 || c >= 'A' && c <= 'Z' {
				t.Fatalf("domainName(%q) = %q: not lower-case ASCII", s, d)
			}
		}
		if err := checkDomainName(d, false); err != nil {
			t.Fatalf("domainName(%q) = %q, which checkDomainName refuses: %v", s, d, err)
		}
		if again, err := domainName(d); err != nil || again != d {
			t.Fatalf("domainName(%q) = %q, but domainName(%q) = %q, %v", s, d, d, again, err)
		}
		if a, err := addressName("u@" + s); err != nil || a != "u@"+d {
			t.Fatalf("addressName(u@%q) = %q, %v; want u@%s", s, a, err, d)
		}
	})
}
