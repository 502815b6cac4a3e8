package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"securerelay/attach"
	"securerelay/authres"
	"securerelay/config"
	"securerelay/dnsutil"
	"securerelay/inbound"
	"securerelay/milter"
	"securerelay/tlspolicy"
)

// tlsDecider builds the outbound TLS policy from the configuration. A rule
// the policy package refuses is a configuration error with its position,
// like a bad DKIM key: never a rule silently dropped.
func tlsDecider(cfg *config.Config, res *dnsutil.Client, log *slog.Logger, cache tlspolicy.STSCache) (*tlspolicy.Decider, error) {
	return tlsDeciderObserved(cfg, res, log, cache, nil)
}

// tlsDeciderObserved is tlsDecider for the running relay: observe (nil:
// none) gets every session's TLS outcome, for the metrics.
func tlsDeciderObserved(cfg *config.Config, res *dnsutil.Client, log *slog.Logger, cache tlspolicy.STSCache, observe func(tlspolicy.Outcome)) (*tlspolicy.Decider, error) {
	t := cfg.Outbound.TLS
	def, err := tlspolicy.ParseLevel(t.Default)
	if err != nil {
		return nil, cfg.KeyError("outbound.tls.default", err)
	}
	globalMin, _ := tlspolicy.ParseVersion(t.MinVersion)
	o := tlspolicy.Options{
		Default: def, DANE: t.DANE, MTASTS: t.MTASTS, AllowTLSRequiredNo: t.TLSRequiredNo == "honour",
		Resolver: res, MinVersion: globalMin, Logger: log, Cache: cache, Observe: observe,
	}
	if cfg.DNS.DNSSECValidating {
		o.DNSSEC = res
	}
	if t.CAFile != "" {
		pool, err := caPool(t.CAFile)
		if err != nil {
			return nil, cfg.KeyError("outbound.tls.ca_file", err)
		}
		o.RootCAs = pool
	}
	o.HTTPClient = stsClient(res, o.RootCAs)
	for i, p := range t.Policies {
		key := fmt.Sprintf("outbound.tls.policies[%d]", i)
		lvl, err := tlspolicy.ParseLevel(p.Level)
		if err != nil {
			return nil, cfg.KeyError(key+".level", err)
		}
		r := tlspolicy.Rule{Match: p.Match, Level: lvl, Names: p.Names, Fingerprints: p.Fingerprints, Fallback: p.Fallback}
		if strings.HasPrefix(r.Match, "[") {
			r.Match = "host:" + strings.Trim(r.Match, "[]")
		}
		if p.MinVersion != "" {
			r.MinVersion, _ = tlspolicy.ParseVersion(p.MinVersion)
		}
		if r.Ciphers, err = tlspolicy.ParseCipherSuites(p.Ciphers); err != nil {
			return nil, cfg.KeyError(key+".ciphers", err)
		}
		o.Rules = append(o.Rules, r)
	}
	d, err := tlspolicy.New(o)
	if err != nil {
		var re *tlspolicy.RuleError
		if errors.As(err, &re) {
			key := fmt.Sprintf("outbound.tls.policies[%d]", re.Index)
			return nil, cfg.KeyError(key, re.Err)
		}
		return nil, err
	}
	return d, nil
}

// inboundContent builds the content stage: the SPF/DKIM/DMARC checker and
// one milter chain per content policy that names milters.
func inboundContent(cfg *config.Config, res *dnsutil.Client, log *slog.Logger) (*inbound.Content, error) {
	ct, au := cfg.Inbound.Content, cfg.Inbound.Auth
	c := &inbound.Content{Chains: map[string]*milter.Chain{}, DomainPolicy: map[string]string{},
		RecipientDeletion: action(ct.RecipientDeletion), Hostname: cfg.Hostname}
	if au.Enabled {
		c.AuthServID = au.AuthServID
		c.Auth = authres.New(authres.Options{AuthServID: au.AuthServID, Resolver: res, Timeout: au.Timeout.D(),
			IgnoreDMARCReject: au.RejectDMARC != nil && !*au.RejectDMARC, RejectSPFFail: au.RejectSPFFail})
	}
	byName := map[string]config.Milter{}
	for _, m := range ct.Milters {
		byName[m.Name] = m
	}
	for name, list := range ct.Policies {
		if len(list) == 0 {
			continue
		}
		var cfgs []milter.Config
		for _, n := range list {
			m := byName[n]
			cfgs = append(cfgs, milter.Config{Name: m.Name, Address: m.Address, OnError: m.OnError,
				ConnectTimeout: m.ConnectTimeout.D(), ReadTimeout: m.ReadTimeout.D(), WriteTimeout: m.WriteTimeout.D()})
		}
		ch, err := milter.NewChain(cfgs, log)
		if err != nil {
			key := "inbound.content.policies." + name
			return nil, cfg.KeyError(key, err)
		}
		ch.Version = "securerelay " + versionString()
		c.Chains[name] = ch
	}
	for name, d := range cfg.Domains {
		if d.ContentPolicy != "" {
			c.DomainPolicy[name] = d.ContentPolicy
		}
	}
	c.Attachments = attachments(cfg)
	return c, nil
}

// attachments builds the attachment policy stage; nil when it is off.
func attachments(cfg *config.Config) *inbound.Attachments {
	at := cfg.Inbound.Attachments
	if at.Enabled != nil && !*at.Enabled {
		return nil
	}
	a := &inbound.Attachments{
		Limits: attach.Limits{MaxDepth: at.MaxDepth, MaxEntries: at.MaxEntries, MaxBytes: int64(at.MaxUncompressed),
			MaxRatio: at.MaxRatio, Timeout: at.Timeout.D(), TempDir: filepath.Join(cfg.StateDir, "tmp")},
		Policies: map[string]*attach.Policy{}, DomainPolicy: map[string]string{},
	}
	off := func(action string) string {
		if action == "off" {
			return attach.Pass
		}
		return action
	}
	for name, p := range at.Policies {
		pol := &attach.Policy{Name: name, Banned: map[attach.Class]bool{}, Action: p.Action,
			Encrypted: off(p.Encrypted), Unopened: off(p.Unopened), Limits: p.Limits}
		for _, b := range p.Banned {
			pol.Banned[attach.Class(b)] = true
		}
		for _, n := range p.BannedNames {
			pol.BannedNames = append(pol.BannedNames, strings.ToLower(n))
		}
		a.Policies[name] = pol
	}
	if a.Policies["default"] == nil {
		a.Policies["default"] = attach.DefaultPolicy()
	}
	for name, d := range cfg.Domains {
		if d.AttachmentPolicy != "" {
			a.DomainPolicy[name] = d.AttachmentPolicy
		}
	}
	return a
}

// caPool is the system's roots plus the PEM certificates in file (a
// partner's private CA), for verify and secure.
func caPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", file)
	}
	return pool, nil
}

// stsClient fetches MTA-STS policies: names resolved through the
// configured resolver like every other lookup (not the system's), no
// proxy from the environment, and the same trust roots as verify.
func stsClient(res *dnsutil.Client, roots *x509.CertPool) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			ips, err := res.LookupHost(ctx, host)
			if err != nil {
				return nil, err
			}
			var last error
			for _, ip := range ips {
				c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
				if err == nil {
					return c, nil
				}
				last = err
			}
			if last == nil {
				last = fmt.Errorf("%s: no address", host)
			}
			return nil, last
		},
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        10,
		IdleConnTimeout:     30 * time.Second,
	}}
}
