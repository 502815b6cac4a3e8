package encrypt_test

import (
	"slices"
	"strings"
	"testing"

	"securerelay/dnsutil/dnstest"
	"securerelay/encrypt"
)

var openpgpkeyOnly = []encrypt.Source{encrypt.SourceOPENPGPKEY}

// daneZone is what gpg publishes for the keys (gpg --export-options
// export-dane: "$ORIGIN _openpgpkey.<domain>." and one OPENPGPKEY record
// per key, owner name computed by gpg).
func daneZone(t *testing.T, k *testKeys, fprs ...string) string {
	t.Helper()
	z := "partner.example. SOA ns.partner.example. hostmaster.partner.example. 1 3600 600 86400 60\n"
	for _, fpr := range fprs {
		out, err := k.home.run(nil, "--export-options", "export-dane", "--export", fpr)
		if err != nil {
			t.Fatal(err)
		}
		z += string(out)
	}
	return z
}

func TestOPENPGPKEYValidated(t *testing.T) {
	k := getKeys(t)
	zone := daneZone(t, k, k.alice, k.carol)
	name, err := encrypt.OPENPGPKEYName(addrAlice)
	if err != nil {
		t.Fatal(err)
	}
	if label := strings.TrimSuffix(name, "._openpgpkey.partner.example"); !strings.Contains(zone, "\n"+label+" ") {
		t.Fatalf("our owner name %s is not the one gpg published:\n%s", name, zone)
	}
	srv, res := newDNS(t, zone)
	srv.Validate(dnstest.Signed("partner.example"))
	d := newDirectory(t, encrypt.Options{DNSSEC: res})

	r := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: openpgpkeyOnly})
	if r.Key == nil || r.Key.Fingerprint != k.alice || r.Key.Source != encrypt.SourceOPENPGPKEY || r.Key.Origin != name {
		t.Fatalf("%s; want alice's key from %s", describe(r), name)
	}
	var sawDO bool
	for _, q := range srv.Queries() {
		sawDO = sawDO || (q.Type == "OPENPGPKEY" && q.DO)
	}
	if !sawDO {
		t.Error("OPENPGPKEY asked without the DO bit")
	}

	// A revoked key published in DNS is refused.
	r = d.Lookup(t.Context(), encrypt.Query{Address: addrCarol, Sources: openpgpkeyOnly})
	if why := refusedFor(r, k.carol); r.Key != nil || len(why) != 1 || !strings.HasPrefix(why[0], "key revoked") {
		t.Errorf("revoked key: %s", describe(r))
	}
	// No record: no key, definitively. SERVFAIL: temporary.
	r = d.Lookup(t.Context(), encrypt.Query{Address: "nobody@partner.example", Sources: openpgpkeyOnly})
	if r.Key != nil || r.Temporary != nil || !slices.Equal(r.Searched, openpgpkeyOnly) {
		t.Errorf("no record: %s", describe(r))
	}
	bobName, _ := encrypt.OPENPGPKEYName(addrBob)
	srv.ServFail(bobName)
	r = d.Lookup(t.Context(), encrypt.Query{Address: addrBob, Sources: openpgpkeyOnly})
	if r.Key != nil || r.Temporary == nil {
		t.Errorf("SERVFAIL: %s; want a temporary error", describe(r))
	}
}

// Without the AD bit the key is not used, whatever it is, and the answer
// is not cached: once the resolver validates, the key is found.
func TestOPENPGPKEYNotValidated(t *testing.T) {
	k := getKeys(t)
	srv, res := newDNS(t, daneZone(t, k, k.alice))
	d := newDirectory(t, encrypt.Options{DNSSEC: res})
	r := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: openpgpkeyOnly})
	if why := refusedFor(r, k.alice); r.Key != nil || len(why) != 1 || !strings.Contains(why[0], "not DNSSEC-validated") {
		t.Fatalf("unvalidated answer: %s; want alice's key refused as not validated", describe(r))
	}
	srv.Validate(dnstest.Signed("partner.example"))
	r = d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: openpgpkeyOnly})
	if r.Key == nil || r.Key.Fingerprint != k.alice {
		t.Errorf("validated now: %s", describe(r))
	}
}

// The local part is hashed as given; a domain that publishes lower case
// is found through the second, lower-cased name.
func TestOPENPGPKEYCase(t *testing.T) {
	k := getKeys(t)
	srv, res := newDNS(t, daneZone(t, k, k.alice))
	srv.Validate(dnstest.Signed("partner.example"))
	d := newDirectory(t, encrypt.Options{DNSSEC: res})
	r := d.Lookup(t.Context(), encrypt.Query{Address: "Alice@Partner.Example", Sources: openpgpkeyOnly})
	if r.Key == nil || r.Key.Fingerprint != k.alice {
		t.Fatalf("%s", describe(r))
	}
	exact, _ := encrypt.OPENPGPKEYName("Alice@partner.example")
	var asked []string
	for _, q := range srv.Queries() {
		asked = append(asked, q.Name)
	}
	if !slices.Contains(asked, exact) {
		t.Errorf("queries %q; the local part as given (%s) was not asked first", asked, exact)
	}
}

// OPENPGPKEY is off without a validating resolver, even when a rule lists it.
func TestOPENPGPKEYOff(t *testing.T) {
	d := newDirectory(t, encrypt.Options{})
	r := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: openpgpkeyOnly})
	if r.Key != nil || len(r.Searched) != 0 {
		t.Errorf("%s; want nothing searched", describe(r))
	}
}
