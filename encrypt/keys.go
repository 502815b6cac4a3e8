package encrypt

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// maxRemoteKeyData bounds one WKD answer or OPENPGPKEY record set. WKD
// keys are meant to be minimal (no third-party signatures); 1 MiB leaves
// room for a key with a long history and keeps a hostile server from
// making us parse without end.
const maxRemoteKeyData = 1 << 20

// maxFileKeyData bounds one local key file: an exported keyring of a few
// hundred keys fits.
const maxFileKeyData = 32 << 20

// minRSABits is the smallest RSA (or DSA/ElGamal) key we encrypt to:
// shorter keys are within reach of well-funded attackers, and a relay
// that promises confidentiality must not quietly use them.
const minRSABits = 2048

// parseKeys reads transferable public keys, binary or ASCII-armoured,
// from data. Keys go-crypto cannot read (unknown algorithms, broken
// packets) are skipped as long as one key can be read.
//
// The bytes may come from a stranger's web server or DNS zone, so a panic
// in the parser is turned into an error: one bad key must not take the
// relay down.
func parseKeys(data []byte, limit int) (el openpgp.EntityList, err error) {
	defer func() {
		if r := recover(); r != nil {
			el, err = nil, fmt.Errorf("unreadable OpenPGP data (parser panic: %v)", r)
		}
	}()
	if len(data) > limit {
		return nil, fmt.Errorf("OpenPGP data of %d bytes; at most %d are read", len(data), limit)
	}
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); bytes.HasPrefix(trimmed, []byte("-----BEGIN PGP")) {
		el, err = readArmoredBlocks(trimmed)
	} else {
		el, err = openpgp.ReadKeyRing(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("unreadable OpenPGP key data: %w", err)
	}
	if len(el) == 0 {
		return nil, errors.New("no OpenPGP key in the data")
	}
	return el, nil
}

// readArmoredBlocks reads every armoured key block in data: a keyring
// file made by appending "gpg --export --armor" outputs holds several.
func readArmoredBlocks(data []byte) (openpgp.EntityList, error) {
	var all openpgp.EntityList
	var firstErr error
	r := bytes.NewReader(data)
	for i := 0; i < 1000; i++ {
		block, err := armor.Decode(r)
		if err != nil {
			break // io.EOF: no more blocks; anything else: trailing garbage
		}
		if block.Type != openpgp.PublicKeyType && block.Type != openpgp.PrivateKeyType {
			continue
		}
		el, err := openpgp.ReadKeyRing(block.Body)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		all = append(all, el...)
	}
	if len(all) == 0 && firstErr != nil {
		return nil, firstErr
	}
	return all, nil
}

// Fingerprint is the upper-case hex fingerprint of e's primary key.
func Fingerprint(e *openpgp.Entity) string {
	return strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
}

// NormalizeFingerprint accepts a fingerprint as people write it (spaces,
// lower case, a 0x prefix) and returns it in the form Fingerprint uses.
// Only full fingerprints (40 hex digits for v4 keys, 64 for v6) are
// accepted: a key ID is too short to pin a key.
func NormalizeFingerprint(s string) (string, error) {
	f := strings.ToUpper(strings.Join(strings.Fields(s), ""))
	f = strings.TrimPrefix(f, "0X")
	if _, err := hex.DecodeString(f); err != nil || (len(f) != 40 && len(f) != 64) {
		return "", fmt.Errorf("fingerprint %q: want the full fingerprint, 40 (v4 key) or 64 (v6 key) hex digits", s)
	}
	return f, nil
}

// uidAddresses returns the mail addresses in a user ID, lower case: the
// <addr> part of "Name <addr>", or the whole ID when it is a bare address.
func uidAddresses(id *openpgp.Identity) []string {
	if id.UserId != nil && id.UserId.Email != "" {
		return []string{strings.ToLower(id.UserId.Email)}
	}
	if a, err := mail.ParseAddress(id.Name); err == nil {
		return []string{strings.ToLower(a.Address)}
	}
	return nil
}

