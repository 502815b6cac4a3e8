package dkim

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rsaKeyInsecure makes small RSA keys for the size checks. Go refuses to
// generate keys under 1024 bits unless GODEBUG=rsa1024min=0, so it sets
// that for the call.
func rsaKeyInsecure(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	if bits < 1024 {
		// Set only for the generation, so LoadKey runs with the default
		// setting as in production; t.Setenv restores the original value
		// at the end and keeps the test from running in parallel.
		old := os.Getenv("GODEBUG")
		t.Setenv("GODEBUG", "rsa1024min=0")
		defer os.Setenv("GODEBUG", old)
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLoadKeyFormats(t *testing.T) {
	rk := testRSAKey(t)
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	pkcs8RSA, _ := x509.MarshalPKCS8PrivateKey(rk)
	pkcs8Ed, _ := x509.MarshalPKCS8PrivateKey(ek)
	for _, tc := range []struct {
		name, typ string
		der       []byte
		alg       string
	}{
		{"pkcs1-rsa", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk), AlgRSASHA256},
		{"pkcs8-rsa", "PRIVATE KEY", pkcs8RSA, AlgRSASHA256},
		{"pkcs8-ed25519", "PRIVATE KEY", pkcs8Ed, AlgEd25519SHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writePEM(t, tc.typ, tc.der)
			s, warns, err := LoadKey(p)
			if err != nil {
				t.Fatal(err)
			}
			if len(warns) != 0 {
				t.Errorf("warnings: %q", warns)
			}
			if got := (Key{Signer: s}).Algorithm(); got != tc.alg {
				t.Errorf("Algorithm = %q, want %q", got, tc.alg)
			}
		})
	}
}

func TestLoadKeySizes(t *testing.T) {
	small := rsaKeyInsecure(t, 512)
	p := writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small))
	if _, _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "512 bits") {
		t.Errorf("512-bit key: err = %v, want refusal naming %s and 512 bits", err, p)
	}
	// Key values built in code get the same refusal from Sign.
	_, err := Sign(strings.NewReader(simpleMsg), []Key{{Domain: "example.com", Selector: "s", Signer: small}}, Options{})
	if err == nil || !strings.Contains(err.Error(), "512 bits") {
		t.Errorf("Sign with 512-bit key: err = %v", err)
	}

	k1024 := rsaKeyInsecure(t, 1024)
	p = writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k1024))
	s, warns, err := LoadKey(p)
	if err != nil || s == nil {
		t.Fatalf("1024-bit key: %v", err)
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "1024 bits") || !strings.Contains(warns[0], p) {
		t.Errorf("1024-bit key warnings = %q", warns)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	os.WriteFile(garbage, []byte("this is not a key\n"), 0o600)
	badDER := writePEM(t, "PRIVATE KEY", []byte("not DER"))
	ec := writePEM(t, "EC PRIVATE KEY", []byte{1})
	enc := writePEM(t, "ENCRYPTED PRIVATE KEY", []byte{1})
	missing := filepath.Join(dir, "missing.pem")
	for _, p := range []string{garbage, badDER, ec, enc, missing} {
		s, _, err := LoadKey(p)
		if err == nil || s != nil {
			t.Errorf("LoadKey(%s) = %v, %v; want error", p, s, err)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("LoadKey(%s): error %q does not name the path", p, err)
		}
	}
}

func TestLoadKeyWarnsOnLooseMode(t *testing.T) {
	_, pemBytes, err := GenerateKey("ed25519", 0)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(p, pemBytes, 0o644)
	os.Chmod(p, 0o644) // past the umask
	_, warns, err := LoadKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "0644") {
		t.Errorf("warnings = %q, want one about mode 0644", warns)
	}
}

func TestGenerateAndWriteKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys", "example.com")
	for _, tc := range []struct {
		alg  string
		bits int
		want string
	}{
		{"rsa", 0, AlgRSASHA256},
		{"ed25519", 0, AlgEd25519SHA256},
	} {
		s, pemBytes, err := GenerateKey(tc.alg, tc.bits)
		if err != nil {
			t.Fatal(err)
		}
		if rk, ok := s.(*rsa.PrivateKey); ok && rk.N.BitLen() != 2048 {
			t.Errorf("default RSA size %d, want 2048", rk.N.BitLen())
		}
		p := filepath.Join(dir, tc.alg+".key")
		if err := WriteKeyFile(p, pemBytes); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %04o, want 0600", p, fi.Mode().Perm())
		}
		di, _ := os.Stat(dir)
		if di.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %04o, want 0700", dir, di.Mode().Perm())
		}
		loaded, warns, err := LoadKey(p)
		if err != nil || len(warns) != 0 {
			t.Fatalf("LoadKey: %v %q", err, warns)
		}
		if (Key{Signer: loaded}).Algorithm() != tc.want || !sameKey(loaded.Public(), s.Public()) {
			t.Errorf("%s: loaded key differs from generated", tc.alg)
		}
		// No overwrite: the file keeps its content.
		_, other, _ := GenerateKey(tc.alg, tc.bits)
		if err := WriteKeyFile(p, other); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("second WriteKeyFile: err = %v, want refusal", err)
		}
		if got, _ := os.ReadFile(p); string(got) != string(pemBytes) {
			t.Errorf("%s was overwritten", p)
		}
	}
	for _, bad := range []struct {
		alg  string
		bits int
	}{{"rsa", 512}, {"rsa", 8192}, {"dsa", 0}, {"", 0}} {
		if _, _, err := GenerateKey(bad.alg, bad.bits); err == nil {
			t.Errorf("GenerateKey(%q, %d) succeeded", bad.alg, bad.bits)
		}
	}
}
