package dkim

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestTXTRecordAndZoneEntry(t *testing.T) {
	rk := testRSAKey(t)
	ek := testEd25519Key(t)
	for _, tc := range []struct {
		name     string
		pub      any
		prefix   string
		oneLine  bool
		pBytes   int // decoded p= length; 0: don't check
		rsaChunk bool
	}{
		{"rsa2048", rk.Public(), "v=DKIM1; k=rsa; p=MIIB", false, 294, true},
		{"ed25519", ek.Public(), "v=DKIM1; k=ed25519; p=", true, 32, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			txt, err := TXTRecord(tc.pub)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(txt, tc.prefix) {
				t.Errorf("TXTRecord = %q, want prefix %q", txt, tc.prefix)
			}
			_, p, _ := strings.Cut(txt, "p=")
			if der, err := base64.StdEncoding.DecodeString(p); err != nil || len(der) != tc.pBytes {
				t.Errorf("p= decodes to %d bytes (%v), want %d", len(der), err, tc.pBytes)
			}
			entry := ZoneEntry("example.com", "s2026", txt)
			if strings.Contains(entry, "\n") == tc.oneLine {
				t.Errorf("ZoneEntry one line = %v, want %v:\n%s", !tc.oneLine, tc.oneLine, entry)
			}
			if !strings.HasPrefix(entry, "s2026._domainkey.example.com. IN TXT ") {
				t.Errorf("ZoneEntry = %q", entry)
			}
			// A real zone parser reads it back as the same record.
			rr, err := dns.NewRR(entry)
			if err != nil {
				t.Fatalf("zone parser rejects %q: %v", entry, err)
			}
			tr := rr.(*dns.TXT)
			if tr.Hdr.Name != "s2026._domainkey.example.com." {
				t.Errorf("owner %q", tr.Hdr.Name)
			}
			for _, s := range tr.Txt {
				if len(s) > 255 {
					t.Errorf("string of %d octets", len(s))
				}
			}
			if got := strings.Join(tr.Txt, ""); got != txt {
				t.Errorf("zone entry round trip:\n got %q\nwant %q", got, txt)
			}
			if tc.rsaChunk && len(tr.Txt) < 2 {
				t.Errorf("2048-bit RSA record not split: %d strings", len(tr.Txt))
			}
			if r, d := CheckRecord([]string{txt}, tc.pub); r != CheckOK {
				t.Errorf("CheckRecord(own record) = %v %s", r, d)
			}
		})
	}
	if _, err := TXTRecord("not a key"); err == nil {
		t.Error("TXTRecord accepted a string")
	}
	if got := RecordName("example.com", "s1"); got != "s1._domainkey.example.com" {
		t.Errorf("RecordName = %q", got)
	}
	if got := ZoneEntry("example.com.", "s", `a"b\c`); got != `s._domainkey.example.com. IN TXT "a\"b\\c"` {
		t.Errorf("ZoneEntry quoting = %s", got)
	}
}

func TestCheckRecord(t *testing.T) {
	rk := testRSAKey(t)
	ek := testEd25519Key(t)
	rsaTXT, _ := TXTRecord(rk.Public())
	edTXT, _ := TXTRecord(ek.Public())
	otherEd, _, _ := ed25519.GenerateKey(rand.Reader)
	otherTXT, _ := TXTRecord(otherEd)
	_, rsaP, _ := strings.Cut(rsaTXT, "p=")
	_, edP, _ := strings.Cut(edTXT, "p=")

	for _, tc := range []struct {
		name string
		txts []string
		pub  any
		want CheckResult
	}{
		{"rsa ok", []string{rsaTXT}, rk.Public(), CheckOK},
		{"ed ok", []string{edTXT}, ek.Public(), CheckOK},
		{"rsa without v= and k=", []string{"p=" + rsaP}, rk.Public(), CheckOK},
		{"whitespace in p=", []string{"v=DKIM1; k=ed25519; p=" + edP[:10] + " \t" + edP[10:] + " ;"}, ek.Public(), CheckOK},
		{"strings of one record passed separately", []string{rsaTXT[:255], rsaTXT[255:]}, rk.Public(), CheckOK},
		{"unrelated TXT next to the key", []string{"google-site-verification=abc", edTXT}, ek.Public(), CheckOK},
		{"testing flag", []string{edTXT + "; t=y"}, ek.Public(), CheckOK},
		{"missing", nil, ek.Public(), CheckMissing},
		{"only SPF", []string{"v=spf1 -all"}, ek.Public(), CheckMalformed},
		{"other key", []string{otherTXT}, ek.Public(), CheckMismatch},
		{"rsa record, ed key", []string{rsaTXT}, ek.Public(), CheckMalformed},
		{"ed record, rsa key", []string{edTXT}, rk.Public(), CheckMalformed},
		{"k=rsa with ed25519 bytes", []string{"v=DKIM1; k=rsa; p=" + edP}, ek.Public(), CheckMalformed},
		{"revoked", []string{"v=DKIM1; k=ed25519; p="}, ek.Public(), CheckRevoked},
		{"no p=", []string{"v=DKIM1; k=ed25519"}, ek.Public(), CheckMalformed},
		{"bad base64", []string{"v=DKIM1; k=ed25519; p=!!!"}, ek.Public(), CheckMalformed},
		{"truncated ed key", []string{"v=DKIM1; k=ed25519; p=" + edP[:20]}, ek.Public(), CheckMalformed},
		{"truncated rsa key", []string{"v=DKIM1; k=rsa; p=" + rsaP[:200]}, rk.Public(), CheckMalformed},
		{"v=DKIM2", []string{"v=DKIM2; k=ed25519; p=" + edP}, ek.Public(), CheckMalformed},
		{"v= not first", []string{"k=ed25519; v=DKIM1; p=" + edP}, ek.Public(), CheckMalformed},
		{"h=sha1 only", []string{"v=DKIM1; h=sha1; p=" + rsaP}, rk.Public(), CheckMalformed},
		{"duplicate tag", []string{"v=DKIM1; k=ed25519; p=" + edP + "; p=" + edP}, ek.Public(), CheckMalformed},
		{"two key records", []string{edTXT, otherTXT}, ek.Public(), CheckMalformed},
		{"unknown k=", []string{"v=DKIM1; k=dsa; p=" + edP}, ek.Public(), CheckMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, detail := CheckRecord(tc.txts, tc.pub)
			if got != tc.want {
				t.Errorf("CheckRecord = %v (%s), want %v", got, detail, tc.want)
			}
			if detail == "" {
				t.Error("empty detail")
			}
		})
	}
}
