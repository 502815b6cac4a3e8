package dnsutil

import (
	"encoding/hex"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzUnescapeTXT checks that LookupTXT's unescaping gives back exactly the
// bytes of a character-string as it was on the wire, whatever miekg/dns
// escaped on the way in.
func FuzzUnescapeTXT(f *testing.F) {
	for _, s := range []string{"", "v=spf1 -all", `a"b\c`, "\x00\x7f\xff", `\065`, "\\"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 255 {
			raw = raw[:255]
		}
		// RFC 3597 lets us put exact rdata on the wire without packing it ourselves.
		rdata := append([]byte{byte(len(raw))}, raw...)
		unknown := &dns.RFC3597{
			Hdr:   dns.RR_Header{Name: "t.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
			Rdata: hex.EncodeToString(rdata),
		}
		m := new(dns.Msg)
		m.SetQuestion("t.example.", dns.TypeTXT)
		m.Answer = []dns.RR{unknown}
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		var back dns.Msg
		if err := back.Unpack(wire); err != nil {
			t.Fatal(err)
		}
		txt, ok := back.Answer[0].(*dns.TXT)
		if !ok || len(txt.Txt) != 1 {
			t.Fatalf("unpacked %v", back.Answer[0])
		}
		if got := unescapeTXT(txt.Txt[0]); got != string(raw) {
			t.Errorf("unescapeTXT(%q) = %q, want %q", txt.Txt[0], got, raw)
		}
	})
}

// FuzzInterpret feeds arbitrary replies to the code that decides what a
// reply means: it must not panic, and whatever it accepts must be records
// of the asked type.
func FuzzInterpret(f *testing.F) {
	seed := func(answers ...string) []byte {
		m := new(dns.Msg)
		m.SetQuestion("example.org.", dns.TypeMX)
		m.Response = true
		for _, a := range answers {
			rr, err := dns.NewRR(a)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed("example.org. MX 10 mx.example.org."))
	f.Add(seed("example.org. CNAME a.example.", "a.example. CNAME example.org."))
	f.Add(seed("example.org. CNAME a.example.", "A.EXAMPLE. MX 0 ."))
	f.Add(seed())
	f.Fuzz(func(t *testing.T, wire []byte) {
		var r dns.Msg
		if err := r.Unpack(wire); err != nil {
			return
		}
		rrs, kind, err := interpret(&r, "example.org.", dns.TypeMX)
		if err != nil || kind != Temporary {
			if len(rrs) != 0 {
				t.Fatalf("records with an error: %v %v", kind, err)
			}
			return
		}
		for _, rr := range rrs {
			mx, ok := rr.(*dns.MX)
			if !ok {
				t.Fatalf("accepted %T for MX", rr)
			}
			if h := normalizeHost(mx.Mx); h != "." && (strings.HasSuffix(h, ".") || h != strings.ToLower(h)) {
				t.Fatalf("normalizeHost(%q) = %q", mx.Mx, h)
			}
		}
	})
}
