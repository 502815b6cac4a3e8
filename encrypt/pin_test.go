package encrypt_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/encrypt"
)

// spaced writes a fingerprint as people copy it from gpg: groups of four,
// lower case.
func spaced(fpr string) string {
	var b strings.Builder
	for i := 0; i < len(fpr); i += 4 {
		b.WriteString(strings.ToLower(fpr[i:i+4]) + " ")
	}
	return b.String()
}

// A pinned key is used for every recipient of the rule, although its user
// ID names another address (a partner's gateway key), ahead of the
// keyring, and one pinned for the address wins over the rule-wide one.
func TestPinnedKey(t *testing.T) {
	k := getKeys(t)
	dir := t.TempDir()
	frankFile := filepath.Join(dir, "gateway.asc")
	writeFile(t, frankFile, k.armored(t, k.frank))
	bobFile := filepath.Join(dir, "bob.asc")
	writeFile(t, bobFile, k.armored(t, k.bob))
	ring := keyringDir(t, k, map[string]string{"alice.asc": k.alice})
	d := newDirectory(t, encrypt.Options{KeyringDir: ring})

	pins := []encrypt.Pin{{Fingerprint: spaced(k.frank), File: frankFile}, {Fingerprint: k.bob, File: bobFile, Address: "ALICE@partner.example"}}
	res := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Pins: pins})
	if res.Key == nil || res.Key.Fingerprint != k.bob || res.Key.Source != encrypt.SourcePinned || res.Key.Origin != bobFile {
		t.Errorf("pin for the address: %s; want bob's key pinned in %s", describe(res), bobFile)
	}
	res = d.Lookup(t.Context(), encrypt.Query{Address: "someone@partner.example", Pins: pins})
	if res.Key == nil || res.Key.Fingerprint != k.frank || res.Key.Source != encrypt.SourcePinned {
		t.Errorf("rule-wide pin: %s; want frank's key", describe(res))
	}
	// Without the pinned source in the chain the pins are not used.
	res = d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Pins: pins, Sources: keyringOnly})
	if res.Key == nil || res.Key.Fingerprint != k.alice || res.Key.Source != encrypt.SourceKeyring {
		t.Errorf("chain without pinned: %s; want alice's key from the keyring", describe(res))
	}
}

// An unusable pin is refused with its reason and the chain goes on.
func TestPinnedKeyUnusable(t *testing.T) {
	k := getKeys(t)
	dir := t.TempDir()
	files := map[string]string{}
	for name, fpr := range map[string]string{"dave": k.dave, "erin": k.erin, "carol": k.carol, "bob": k.bob} {
		files[name] = filepath.Join(dir, name+".asc")
		writeFile(t, files[name], k.armored(t, fpr))
	}
	ring := keyringDir(t, k, map[string]string{"alice.asc": k.alice})
	d := newDirectory(t, encrypt.Options{KeyringDir: ring})
	pins := []encrypt.Pin{
		{Fingerprint: k.dave, File: files["dave"]},
		{Fingerprint: k.erin, File: files["erin"]},
		{Fingerprint: k.carol, File: files["carol"]},
		{Fingerprint: k.alice, File: files["bob"]}, // the file holds another key
		{Fingerprint: k.bob, File: filepath.Join(dir, "missing.asc")},
		{Fingerprint: "1234", File: files["bob"]},
	}
	res := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Pins: pins})
	if res.Key == nil || res.Key.Source != encrypt.SourceKeyring || res.Key.Fingerprint != k.alice {
		t.Fatalf("%s; want alice's key from the keyring after the unusable pins", describe(res))
	}
	want := []string{"key expired", "no encryption subkey", "key revoked", "holds no key with fingerprint " + k.alice, "no such file", "fingerprint \"1234\""}
	if len(res.Refused) != len(want) {
		t.Fatalf("refusals:\n%s", describe(res))
	}
	for i, w := range want {
		if r := res.Refused[i]; r.Source != encrypt.SourcePinned || !strings.Contains(r.Reason, w) {
			t.Errorf("refusal %d: %v; want pinned, %q", i, r, w)
		}
	}
}

func TestCheckPin(t *testing.T) {
	k := getKeys(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "bob.asc")
	writeFile(t, good, k.armored(t, k.bob))
	erin := filepath.Join(dir, "erin.asc")
	writeFile(t, erin, k.armored(t, k.erin))
	garbage := filepath.Join(dir, "garbage.asc")
	writeFile(t, garbage, []byte("not a key\n"))
	now := time.Now()
	if err := encrypt.CheckPin(encrypt.Pin{Fingerprint: "0x" + spaced(k.bob), File: good}, now); err != nil {
		t.Errorf("good pin: %v", err)
	}
	for _, tc := range []struct {
		pin  encrypt.Pin
		want string
	}{
		{encrypt.Pin{Fingerprint: k.bob, File: filepath.Join(dir, "missing.asc")}, "no such file"},
		{encrypt.Pin{Fingerprint: k.bob, File: garbage}, "unreadable"},
		{encrypt.Pin{Fingerprint: k.alice, File: good}, "holds no key with fingerprint " + k.alice + " (it holds " + k.bob + ")"},
		{encrypt.Pin{Fingerprint: k.erin, File: erin}, "no encryption subkey (signing only)"},
		{encrypt.Pin{Fingerprint: k.bob[:16], File: good}, "want the full fingerprint"},
	} {
		err := encrypt.CheckPin(tc.pin, now)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckPin(%v) = %v; want %q", tc.pin, err, tc.want)
		}
	}
}
