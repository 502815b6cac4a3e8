// Package dkim signs outbound mail with DKIM (RFC 6376) using rsa-sha256
// and ed25519-sha256 (RFC 8463), loads and generates signing keys, and
// renders and checks the DNS TXT records that publish them.
//
// The cryptography and the canonicalization are go-msgauth's and the Go
// standard library's; this package only chooses what to sign (the h= list,
// with over-signing), drives one go-msgauth signer per key over a single
// pass of the message, and handles the key files and DNS text around it.
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Key sizes for RSA (RFC 8301 §3.2): signers MUST use at least 1024 bits
// and SHOULD use at least 2048; verifiers are only required to handle keys
// up to 4096 bits, so larger keys risk failing at some receivers.
const (
	MinRSABits         = 1024
	RecommendedRSABits = 2048
	MaxRSABits         = 4096
)

// Algorithm names as they appear in the a= tag.
const (
	AlgRSASHA256     = "rsa-sha256"     // RFC 6376 §3.3.1
	AlgEd25519SHA256 = "ed25519-sha256" // RFC 8463 §3
)

// Key is one signing key of one domain.
type Key struct {
	Domain, Selector string
	Signer           crypto.Signer
	Path             string // where the key was loaded from, for messages; may be empty
}

// Algorithm returns the a= value this key signs with: "rsa-sha256" or
// "ed25519-sha256", or "" for a key type DKIM does not define.
func (k Key) Algorithm() string {
	if k.Signer == nil {
		return ""
	}
	return algorithmOf(k.Signer.Public())
}

func algorithmOf(pub crypto.PublicKey) string {
	switch pub.(type) {
	case *rsa.PublicKey:
		return AlgRSASHA256
	case ed25519.PublicKey:
		return AlgEd25519SHA256
	}
	return ""
}

// LoadKey reads a PEM private key: PKCS#1 ("RSA PRIVATE KEY"), or PKCS#8
// ("PRIVATE KEY") holding RSA or Ed25519. Encrypted keys and other types
// are refused, since the relay has to sign unattended.
//
// RSA keys under 1024 bits are refused (RFC 8301 §3.2 forbids signing with
// them, and receivers treat such signatures as failing); keys under 2048
// bits or over 4096 bits load, with a warning. A key file that group or
// others can read also loads with a warning. Every error names the path.
func LoadKey(path string) (signer crypto.Signer, warnings []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("dkim: reading key: %w", err)
	}
	signer, warnings, err = ParseKey(data)
	if err != nil {
		return nil, nil, fmt.Errorf("dkim: key %s: %w", path, err)
	}
	for i, w := range warnings {
		warnings[i] = "dkim: key " + path + ": " + w
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		warnings = append(warnings, fmt.Sprintf("dkim: key %s: mode %04o lets group or others read the private key; use 0600", path, fi.Mode().Perm()))
	}
	return signer, warnings, nil
}

// ParseKey is LoadKey on PEM bytes; errors and warnings do not name a file.
func ParseKey(data []byte) (crypto.Signer, []string, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, nil, errors.New("no PEM block found (expected a PEM private key)")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, nil, errors.New("encrypted private keys are not supported: the relay signs unattended")
	default:
		return nil, nil, fmt.Errorf("PEM block %q is not a supported private key (want \"RSA PRIVATE KEY\" or \"PRIVATE KEY\")", block.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("parsing %s: %w", block.Type, err)
	}
	var warnings []string
	switch k := key.(type) {
	case *rsa.PrivateKey:
		bits := k.N.BitLen()
		switch {
		case bits < MinRSABits:
			return nil, nil, fmt.Errorf("RSA key has %d bits; at least %d are required (RFC 8301 §3.2)", bits, MinRSABits)
		case bits < RecommendedRSABits:
			warnings = append(warnings, fmt.Sprintf("RSA key has %d bits; %d or more are recommended (RFC 8301 §3.2)", bits, RecommendedRSABits))
		case bits > MaxRSABits:
			warnings = append(warnings, fmt.Sprintf("RSA key has %d bits; verifiers are only required to handle up to %d (RFC 8301 §3.2)", bits, MaxRSABits))
		}
		return k, warnings, nil
	case ed25519.PrivateKey:
		return k, nil, nil
	default:
		return nil, nil, fmt.Errorf("key type %T is not usable for DKIM (want RSA or Ed25519)", key)
	}
}

// GenerateKey makes a new key: alg "rsa" (bits 0 means 2048; 1024 to 4096
// allowed) or "ed25519" (bits is ignored). It returns the key and its PKCS#8
// PEM encoding.
func GenerateKey(alg string, bits int) (crypto.Signer, []byte, error) {
	var signer crypto.Signer
	switch alg {
	case "rsa":
		if bits == 0 {
			bits = RecommendedRSABits
		}
		if bits < MinRSABits || bits > MaxRSABits {
			return nil, nil, fmt.Errorf("dkim: RSA key size %d out of range %d–%d (RFC 8301 §3.2)", bits, MinRSABits, MaxRSABits)
		}
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			return nil, nil, fmt.Errorf("dkim: generating RSA key: %w", err)
		}
		signer = k
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("dkim: generating Ed25519 key: %w", err)
		}
		signer = k
	default:
		return nil, nil, fmt.Errorf("dkim: unknown key algorithm %q (want \"rsa\" or \"ed25519\")", alg)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, nil, fmt.Errorf("dkim: encoding key: %w", err)
	}
	return signer, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteKeyFile writes pemBytes to path with mode 0600, creating missing
// parent directories with mode 0700. It refuses to overwrite an existing
// file (O_EXCL): replacing a published key by accident would break every
// signature in flight, so rotation means a new selector and a new file.
// The file and its directory are fsync'd so the key survives a crash.
func WriteKeyFile(path string, pemBytes []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dkim: creating key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("dkim: key file %s already exists; refusing to overwrite it", path)
		}
		return fmt.Errorf("dkim: creating key file: %w", err)
	}
	_, err = f.Write(pemBytes)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("dkim: writing key file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
