package encrypt_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"securerelay/encrypt"
)

var keyringOnly = []encrypt.Source{encrypt.SourceKeyring}

// keyringDir files each key in its own file, as an admin does.
func keyringDir(t *testing.T, k *testKeys, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, fpr := range files {
		writeFile(t, filepath.Join(dir, name), k.armored(t, fpr))
	}
	return dir
}

func TestKeyringFindsKeys(t *testing.T) {
	k := getKeys(t)
	dir := keyringDir(t, k, map[string]string{"alice.asc": k.alice, "bob.asc": k.bob})
	// A binary export and a file that is not a key sit beside them.
	writeFile(t, filepath.Join(dir, "frank.gpg"), k.binary(t, k.frank))
	writeFile(t, filepath.Join(dir, "README"), []byte("keys of our partners\n"))
	writeFile(t, filepath.Join(dir, "broken.asc"), []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnonsense\n-----END PGP PUBLIC KEY BLOCK-----\n"))
	writeFile(t, filepath.Join(dir, "org.asc"), k.secret(t, k.org))
	d := newDirectory(t, encrypt.Options{KeyringDir: dir})

	for addr, want := range map[string]string{addrAlice: k.alice, "Bob@Partner.Example": k.bob, addrFrank: k.frank} {
		res := d.Lookup(t.Context(), encrypt.Query{Address: addr, Sources: keyringOnly})
		if res.Key == nil || res.Key.Fingerprint != want || res.Key.Source != encrypt.SourceKeyring {
			t.Errorf("%s: %s; want %s from the keyring", addr, describe(res), want)
		}
	}
	res := d.Lookup(t.Context(), encrypt.Query{Address: "nobody@partner.example", Sources: keyringOnly})
	if res.Key != nil || res.Temporary != nil || !slices.Equal(res.Searched, keyringOnly) {
		t.Errorf("unknown address: %s; want no key, no temporary error", describe(res))
	}
	probs := fmt.Sprint(d.KeyringProblems())
	if !strings.Contains(probs, "broken.asc: unreadable OpenPGP key data") || !strings.Contains(probs, "org.asc: holds secret key material") || strings.Count(probs, ".asc") != 2 {
		t.Errorf("KeyringProblems = %s; want broken.asc and the secret key in org.asc", probs)
	}
}

// Several valid keys for one address: the newest is used, whatever the
// file names, and the other is listed with the reason.
func TestKeyringNewestKeyWins(t *testing.T) {
	k := getKeys(t)
	for _, names := range [][2]string{{"a.asc", "b.asc"}, {"b.asc", "a.asc"}} {
		dir := keyringDir(t, k, map[string]string{names[0]: k.alice, names[1]: k.aliceOld})
		d := newDirectory(t, encrypt.Options{KeyringDir: dir})
		res := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: keyringOnly})
		if res.Key == nil || res.Key.Fingerprint != k.alice {
			t.Fatalf("%s", describe(res))
		}
		if why := refusedFor(res, k.aliceOld); len(why) != 1 || !strings.Contains(why[0], "is newer") {
			t.Errorf("older key: refused %q; want 'is newer'", why)
		}
	}
}

