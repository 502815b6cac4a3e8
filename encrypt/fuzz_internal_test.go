package encrypt

import (
	"bytes"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/miekg/dns"
)

func TestWKDHashVector(t *testing.T) {
	// WKD draft, section 3.1: "Joe.Doe@Example.ORG".
	if got := wkdHash("Joe.Doe"); got != "iy9q119eutrkn8s1mk4r39qejnbu3n5q" {
		t.Errorf("wkdHash(Joe.Doe) = %s", got)
	}
	// Only ASCII is mapped to lower case.
	if wkdHash("ÄA") != wkdHash("Äa") || wkdHash("Ä") == wkdHash("ä") {
		t.Error("wkdHash must lower-case ASCII letters only")
	}
}

func TestOPENPGPKEYNameVector(t *testing.T) {
	// RFC 7929, section 3.
	if got := openpgpkeyName("hugh", "example.com"); got != "c93f1e400f26708f98cb19d936620da35eec8f72e57f9eec01c1afd6._openpgpkey.example.com" {
		t.Errorf("openpgpkeyName(hugh@example.com) = %s", got)
	}
}

func TestParseRecipient(t *testing.T) {
	for in, want := range map[string]string{"Alice@Partner.Example.": "alice@partner.example", "a+b@x.example": "a+b@x.example",
		// SMTPUTF8 recipients: the key sources look the domain up in
		// A-labels; RFC 7929 and WKD hash a UTF-8 local part as it is.
		"ä@x.example": "ä@x.example", "Jörg@Bücher.Example": "jörg@xn--bcher-kva.example"} {
		r, err := parseRecipient(in)
		if err != nil || r.key != want {
			t.Errorf("parseRecipient(%q) = %+v, %v; want key %s", in, r, err, want)
		}
	}
	for _, in := range []string{"", "nodomain", "a@[192.0.2.1]", "a@localhost", "a@b..example", "a\x80@x.example"} {
		if _, err := parseRecipient(in); err == nil {
			t.Errorf("parseRecipient(%q) accepted", in)
		}
	}
	if _, err := NormalizeFingerprint("0x" + strings.Repeat("ab", 20)); err != nil {
		t.Error(err)
	}
}

// ---- fuzzing: everything that parses input from other people's servers
// (WKD answers, OPENPGPKEY records) or from files an admin drops in ----

var (
	seedOnce sync.Once
	seedBin  [][]byte
)

// seeds are keys made in-process (fast; the gpg-made keys need the
// tests' GNUPGHOME): one usable, one signing-only, truncated and armoured
// forms.
func seeds(f *testing.F) [][]byte {
	seedOnce.Do(func() {
		cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
		for _, uid := range []string{"a@b.example", "c@b.example"} {
			e, err := openpgp.NewEntity("A", "", uid, cfg)
			if err != nil {
				f.Fatal(err)
			}
			if uid == "c@b.example" {
				e.Subkeys = nil
			}
			var b bytes.Buffer
			if err := e.Serialize(&b); err != nil {
				f.Fatal(err)
			}
			seedBin = append(seedBin, b.Bytes(), b.Bytes()[:b.Len()/2])
			var a bytes.Buffer
			w, _ := armor.Encode(&a, openpgp.PublicKeyType, nil)
			w.Write(b.Bytes())
			w.Close()
			seedBin = append(seedBin, a.Bytes())
		}
	})
	return seedBin
}

// FuzzWKDAnswer feeds a WKD answer body through what Lookup does with it.
func FuzzWKDAnswer(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Add([]byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n=\n-----END PGP PUBLIC KEY BLOCK-----\n"))
	d := &Directory{o: Options{Now: time.Now}}
	r, _ := parseRecipient("a@b.example")
	f.Fuzz(func(t *testing.T, data []byte) {
		k, refused, err := d.evaluate(SourceWKD, r, &cacheEntry{Origin: "https://b.example/x", Data: data}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if k != nil && (k.Entity == nil || unusable(k.Entity, r.key, true, time.Now()) != "") {
			t.Fatalf("unusable key returned: %+v", k)
		}
		if k == nil && len(refused) == 0 && len(data) > 0 {
			// Every answer with data ends in a key or a reason.
			t.Fatalf("no key and no refusal for %d bytes", len(data))
		}
	})
}

// FuzzOPENPGPKEY feeds OPENPGPKEY records (RDATA bytes, and presentation
// text that may not be base64) through the record and key parsing.
func FuzzOPENPGPKEY(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s, "")
	}
	f.Add([]byte{}, "not base64 !")
	d := &Directory{o: Options{Now: time.Now}}
	r, _ := parseRecipient("a@b.example")
	f.Fuzz(func(t *testing.T, rdata []byte, text string) {
		hdr := dns.RR_Header{Name: "x._openpgpkey.b.example.", Rrtype: dns.TypeOPENPGPKEY, Class: dns.ClassINET, Ttl: 300}
		rrs := []dns.RR{&dns.OPENPGPKEY{Hdr: hdr, PublicKey: base64.StdEncoding.EncodeToString(rdata)}, &dns.OPENPGPKEY{Hdr: hdr, PublicKey: text}}
		// Through the wire format too, as the resolver hands it over.
		m := new(dns.Msg)
		m.SetQuestion("x._openpgpkey.b.example.", dns.TypeOPENPGPKEY)
		m.Answer = rrs[:1]
		if wire, err := m.Pack(); err == nil {
			var m2 dns.Msg
			if err := m2.Unpack(wire); err == nil {
				rrs = append(rrs, m2.Answer...)
			}
		}
		data, ttl, _ := openpgpkeyData(rrs)
		if len(data) > maxRemoteKeyData || ttl < 0 {
			t.Fatalf("%d bytes, ttl %v", len(data), ttl)
		}
		if _, _, err := d.evaluate(SourceOPENPGPKEY, r, &cacheEntry{Origin: "x", Data: data}, time.Now()); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzKeyFile feeds a keyring or pinned key file through the file reader.
func FuzzKeyFile(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
		f.Add(append(append([]byte{}, s...), s...))
	}
	f.Add([]byte("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxx\n-----END PGP PRIVATE KEY BLOCK-----\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		el, err := parseKeys(data, maxFileKeyData)
		if err == nil && len(el) == 0 {
			t.Fatal("no error and no key")
		}
		for _, e := range el {
			_ = Fingerprint(e)
			_ = entityAddresses(e)
			_ = unusable(e, "a@b.example", true, time.Now())
		}
	})
}

func TestCacheEvictsEarliestExpiring(t *testing.T) {
	c := &remoteCache{m: map[string]*cacheEntry{}}
	now := time.Now()
	for i := range 20 {
		c.m[string(rune('a'+i))] = &cacheEntry{Expires: now.Add(time.Duration(i) * time.Minute)}
	}
	c.evict()
	if len(c.m) != 17 || c.m["a"] != nil || c.m["c"] != nil || c.m["d"] == nil {
		t.Errorf("after evict: %d entries; want the 3 expiring first gone", len(c.m))
	}
}
