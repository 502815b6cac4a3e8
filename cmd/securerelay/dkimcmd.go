package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"securerelay/config"
	"securerelay/dkim"
	"securerelay/dnsutil"
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
	signer, pemBytes, err := dkim.GenerateKey(*alg, *bits)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay dkim keygen: %v\n", err)
		return 1
	}
	if err := dkim.WriteKeyFile(*out, pemBytes); err != nil {
		fmt.Fprintf(stderr, "securerelay dkim keygen: %v\n", err)
		return 1
	}
	txt, err := dkim.TXTRecord(signer.Public())
	if err != nil {
		fmt.Fprintf(stderr, "securerelay dkim keygen: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "; private key written to %s\n", *out)
	fmt.Fprintf(stdout, "; publish this record, then add to the config under domains.%s.dkim:\n", *domain)
	fmt.Fprintf(stdout, ";   - {selector: %s, key: %s}\n", *selector, *out)
	fmt.Fprintf(stdout, "; and run `securerelay dkim check --config FILE` until it says ok.\n")
	fmt.Fprintln(stdout, dkim.ZoneEntry(*domain, *selector, txt))
	return 0
}

// dkimCheck looks up every configured selector through the configured
// resolver and says, per key, whether receivers will find it.
func dkimCheck(cfg *config.Config, stdout, stderr io.Writer) int {
	resolver, timeout := cfg.DNS.Resolver, cfg.DNS.Timeout.D()
	keys, _, err := loadDKIM(cfg)
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
	fmt.Fprintln(tw, "DOMAIN\tSELECTOR\tALGORITHM\tRECORD\tRESULT\tDETAIL")
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
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d, k.Selector, k.Algorithm(), name, result, detail)
		}
	}
	tw.Flush()
	if bad > 0 {
		return 1
	}
	return 0
}
