package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"securerelay/config"
	"securerelay/dkim"
	"securerelay/inbound"
	"securerelay/outbound"
)

// loadDKIM loads every configured DKIM key. A key that cannot be used is a
// configuration error with its position, at start, in check-config and on
// reload, never an unsigned message discovered later; weak keys come back
// as warnings.
func loadDKIM(cfg *config.Config) (outbound.DKIMKeys, []string, error) {
	all, warnings, err := loadAllDKIM(cfg)
	if err != nil {
		return nil, warnings, err
	}
	keys := outbound.DKIMKeys{}
	for name, ks := range all {
		for _, k := range ks {
			if k.active {
				keys[name] = append(keys[name], k.Key)
			}
		}
	}
	return keys, warnings, nil
}

// configuredKey is a loaded key with its active flag.
type configuredKey struct {
	dkim.Key
	active bool
}

// loadAllDKIM loads active and inactive keys (dkim check wants both).
func loadAllDKIM(cfg *config.Config) (map[string][]configuredKey, []string, error) {
	keys := map[string][]configuredKey{}
	var errs config.Errors
	var warnings []string
	for name, d := range cfg.Domains {
		for i, k := range d.DKIM {
			key := fmt.Sprintf("%s.dkim[%d].key", cfg.DomainPath(name), i)
			signer, warn, err := dkim.LoadKey(k.Key)
			if err != nil {
				errs = append(errs, cfg.KeyError(key, err))
				continue
			}
			for _, w := range warn {
				warnings = append(warnings, cfg.KeyError(key, errors.New(w)).Error())
			}
			keys[name] = append(keys[name], configuredKey{dkim.Key{Domain: name, Selector: k.Selector, Signer: signer, Path: k.Key}, k.Signs()})
		}
	}
	if len(errs) > 0 {
		return nil, warnings, errs
	}
	return keys, warnings, nil
}

func dkimOptions(cfg *config.Config) dkim.Options {
	hc, bc, _ := strings.Cut(cfg.Outbound.DKIM.Canonicalization, "/")
	return dkim.Options{
		HeaderCanonicalization: hc,
		BodyCanonicalization:   bc,
		Oversign:               cfg.Outbound.DKIM.Oversign,
		Expiration:             cfg.Outbound.DKIM.Expiration.D(),
		IdentityFromHeader:     cfg.Outbound.DKIM.Identity == "from",
	}
}

// ourDomains is every domain we receive or sign for: an authenticated
// user may send From: any of them.
func ourDomains(cfg *config.Config) []string {
	var ds []string
	for name := range cfg.Domains {
		ds = append(ds, name)
	}
	return ds
}

// loadRecipients builds the inbound recipient sets; a recipients file that
// cannot be read is a configuration error with its position.
func loadRecipients(cfg *config.Config, log *slog.Logger) (map[string]*inbound.RecipientSet, error) {
	out := map[string]*inbound.RecipientSet{}
	var errs config.Errors
	for name, d := range cfg.Domains {
		if len(d.Recipients.List) == 0 && d.Recipients.File == "" {
			continue
		}
		set, err := inbound.NewRecipientSet(d.Recipients.List, d.Recipients.File, log)
		if err != nil {
			key := cfg.DomainPath(name) + ".recipients.file"
			errs = append(errs, cfg.KeyError(key, err))
			continue
		}
		out[name] = set
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}
