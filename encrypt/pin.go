package encrypt

import (
	"fmt"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// findPinned returns the key with fingerprint fp in kf.
func findPinned(kf *keyFile, fp string) (*openpgp.Entity, error) {
	if kf.err != nil {
		return nil, fmt.Errorf("key file unreadable: %w", kf.err)
	}
	var have []string
	for _, e := range kf.keys {
		if Fingerprint(e) == fp {
			return e, nil
		}
		have = append(have, Fingerprint(e))
	}
	return nil, fmt.Errorf("%s holds no key with fingerprint %s (it holds %s)", kf.path, fp, strings.Join(have, ", "))
}

// CheckPin reports what makes a pinned key unusable at now: an unreadable
// file, no key with the fingerprint in it, or a key that is expired,
// revoked or has no valid encryption subkey. For check-config; Lookup
// applies the same rules at every use (a file may change, a key expire).
func CheckPin(p Pin, now time.Time) error {
	fp, err := NormalizeFingerprint(p.Fingerprint)
	if err != nil {
		return err
	}
	e, err := findPinned(readKeyFile(p.File), fp)
	if err != nil {
		return err
	}
	if why := unusable(e, "", false, now); why != "" {
		return fmt.Errorf("pinned key %s in %s: %s", fp, p.File, why)
	}
	return nil
}

// lookupPinned tries the pins for r's address first, then the rule-wide
// ones, each group in configuration order; the first usable key wins (the
// admin's order, not the key's age, decides among pins).
func (d *Directory) lookupPinned(r recipient, pins []Pin) (*Key, []Refused) {
	now := d.o.Now()
	var ordered []Pin
	for _, p := range pins {
		if p.Address != "" && strings.EqualFold(p.Address, r.String()) {
			ordered = append(ordered, p)
		}
	}
	for _, p := range pins {
		if p.Address == "" {
			ordered = append(ordered, p)
		}
	}
	var refused []Refused
	for _, p := range ordered {
		fp, err := NormalizeFingerprint(p.Fingerprint)
		if err != nil {
			refused = append(refused, Refused{Source: SourcePinned, Origin: p.File, Fingerprint: p.Fingerprint, Reason: err.Error()})
			continue
		}
		e, err := findPinned(d.pins.get(p.File), fp)
		if err != nil {
			refused = append(refused, Refused{Source: SourcePinned, Origin: p.File, Fingerprint: fp, Reason: err.Error()})
			continue
		}
		if why := unusable(e, "", false, now); why != "" {
			refused = append(refused, Refused{Source: SourcePinned, Origin: p.File, Fingerprint: fp, Reason: why})
			continue
		}
		return &Key{Entity: e, Fingerprint: fp, Source: SourcePinned, Origin: p.File}, refused
	}
	return nil, refused
}
