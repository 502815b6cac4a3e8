package main

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"securerelay/config"
	"securerelay/dnsutil"
	"securerelay/encrypt"
	"securerelay/outbound"
)

// keyCacheFile keeps WKD and OPENPGPKEY answers across restarts.
const keyCacheFile = "openpgp-key-cache.json"

// keyDirectory is the process's OpenPGP key directory: where the
// encryption fallback finds recipients' keys (outbound.encryption). WKD
// goes through the configured resolver with the roots verify uses (the
// system's plus outbound.tls.ca_file), as MTA-STS does; OPENPGPKEY only
// through a validating resolver.
func keyDirectory(cfg *config.Config, res *dnsutil.Client, log *slog.Logger, cache bool) (*encrypt.Directory, error) {
	en := cfg.Outbound.Encryption
	o := encrypt.Options{
		KeyringDir:  en.Keyring,
		WKD:         en.WKD == nil || *en.WKD,
		Resolver:    res,
		PositiveTTL: en.CacheTTL.D(),
		NegativeTTL: en.NegativeCacheTTL.D(),
		Logger:      log,
	}
	if cache {
		o.CacheFile = filepath.Join(cfg.StateDir, keyCacheFile)
	}
	if o.WKD {
		var roots *x509.CertPool // nil: the system's
		if cfg.Outbound.TLS.CAFile != "" {
			p, err := caPool(cfg.Outbound.TLS.CAFile)
			if err != nil {
				return nil, cfg.KeyError("outbound.tls.ca_file", err)
			}
			roots = p
		}
		o.HTTPClient = stsClient(res, roots)
	}
	if en.OpenPGPKey && cfg.DNS.DNSSECValidating {
		o.DNSSEC = res
	}
	d, err := encrypt.New(o)
	if err != nil {
		return nil, cfg.KeyError("outbound.encryption", err)
	}
	return d, nil
}

// encryptionRules are the OpenPGP parts of the TLS rules that encrypt,
// keyed by their match as tlspolicy.Decider.DomainRule returns it. A
// pinned key that cannot be used (unreadable, no encryption subkey,
// another fingerprint than the rule says) is a configuration error with
// its position: a partner must never get clear text, or nothing, because
// of a key file nobody checked.
func encryptionRules(cfg *config.Config, now time.Time) (map[string]*outbound.EncryptRule, error) {
	rules := map[string]*outbound.EncryptRule{}
	for i, p := range cfg.Outbound.TLS.Policies {
		if p.Fallback != "encrypt" && p.Encrypt != "always" {
			continue
		}
		key := fmt.Sprintf("outbound.tls.policies[%d]", i)
		r := &outbound.EncryptRule{Always: p.Encrypt == "always", WithoutKeyTLS: p.WithoutKey == "tls", Subject: p.EncryptedSubject}
		for j, s := range p.KeySources {
			src, err := encrypt.ParseSource(s)
			if err != nil {
				return nil, cfg.KeyError(fmt.Sprintf("%s.key_sources[%d]", key, j), err)
			}
			r.Sources = append(r.Sources, src)
		}
		for j, k := range p.Keys {
			pin := encrypt.Pin{Fingerprint: k.Fingerprint, File: k.File, Address: k.Address}
			if err := encrypt.CheckPin(pin, now); err != nil {
				return nil, cfg.KeyError(fmt.Sprintf("%s.keys[%d]", key, j), err)
			}
			r.Pins = append(r.Pins, pin)
		}
		rules[p.Match] = r
	}
	return rules, nil
}

// openpgpSigners are the organisations' signing keys by domain.
func openpgpSigners(cfg *config.Config, now time.Time) (map[string]*openpgp.Entity, error) {
	out := map[string]*openpgp.Entity{}
	for name, d := range cfg.Domains {
		if d.OpenPGPSigningKey == "" {
			continue
		}
		e, err := encrypt.LoadSigner(d.OpenPGPSigningKey, now)
		if err != nil {
			return nil, cfg.KeyError(cfg.DomainPath(name)+".openpgp_signing_key", err)
		}
		out[name] = e
	}
	return out, nil
}

// encryption is the engine's OpenPGP stage for cfg, nil when no rule
// encrypts. dir is the process's key directory (kept across reloads).
func encryption(cfg *config.Config, dir *encrypt.Directory) (*outbound.Encryption, error) {
	now := time.Now()
	rules, err := encryptionRules(cfg, now)
	if err != nil || len(rules) == 0 {
		return nil, err
	}
	signers, err := openpgpSigners(cfg, now)
	if err != nil {
		return nil, err
	}
	return &outbound.Encryption{Dir: dir, Rules: rules, Signers: signers, SpillDir: filepath.Join(cfg.StateDir, "tmp")}, nil
}
