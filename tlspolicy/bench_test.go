package tlspolicy_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

// BenchmarkDecideForMX is the per-delivery cost of the decision when a
// rule decides (no DNS, no HTTP): what every message to a partner pays.
func BenchmarkDecideForMX(b *testing.B) {
	var rules []tlspolicy.Rule
	for i := range 1000 {
		rules = append(rules, tlspolicy.Rule{Match: fmt.Sprintf("partner%d.example", i), Level: tlspolicy.Verify})
	}
	rules = append(rules, tlspolicy.Rule{Match: ".example", Level: tlspolicy.Encrypt})
	d, err := tlspolicy.New(tlspolicy.Options{Rules: rules})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		p, err := d.Decide(ctx, "mail.partner500.example", false, false)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.ForMX(ctx, "mx1.partner500.example"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckVerify is the certificate check of verify on one
// connection (chain to a test root, name), as Check runs it.
func BenchmarkCheckVerify(b *testing.B) {
	t := &testing.T{}
	ca := testutil.NewCA(t, "bench CA")
	cert := issue(t, ca, []string{"mx1.partner.example"}, testutil.CertSpec{})
	d, err := tlspolicy.New(tlspolicy.Options{RootCAs: ca.Pool, Rules: []tlspolicy.Rule{{Match: "partner.example", Level: tlspolicy.Verify}}})
	if err != nil {
		b.Fatal(err)
	}
	p, _ := d.Decide(b.Context(), "partner.example", false, false)
	h, _ := p.ForMX(b.Context(), "mx1.partner.example")
	cs := &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true, PeerCertificates: []*x509.Certificate{cert.Leaf, ca.Cert}}
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Check(true, cs, nil); err != nil {
			b.Fatal(err)
		}
	}
}
