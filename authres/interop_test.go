package authres

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInteropDkimsign verifies signatures made by an independent signer,
// dkimsign from python3-dkim (dkimpy), which shares no code with
// go-msgauth: RSA and Ed25519, relaxed and simple body canonicalization,
// and a message changed after signing.
func TestInteropDkimsign(t *testing.T) {
	dkimsign := requireTool(t, "dkimsign")
	rk, ek := testKeys(t)
	dir := t.TempDir()
	rsaFile := filepath.Join(dir, "rsa.key")
	edFile := filepath.Join(dir, "ed.key")
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})
	// dkimpy reads an Ed25519 private key as the base64 of its 32-byte seed.
	if err := os.WriteFile(rsaFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(edFile, []byte(base64.StdEncoding.EncodeToString(ek.Seed())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := newTestChecker(t, nil)

	cases := []struct {
		name, selector, key, alg, bcanon string
	}{
		{"rsa relaxed", "rsa", rsaFile, "rsa-sha256", "relaxed"},
		{"rsa simple", "rsa", rsaFile, "rsa-sha256", "simple"},
		{"ed25519 relaxed", "ed", edFile, "ed25519-sha256", "relaxed"},
		{"ed25519 simple", "ed", edFile, "ed25519-sha256", "simple"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(dkimsign, "--signalg", tc.alg, "--bcanon", tc.bcanon, tc.selector, "example.com", tc.key)
			cmd.Stdin = strings.NewReader(message(dkimFrom))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("dkimsign: %v: %s", err, stderr.String())
			}
			// dkimsign prints the message unsigned when it fails.
			signed := string(out)
			if !strings.HasPrefix(signed, "DKIM-Signature:") {
				t.Fatalf("dkimsign did not sign (%s): %q", stderr.String(), signed)
			}
			v := check(t, c, ipOut, testHelo, dkimBounce, signed)
			wantHeader(t, v, ar("spf=fail smtp.mailfrom=bounce@esp.example.net",
				"dkim=pass header.d=example.com header.s="+tc.selector+" header.a="+tc.alg+"\r\n header.b="+bProps(t, signed)[0],
				dmarcPass))
			if v.Reject != nil {
				t.Errorf("Reject = %v", v.Reject)
			}

			tampered := strings.Replace(signed, "this is the body", "this is the b0dy", 1)
			v = check(t, c, ipOut, testHelo, dkimBounce, tampered)
			if len(v.DKIM) != 1 || v.DKIM[0].Result != Fail || v.DKIM[0].Reason != "body hash did not verify" {
				t.Errorf("tampered: %+v", v.DKIM)
			}
			if v.Reject == nil || v.Reject.Code != 550 {
				t.Errorf("tampered: Reject = %v", v.Reject)
			}
		})
	}
}
