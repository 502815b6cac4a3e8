package inbound

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"securerelay/smtputil"
)

// FuzzDNSBLName: any client address gives a query name of the RFC 5782
// shape (4 labels for IPv4, 32 nibbles for IPv6, then the zone) that the
// DNS library can carry.
func FuzzDNSBLName(f *testing.F) {
	f.Add([]byte{192, 0, 2, 1}, "bl.test")
	f.Add(make([]byte, 16), "zen.spamhaus.org.")
	f.Fuzz(func(t *testing.T, raw []byte, zone string) {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok || strings.ContainsAny(zone, " \x00") || zone == "" {
			return
		}
		name := dnsblName(ip.Unmap(), zone)
		labels := strings.Count(strings.TrimSuffix(name, "."+strings.TrimSuffix(zone, ".")), ".") + 1
		want := 4
		if !ip.Unmap().Is4() {
			want = 32
		}
		if labels != want {
			t.Fatalf("%s in %s: %q has %d address labels, want %d", ip, zone, name, labels, want)
		}
	})
}

// FuzzRecipientsFile: any file content loads without a panic, and every
// non-comment line that is a plain local part is then found.
func FuzzRecipientsFile(f *testing.F) {
	f.Add("bob\n# comment\nalice@ours.test # x\n")
	f.Add("\x00\n\n###\n   \t\n")
	f.Fuzz(func(t *testing.T, content string) {
		p := filepath.Join(t.TempDir(), "users")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		set, err := NewRecipientSet(nil, p, nil)
		if err != nil {
			return // e.g. a line longer than the scanner takes
		}
		for _, line := range strings.Split(content, "\n") {
			l := strings.TrimSpace(line)
			if i := strings.IndexByte(l, '#'); i >= 0 {
				l = strings.TrimSpace(l[:i])
			}
			if l == "" || strings.ContainsAny(l, "@\r\x00 \t") {
				continue
			}
			if !set.Has(smtputil.Address{Local: l, Domain: "ours.test"}) {
				t.Fatalf("line %q not found", l)
			}
		}
	})
}
