package inbound_test

import (
	"net/netip"
	"testing"
	"time"

	"securerelay/inbound"
	"securerelay/smtpd"
)

// BenchmarkEnvelopePipeline: screening (cached after the first client),
// MAIL with the sender-domain check (DNS answered by an in-memory mock, as
// a cached resolver would), and RCPT against a recipient list.
//
// go test -run XXX -bench EnvelopePipeline -benchmem ./inbound/
func BenchmarkEnvelopePipeline(b *testing.B) {
	set, _ := inbound.NewRecipientSet([]string{"bob", "alice"}, "", nil)
	r := inbound.NewWithOptions(inbound.Options{
		Domains: []string{"ours.test"}, Resolver: dnsMock(),
		Recipients: map[string]*inbound.RecipientSet{"ours.test": set},
		Screen: inbound.Screen{CacheTTL: time.Hour, DNSBL: inbound.DNSBL{Threshold: 3, Timeout: time.Second,
			Lists: []inbound.DNSBLList{{Zone: "bl.test", Weight: 3}}}},
	})
	st := &smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.7"), Helo: "mail.mx.example"}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Connect(st); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Mail(st, "sender@mx.example", nil); err != nil {
			b.Fatal(err)
		}
		if _, err := r.Rcpt(st, "bob@ours.test", nil); err != nil {
			b.Fatal(err)
		}
	}
}