func TestKeyringRefusesUnusableKeys(t *testing.T) {
	k := getKeys(t)
	dir := keyringDir(t, k, map[string]string{
		"carol.asc": k.carol, "dave.asc": k.dave, "erin.asc": k.erin, "grace.asc": k.grace, "heidi.asc": k.heidi,
		// Filed under alice's address, but it is frank's key.
		addrAlice + ".asc": k.frank,
	})
	d := newDirectory(t, encrypt.Options{KeyringDir: dir})
	for _, tc := range []struct{ name, addr, fpr, reason string }{
		{"revoked", addrCarol, k.carol, "key revoked"},
		{"expired", addrDave, k.dave, "key expired on 2020-12-31"},
		{"signing-only", addrErin, k.erin, "no encryption subkey (signing only)"},
		{"revoked encryption subkey", addrGrace, k.grace, "encryption subkey revoked"},
		{"expired encryption subkey", addrHeidi, k.heidi, "encryption subkey expired"},
		{"wrong user ID", addrAlice, k.frank, "no user ID with alice@partner.example (user IDs: frank@other.example)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := d.Lookup(t.Context(), encrypt.Query{Address: tc.addr, Sources: keyringOnly})
			if res.Key != nil {
				t.Fatalf("%s was used: %s", tc.name, describe(res))
			}
			why := refusedFor(res, tc.fpr)
			if len(why) != 1 || !strings.HasPrefix(why[0], tc.reason) {
				t.Errorf("refused %q; want %q\n%s", why, tc.reason, describe(res))
			}
			for _, r := range res.Refused {
				if r.Source != encrypt.SourceKeyring || !strings.HasPrefix(r.Origin, dir) {
					t.Errorf("refusal %v: want source keyring, origin a file in %s", r, dir)
				}
			}
		})
	}
	// gpg agrees that none of them can be encrypted to.
	for _, fpr := range []string{k.carol, k.dave, k.erin, k.grace, k.heidi} {
		if _, err := k.home.run(strings.NewReader("x"), "--trust-model", "always", "--encrypt", "-r", fpr, "-o", "/dev/null"); err == nil {
			t.Errorf("gpg encrypts to %s, which the test calls unusable", fpr)
		}
	}
}

// A key file that is added, changed or removed takes effect at the next
// lookup after the rescan interval, without a restart.
func TestKeyringReload(t *testing.T) {
	k := getKeys(t)
	dir := t.TempDir()
	clk := newClock()
	d := newDirectory(t, encrypt.Options{KeyringDir: dir, KeyringRescan: time.Second, Now: clk.Now})
	lookup := func() *encrypt.Key {
		return d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: keyringOnly}).Key
	}
	if key := lookup(); key != nil {
		t.Fatalf("empty keyring gave %s", key.Fingerprint)
	}

	// Added.
	path := filepath.Join(dir, "alice.asc")
	writeFile(t, path, k.armored(t, k.aliceOld))
	clk.advance(2 * time.Second)
	if key := lookup(); key == nil || key.Fingerprint != k.aliceOld {
		t.Fatalf("after adding the file: %v; want %s", key, k.aliceOld)
	}

	// Replaced in place (same name, new content) within the interval:
	// not seen yet, then seen.
	writeFile(t, path, k.armored(t, k.alice))
	if key := lookup(); key == nil || key.Fingerprint != k.aliceOld {
		t.Fatalf("within the rescan interval: %v; want the old key still", key)
	}
	clk.advance(2 * time.Second)
	if key := lookup(); key == nil || key.Fingerprint != k.alice {
		t.Fatalf("after changing the file: %v; want %s", key, k.alice)
	}

	// Replaced by rename, as configuration management does.
	tmp := filepath.Join(dir, ".alice.asc.tmp")
	writeFile(t, tmp, k.armored(t, k.aliceOld))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Second)
	if key := lookup(); key == nil || key.Fingerprint != k.aliceOld {
		t.Fatalf("after replacing the file: %v; want %s", key, k.aliceOld)
	}

	// Removed.
	os.Remove(path)
	clk.advance(2 * time.Second)
	if key := lookup(); key != nil {
		t.Fatalf("after removing the file: still %s", key.Fingerprint)
	}

	// The folder itself goes away: a temporary failure, never a stale key.
	writeFile(t, path, k.armored(t, k.alice))
	clk.advance(2 * time.Second)
	if lookup() == nil {
		t.Fatal("key not found again")
	}
	os.RemoveAll(dir)
	clk.advance(2 * time.Second)
	res := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice, Sources: keyringOnly})
	if res.Key != nil || res.Temporary == nil {
		t.Errorf("folder gone: %s; want a temporary error", describe(res))
	}
}

func TestNewRefusesMissingKeyring(t *testing.T) {
	if _, err := encrypt.New(encrypt.Options{KeyringDir: filepath.Join(t.TempDir(), "nope")}); err == nil {
		t.Error("New accepted a keyring folder that does not exist")
	}
}
