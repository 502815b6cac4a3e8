package tlspolicy_test

import (
	"context"
	"crypto/tls"
	"testing"

	"securerelay/tlspolicy"
)

// The site-wide minimum raises every level that requires TLS, rules
// included, and leaves may alone (its fallback is clear text).
func TestSiteMinVersion(t *testing.T) {
	for _, c := range []struct {
		def  tlspolicy.Level
		dom  string
		want uint16
	}{
		{tlspolicy.Encrypt, "other.example", tls.VersionTLS13},
		{tlspolicy.May, "other.example", tls.VersionTLS10},
		{tlspolicy.May, "partner.example", tls.VersionTLS13}, // rule: verify
	} {
		d, err := tlspolicy.New(tlspolicy.Options{Default: c.def, MinVersion: tls.VersionTLS13,
			Rules: []tlspolicy.Rule{{Match: "partner.example", Level: tlspolicy.Verify}}})
		if err != nil {
			t.Fatal(err)
		}
		p, err := d.Decide(context.Background(), c.dom, false, false)
		if err != nil {
			t.Fatal(err)
		}
		h, err := p.ForRelay(context.Background(), "relay.example")
		if err != nil {
			t.Fatal(err)
		}
		if h.MinVersion != c.want {
			t.Errorf("default %s, %s: min version %s, want %s", c.def, c.dom, tls.VersionName(h.MinVersion), tls.VersionName(c.want))
		}
	}
}