// entityAddresses lists every address in e's user IDs, sorted and unique.
func entityAddresses(e *openpgp.Entity) []string {
	var out []string
	for _, id := range e.Identities {
		out = append(out, uidAddresses(id)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// unusable says why e must not be used to encrypt to addr at now, or ""
// when it may. addrKey is the lower-case address; with needUID false (a
// pinned key) the user IDs are not looked at.
func unusable(e *openpgp.Entity, addrKey string, needUID bool, now time.Time) string {
	if e.Revoked(now) {
		return "key revoked" + revocationReason(e.Revocations)
	}
	sig, ident := e.PrimarySelfSignature()
	if sig == nil {
		return "no valid self-signature on the primary key"
	}
	if e.PrimaryKey.KeyExpired(sig, now) {
		if e.PrimaryKey.CreationTime.After(now) {
			return "key created in the future (" + day(e.PrimaryKey.CreationTime) + ")"
		}
		return "key expired on " + day(expiry(e.PrimaryKey, sig))
	}
	if sig.SigExpired(now) {
		return "self-signature expired"
	}
	if ident != nil && ident.Revoked(now) {
		return "every user ID revoked" + revocationReason(ident.Revocations)
	}
	if why := weak(e.PrimaryKey); why != "" {
		return why
	}
	k, ok := e.EncryptionKey(now)
	if !ok {
		return whyNoEncryptionKey(e, now)
	}
	if why := weak(k.PublicKey); why != "" {
		return "encryption " + why
	}
	if !needUID {
		return ""
	}
	var revoked bool
	for _, id := range e.Identities {
		if !slices.Contains(uidAddresses(id), addrKey) {
			continue
		}
		if id.Revoked(now) {
			revoked = true
			continue
		}
		if id.SelfSignature == nil || id.SelfSignature.SigExpired(now) {
			continue
		}
		return ""
	}
	if revoked {
		return "user ID " + addrKey + " revoked"
	}
	return "no user ID with " + addrKey + " (user IDs: " + strings.Join(entityAddresses(e), ", ") + ")"
}

// whyNoEncryptionKey explains EncryptionKey's refusal, subkey by subkey,
// so that "encrypt lookup" can tell a revoked subkey from an expired one
// and from a key that never had one.
func whyNoEncryptionKey(e *openpgp.Entity, now time.Time) string {
	var why []string
	kinds := map[string]bool{}
	for _, s := range e.Subkeys {
		if !s.Sig.FlagsValid || !(s.Sig.FlagEncryptCommunications || s.Sig.FlagEncryptStorage) || !s.PublicKey.PubKeyAlgo.CanEncrypt() {
			continue
		}
		id := s.PublicKey.KeyIdString()
		switch {
		case s.Revoked(now):
			why, kinds["revoked"] = append(why, id+" revoked"+revocationReason(s.Revocations)), true
		case s.PublicKey.KeyExpired(s.Sig, now) || s.Sig.SigExpired(now):
			why, kinds["expired"] = append(why, id+" expired on "+day(expiry(s.PublicKey, s.Sig))), true
		case !s.Sig.FlagEncryptCommunications:
			why, kinds["storage"] = append(why, id+" is for storage, not communication"), true
		}
	}
	switch {
	case len(why) == 0:
		return "no encryption subkey (signing only)"
	case len(kinds) == 1 && kinds["revoked"]:
		return "encryption subkey revoked: " + strings.Join(why, "; ")
	case len(kinds) == 1 && kinds["expired"]:
		return "encryption subkey expired: " + strings.Join(why, "; ")
	}
	return "no valid encryption subkey: " + strings.Join(why, "; ")
}

func weak(pk *packet.PublicKey) string {
	switch pk.PubKeyAlgo {
	case packet.PubKeyAlgoRSA, packet.PubKeyAlgoRSAEncryptOnly, packet.PubKeyAlgoRSASignOnly, packet.PubKeyAlgoDSA, packet.PubKeyAlgoElGamal:
		bits, err := pk.BitLength()
		if err != nil {
			return "key " + pk.KeyIdString() + " unreadable: " + err.Error()
		}
		if bits < minRSABits {
			return fmt.Sprintf("key %s has %d bits; at least %d are required", pk.KeyIdString(), bits, minRSABits)
		}
	}
	return ""
}

func expiry(pk *packet.PublicKey, sig *packet.Signature) time.Time {
	if sig.KeyLifetimeSecs != nil && *sig.KeyLifetimeSecs != 0 {
		return pk.CreationTime.Add(time.Duration(*sig.KeyLifetimeSecs) * time.Second)
	}
	if sig.SigLifetimeSecs != nil && *sig.SigLifetimeSecs != 0 {
		return sig.CreationTime.Add(time.Duration(*sig.SigLifetimeSecs) * time.Second)
	}
	return time.Time{}
}

func revocationReason(sigs []*packet.Signature) string {
	for _, s := range sigs {
		if s.RevocationReasonText != "" {
			return fmt.Sprintf(" (%q)", s.RevocationReasonText)
		}
	}
	return ""
}

func day(t time.Time) string {
	if t.IsZero() {
		return "an unknown date"
	}
	return t.UTC().Format("2006-01-02")
}

// newer orders candidate keys: the newest primary key first, then the
// newest encryption subkey, then the fingerprint, so that the choice
// among several valid keys for one address never depends on file or
// answer order.
func newer(a, b *openpgp.Entity, now time.Time) int {
	if c := b.PrimaryKey.CreationTime.Compare(a.PrimaryKey.CreationTime); c != 0 {
		return c
	}
	ka, _ := a.EncryptionKey(now)
	kb, _ := b.EncryptionKey(now)
	if ka.PublicKey != nil && kb.PublicKey != nil {
		if c := kb.PublicKey.CreationTime.Compare(ka.PublicKey.CreationTime); c != 0 {
			return c
		}
	}
	return strings.Compare(Fingerprint(a), Fingerprint(b))
}
