package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"securerelay/config"
	"securerelay/dkim"
	"securerelay/dnsutil"
	"securerelay/smtputil"
)

// dkimCmd is `securerelay dkim keygen|check`.
func dkimCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "keygen":
		return dkimKeygen(args[1:], stdout, stderr)
	case "rotate":
		return dkimRotate(args[1:], stdout, stderr)
	case "check":
		path, ok := configFlag("dkim check", args[1:], stderr)
		if !ok {
			return 2
		}
		cfg, code := load(path, stderr)
		if cfg == nil {
			return code
		}
		return dkimCheck(cfg, stdout, stderr)
	}
	fmt.Fprintf(stderr, "securerelay dkim: unknown subcommand %q\n%s", args[0], usage)
	return 2
}

func dkimKeygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dkim keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	domain := fs.String("domain", "", "the signing domain (d=)")
	selector := fs.String("selector", "", "the selector (s=), e.g. s2026")
	alg := fs.String("algorithm", "rsa", "rsa or ed25519")
	bits := fs.Int("bits", 2048, "RSA key size (1024 to 4096)")
	out := fs.String("out", "", "where to write the private key (mode 0600; never overwritten)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *domain == "" || *selector == "" || *out == "" {
		fmt.Fprintln(stderr, "securerelay dkim keygen: --domain, --selector and --out are required")
		return 2
	}
	// The record's owner name is in A-labels (RFC 8616 §4), however the
	// domain was written.
	ascii, err := smtputil.DomainToASCII(*domain)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay dkim keygen: --domain: %v\n", err)
		return 2
	}
	txt, err := newKeyFile(*alg, *bits, *out)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay dkim keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "; private key written to %s\n", *out)
	fmt.Fprintf(stdout, "; publish this record, then add to the config under domains.%s.dkim:\n", *domain)
	fmt.Fprintf(stdout, ";   - {selector: %s, key: %s}\n", *selector, *out)
	fmt.Fprintf(stdout, "; and run `securerelay dkim check --config FILE` until it says ok.\n")
	fmt.Fprintln(stdout, dkim.ZoneEntry(ascii, *selector, txt))
	return 0
}

// dkimCheck looks up every configured selector through the configured
// resolver and says, per key, whether receivers will find it.
func dkimCheck(cfg *config.Config, stdout, stderr io.Writer) int {
	resolver, timeout := cfg.DNS.Resolver, cfg.DNS.Timeout.D()
	keys, _, err := loadAllDKIM(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if resolver == "" {
		fmt.Fprintln(stderr, "securerelay dkim check: no dns.resolver configured and none in /etc/resolv.conf")
		return 1
	}
	res := dnsutil.New(resolver, timeout)
	var domains []string
	for d := range keys {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tSELECTOR\tALGORITHM\tSIGNS\tRECORD\tRESULT\tDETAIL")
	bad := 0
	for _, d := range domains {
		for _, k := range keys[d] {
			name := dkim.RecordName(d, k.Selector)
			ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Second)
			txts, err := res.LookupTXT(ctx, name)
			cancel()
			var result, detail string
			switch {
			case err == nil:
				r, det := dkim.CheckRecord(txts, k.Signer.Public())
				result, detail = r.String(), det
				if r != dkim.CheckOK {
					bad++
				}
			case dnsutil.IsNotFound(err) || dnsutil.IsNoData(err):
				r, det := dkim.CheckRecord(nil, k.Signer.Public())
				result, detail = r.String(), det
				bad++
			default:
				var de *dnsutil.Error
				result, detail = "dns-error", err.Error()
				if errors.As(err, &de) {
					detail = de.Error()
				}
				bad++
			}
			signs := "yes"
			if !k.active {
				signs = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d, k.Selector, k.Algorithm(), signs, name, result, detail)
		}
	}
	tw.Flush()
	if bad > 0 {
		return 1
	}
	return 0
}

// dkimRotate starts a key rotation: it makes the next key of a domain,
// next to its current ones, and says what to publish and how to switch.
// It never signs with the new key by itself: that waits until its DNS
// record is out (dkim check says ok) and the admin marks it active.
func dkimRotate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dkim rotate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	domain := fs.String("domain", "", "the domain whose key is rotated")
	selector := fs.String("selector", "", "the new selector (default s<YYYYMMDD>)")
	alg := fs.String("algorithm", "", "rsa or ed25519 (default: the algorithm of the current active key, else rsa)")
	bits := fs.Int("bits", 2048, "RSA key size (1024 to 4096)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" || *domain == "" {
		fmt.Fprintln(stderr, "securerelay dkim rotate: --config and --domain are required")
		return 2
	}
	cfg, code := load(*path, stderr)
	if cfg == nil {
		return code
	}
	// The configuration keeps domains in A-labels; either form names one.
	name, err := smtputil.DomainToASCII(*domain)
	if err != nil {
		name = strings.ToLower(strings.TrimSuffix(*domain, "."))
	}
	d, ok := cfg.Domains[name]
	if !ok {
		fmt.Fprintf(stderr, "securerelay dkim rotate: %s is not under domains: in %s\n", *domain, cfg.Path)
		return 1
	}
	if *selector == "" {
		*selector = "s" + time.Now().Format("20060102")
	}
	dir := filepath.Join(filepath.Dir(cfg.Path), "keys")
	for _, k := range d.DKIM {
		if k.Selector == *selector {
			fmt.Fprintf(stderr, "securerelay dkim rotate: selector %s is already configured for %s; choose another with --selector\n", *selector, name)
			return 1
		}
		if k.Signs() {
			dir = filepath.Dir(k.Key)
			if *alg == "" {
				if s, _, err := dkim.LoadKey(k.Key); err == nil && (dkim.Key{Signer: s}).Algorithm() == dkim.AlgEd25519SHA256 {
					*alg = "ed25519"
				}
			}
		}
	}
	if *alg == "" {
		*alg = "rsa"
	}
	out := filepath.Join(dir, name+"."+*selector+".key")
	txt, err := newKeyFile(*alg, *bits, out)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay dkim rotate: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "; new key for %s written to %s (not signing yet)\n", name, out)
	fmt.Fprintf(stdout, "; 1. publish this record:\n")
	fmt.Fprintln(stdout, dkim.ZoneEntry(name, *selector, txt))
	fmt.Fprintf(stdout, "; 2. add it to %s under %s.dkim, inactive:\n", cfg.Path, cfg.DomainPath(name))
	fmt.Fprintf(stdout, ";      - {selector: %s, key: %s, active: false}\n", *selector, out)
	fmt.Fprintf(stdout, ";    and reload (SIGHUP). `securerelay dkim check --config %s` says ok for it once DNS has it.\n", cfg.Path)
	fmt.Fprintf(stdout, "; 3. then make it active and the old key(s) active: false; reload. Keep the old record\n")
	fmt.Fprintf(stdout, ";    published for a grace period (a week: mail signed with it may still be in transit\n")
	fmt.Fprintf(stdout, ";    or re-verified), then remove the old record, its config entry and its key file.\n")
	return 0
}

// newKeyFile generates a key, writes it to path (0600, never over an
// existing file) and returns the TXT value of its DNS record.
func newKeyFile(alg string, bits int, path string) (string, error) {
	signer, pemBytes, err := dkim.GenerateKey(alg, bits)
	if err != nil {
		return "", err
	}
	if err := dkim.WriteKeyFile(path, pemBytes); err != nil {
		return "", err
	}
	return dkim.TXTRecord(signer.Public())
}
