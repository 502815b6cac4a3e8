package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"securerelay/config"
	"securerelay/dnsutil"
	"securerelay/encrypt"
	"securerelay/outbound"
	"securerelay/smtputil"
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
	var errs config.Errors
	for i, p := range cfg.Outbound.TLS.Policies {
		if p.Fallback != "encrypt" && p.Encrypt != "always" {
			continue
		}
		key := fmt.Sprintf("outbound.tls.policies[%d]", i)
		r := &outbound.EncryptRule{Always: p.Encrypt == "always", WithoutKeyTLS: p.WithoutKey == "tls", Subject: p.EncryptedSubject}
		for j, s := range p.KeySources {
			src, err := encrypt.ParseSource(s)
			if err != nil {
				errs = append(errs, cfg.KeyError(fmt.Sprintf("%s.key_sources[%d]", key, j), err))
				continue
			}
			r.Sources = append(r.Sources, src)
		}
		for j, k := range p.Keys {
			pin := encrypt.Pin{Fingerprint: k.Fingerprint, File: k.File, Address: k.Address}
			if err := encrypt.CheckPin(pin, now); err != nil {
				errs = append(errs, cfg.KeyError(fmt.Sprintf("%s.keys[%d]", key, j), err))
				continue
			}
			r.Pins = append(r.Pins, pin)
		}
		rules[p.Match] = r
	}
	if len(errs) > 0 {
		// Every unusable key at once, as check-config promises.
		return nil, errs
	}
	return rules, nil
}

// openpgpSigners are the organisations' signing keys by domain.
func openpgpSigners(cfg *config.Config, now time.Time) (map[string]*openpgp.Entity, error) {
	out := map[string]*openpgp.Entity{}
	var errs config.Errors
	for name, d := range cfg.Domains {
		if d.OpenPGPSigningKey == "" {
			continue
		}
		e, err := encrypt.LoadSigner(d.OpenPGPSigningKey, now)
		if err != nil {
			errs = append(errs, cfg.KeyError(cfg.DomainPath(name)+".openpgp_signing_key", err))
			continue
		}
		out[name] = e
	}
	if len(errs) > 0 {
		// Map order: sorted by line, as the file reads.
		slices.SortFunc(errs, func(a, b *config.Error) int { return a.Line - b.Line })
		return nil, errs
	}
	return out, nil
}

// encryption is the engine's OpenPGP stage for cfg, nil when no rule
// encrypts. dir is the process's key directory (kept across reloads).
func encryption(cfg *config.Config, dir *encrypt.Directory) (*outbound.Encryption, error) {
	now := time.Now()
	rules, rerr := encryptionRules(cfg, now)
	signers, serr := openpgpSigners(cfg, now)
	if rerr != nil || serr != nil {
		var all config.Errors
		for _, err := range []error{rerr, serr} {
			var errs config.Errors
			if errors.As(err, &errs) {
				all = append(all, errs...)
			}
		}
		return nil, all
	}
	if len(rules) == 0 {
		return nil, nil
	}
	return &outbound.Encryption{Dir: dir, Rules: rules, Signers: signers, SpillDir: filepath.Join(cfg.StateDir, "tmp")}, nil
}

