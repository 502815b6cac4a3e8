package smtp

// securerelay: fuzz tests of the DSN parameter parsers (RFC 3461 §4,
// RFC 6533), which the relay relies on for what it keeps and passes on.

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// isXtext checks RFC 3461 §4's xtext grammar strictly.
func isXtext(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '+':
			if i+2 >= len(s) || !strings.ContainsRune("0123456789ABCDEF", rune(s[i+1])) || !strings.ContainsRune("0123456789ABCDEF", rune(s[i+2])) {
				return false
			}
			i += 2
		case c < '!' || c > '~' || c == '=':
			return false
		}
	}
	return true
}

func FuzzDecodeXtext(f *testing.F) {
	for _, s := range []string{"", "QQ314159", "a+2Bb+3Dc+20d", "+", "+4", "+4g", "+FF", "a=b", "+7E+7F", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		dec, err := decodeXtext(s)
		if err != nil {
			return
		}
		// What decodes as an ENVID is printable ASCII and re-encodes to a
		// value that decodes to it again.
		if isPrintableASCII(dec) {
			enc := encodeXtext(dec)
			if !isXtext(enc) {
				t.Fatalf("encodeXtext(%q) = %q is not xtext", dec, enc)
			}
			if back, err := decodeXtext(enc); err != nil || back != dec {
				t.Fatalf("xtext round trip of %q: %q, %v", dec, back, err)
			}
		}
		// A value with a "+" that is not "+HH" never decodes.
		if strings.Contains(s, "+") && !isXtext(strings.Map(func(r rune) rune {
			if r == '=' || r > '~' || r < '!' {
				return 'x'
			}
			return r
		}, s)) {
			t.Fatalf("decodeXtext(%q) accepted a bad hexchar: %q", s, dec)
		}
	})
}

func FuzzTypedAddress(f *testing.F) {
	for _, s := range []string{"rfc822;bob@example.org", "RFC822;a+20b@x", `utf-8;j\x{F6}rg@x`, "utf-8;jörg@x", "x400;a", ";a", "rfc822;", `utf-8;\x{0}`, `utf-8;\x{D800}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		typ, addr, err := decodeTypedAddress(s)
		if err != nil {
			return
		}
		switch typ {
		case DSNAddressTypeRFC822:
			if !isPrintableASCII(addr) {
				t.Fatalf("rfc822 ORCPT %q decoded to non-printable %q", s, addr)
			}
		case DSNAddressTypeUTF8:
			if !utf8.ValidString(addr) || strings.ContainsRune(addr, 0) {
				t.Fatalf("utf-8 ORCPT %q decoded to %q", s, addr)
			}
			enc := encodeUTF8AddrXtext(addr)
			if typ2, back, err := decodeTypedAddress("utf-8;" + enc); err != nil || typ2 != typ || back != addr {
				t.Fatalf("utf-8 ORCPT %q: re-encoded %q decodes to %q, %v", addr, enc, back, err)
			}
		default:
			t.Fatalf("ORCPT %q: unknown type %q accepted", s, typ)
		}
	})
}

func FuzzNotify(f *testing.F) {
	for _, s := range []string{"NEVER", "SUCCESS,FAILURE,DELAY", "success", "NEVER,SUCCESS", "", ",", "FAILURE,FAILURE"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var n []DSNNotify
		for _, v := range strings.Split(s, ",") {
			n = append(n, DSNNotify(strings.ToUpper(v)))
		}
		if checkNotifySet(n) != nil {
			return
		}
		seen := map[DSNNotify]bool{}
		for _, v := range n {
			if seen[v] || v != DSNNotifyNever && v != DSNNotifySuccess && v != DSNNotifyFailure && v != DSNNotifyDelayed {
				t.Fatalf("NOTIFY=%q accepted with %q", s, v)
			}
			seen[v] = true
		}
		if seen[DSNNotifyNever] && len(n) > 1 {
			t.Fatalf("NOTIFY=%q: NEVER combined with others accepted", s)
		}
	})
}
