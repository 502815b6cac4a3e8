package tlspolicy

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"securerelay/internal/testutil"
)

// FuzzTLSA: TLSA records come from DNS. Whatever their fields, filtering
// and matching must not panic, only DANE-TA/DANE-EE with known selectors
// and matching types may be used, and a record that authenticates the
// certificate must really be about it.
func FuzzTLSA(f *testing.F) {
	cert := testutil.SelfSigned(f, "mx.example").Leaf
	good, _ := dns.CertificateToDANE(1, 1, cert)
	f.Add(uint8(3), uint8(1), uint8(1), good)
	f.Add(uint8(2), uint8(0), uint8(0), "00")
	f.Add(uint8(3), uint8(1), uint8(2), good)
	f.Add(uint8(1), uint8(1), uint8(1), good)
	f.Add(uint8(3), uint8(7), uint8(1), "zz")
	f.Fuzz(func(t *testing.T, usage, selector, matching uint8, data string) {
		r := &dns.TLSA{Usage: usage, Selector: selector, MatchingType: matching, Certificate: data}
		usable := usableTLSA([]*dns.TLSA{r})
		if len(usable) == 1 && (usage != 2 && usage != 3 || selector > 1 || matching > 2) {
			t.Fatalf("unusable record kept: %v", r)
		}
		res := daneCheck([]*x509.Certificate{cert}, usable, []string{"mx.example"}, time.Now())
		if res.ok() {
			want, err := dns.CertificateToDANE(selector, matching, cert)
			if err != nil || !strings.EqualFold(want, data) {
				t.Fatalf("record %v authenticated a certificate it does not describe", r)
			}
		}
	})
}