// encryptCmd is "securerelay encrypt lookup --config FILE ADDRESS": which
// key the encryption fallback would use for ADDRESS, from where, and why
// every other candidate was refused. A fresh lookup (no cache), through
// the configuration's sources. Exit 0: a usable key; 1: none (or a
// configuration error); 2: usage; 3: a source failed temporarily and no
// key was found.
func encryptCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "lookup" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	fs := flag.NewFlagSet("encrypt lookup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	timeout := fs.Duration("timeout", 30*time.Second, "time for all lookups")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *path == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: securerelay encrypt lookup --config FILE ADDRESS")
		return 2
	}
	addr := strings.TrimSpace(fs.Arg(0))
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		fmt.Fprintf(stderr, "securerelay encrypt lookup: %q is not an address (local@domain)\n", addr)
		return 2
	}
	domain := smtputil.AddressDomain(addr)
	cfg, code := load(*path, stderr)
	if cfg == nil {
		return code
	}
	res := dnsutil.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
	dec, err := tlsDecider(cfg, res, quietLog, nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	dir, err := keyDirectory(cfg, res, quietLog, false)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer dir.Close()
	rules, err := encryptionRules(cfg, time.Now())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	q := encrypt.Query{Address: addr}
	if r := rules[dec.DomainRule(domain)]; r != nil {
		fmt.Fprintf(stdout, "rule: %s\n", describeEncryptRule(cfg, dec.DomainRule(domain), r))
		q.Sources, q.Pins = r.Sources, r.Pins
	} else {
		fmt.Fprintf(stdout, "rule: no TLS rule encrypts mail to %s, so the relay never encrypts it; looked up as such a rule would by default\n", domain)
		for _, s := range config.DefaultKeySources(&cfg.Outbound.Encryption) {
			src, _ := encrypt.ParseSource(s)
			q.Sources = append(q.Sources, src)
		}
	}
	fmt.Fprintf(stdout, "sources, in order: %s\n", joinSources(q.Sources))
	if slices.Contains(q.Sources, encrypt.SourceWKD) {
		if adv, direct, err := encrypt.WKDURLs(addr); err == nil {
			fmt.Fprintf(stdout, "  wkd: %s\n  wkd (direct): %s\n", adv, direct)
		}
	}
	if slices.Contains(q.Sources, encrypt.SourceOPENPGPKEY) {
		if name, err := encrypt.OPENPGPKEYName(addr); err == nil {
			fmt.Fprintf(stdout, "  openpgpkey: %s (trusted only from a DNSSEC-validated answer)\n", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	r := dir.Lookup(ctx, q)
	for _, rf := range r.Refused {
		fmt.Fprintf(stdout, "refused: %s\n", rf.String())
	}
	fmt.Fprintf(stdout, "searched: %s\n", joinSources(r.Searched))
	switch {
	case r.Key != nil:
		k := r.Key
		fmt.Fprintf(stdout, "key: %s from %s (%s)\n", k.Fingerprint, k.Source, k.Origin)
		var ids []string
		for name := range k.Entity.Identities {
			ids = append(ids, name)
		}
		slices.Sort(ids)
		for _, id := range ids {
			fmt.Fprintf(stdout, "  user id: %s\n", id)
		}
		return 0
	case r.Temporary != nil:
		fmt.Fprintf(stdout, "key: none found, but a source could not be asked: %v (delivery would wait and try again)\n", r.Temporary)
		return 3
	}
	fmt.Fprintf(stdout, "key: none usable for %s\n", addr)
	return 1
}

func joinSources(ss []encrypt.Source) string {
	if len(ss) == 0 {
		return "none"
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return strings.Join(out, ", ")
}

// describeEncryptRule says what an encrypting rule does, for explain and
// encrypt lookup.
func describeEncryptRule(cfg *config.Config, match string, r *outbound.EncryptRule) string {
	idx := slices.IndexFunc(cfg.Outbound.TLS.Policies, func(p config.TLSPolicy) bool { return p.Match == match })
	var b strings.Builder
	fmt.Fprintf(&b, "policy rule %d (match %s): ", idx+1, match)
	switch {
	case r.Always && r.WithoutKeyTLS:
		b.WriteString("always encrypted (encrypt: always); a recipient without a key gets it unencrypted when the TLS level is met (without_key: tls)")
	case r.Always:
		b.WriteString("always encrypted (encrypt: always); a recipient without a key waits, and outbound listeners refuse it at RCPT (without_key: refuse)")
	default:
		b.WriteString("encrypted when no next hop meets the TLS level (fallback: encrypt), then sent over the best session offered; a recipient without a key waits")
	}
	fmt.Fprintf(&b, "; pinned keys %d; outer subject %q", len(r.Pins), r.Subject)
	return b.String()
}
