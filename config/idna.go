package config

import (
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// Internationalised domain names (RFC 5890) may be written in the file
// as U-labels ("müller.example") or A-labels ("xn--mller-kva.example").
// Everything the relay compares them with (recipient domains, MX and
// certificate names, the DNS names of DKIM keys) uses A-labels, so every
// key that names a domain is normalised once, here, to A-labels, and the
// rest of the program sees one form.
//
// The configuration declares names that exist (our domains, partners'
// domains, their hosts), so they are checked with IDNA's Registration
// profile, which accepts only what a registry would: a name that IDNA
// would have to map first (a compatibility character such as "ﬁ") is an
// error with its line rather than a domain that silently never matches.
// Case is folded before, as for ASCII names. What arrives from the
// network is mapped with the lenient Lookup profile instead
// (smtputil.ParseMailbox), as a resolver does with a name a person typed.

// domainName normalises a domain name written in the configuration: no
// surrounding space, lower case, no trailing dot, U-labels as A-labels.
// An ASCII name without "xn--" labels is only checked as a host name
// (letters, digits, hyphens), not by IDNA's label rules, which refuse
// names DNS holds ("r3--sn-x.example").
func domainName(raw string) (string, error) {
	name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(raw)), ".")
	if needsIDNA(name) {
		a, err := idna.Registration.ToASCII(name)
		if err != nil {
			return "", fmt.Errorf("it is not a valid internationalised domain name (IDNA2008: %s); write it as it is registered, in U-labels (müller.example) or A-labels (xn--mller-kva.example)",
				strings.TrimPrefix(err.Error(), "idna: "))
		}
		name = a
	}
	return name, checkDomainName(name, false)
}

// needsIDNA: a name (or an address, or a rule's [host]) with non-ASCII
// characters or an A-label.
func needsIDNA(name string) bool {
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			return true
		}
	}
	for _, l := range strings.FieldsFunc(name, func(r rune) bool { return r == '.' || r == '@' || r == '[' }) {
		if strings.HasPrefix(l, "xn--") {
			return true
		}
	}
	return false
}

// addressName normalises the domain of an address (local@domain), the
// local part as written.
func addressName(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	at := strings.LastIndexByte(raw, '@')
	if at < 0 {
		return raw, nil
	}
	d, err := domainName(raw[at+1:])
	if err != nil {
		return "", err
	}
	return raw[:at+1] + d, nil
}

// normalizeNames writes every domain the configuration names in A-labels
// (see above): the recipients lists, routes, TLS rules (match, names,
// pinned keys' addresses), the postmaster, users' senders, the null
// sender address and automatic senders. A name that is not valid IDNA is
// an error at its line, and its key is skipped by the later checks, which
// would only repeat it. It runs after normalizeDomains (the domain keys)
// and before validation, which then compares one form.
func (l *loader) normalizeNames(c *Config) {
	fix := func(key string, v *string, norm func(string) (string, error)) {
		if *v == "" || !needsIDNA(strings.ToLower(*v)) {
			return
		}
		n, err := norm(*v)
		if err != nil {
			l.errorf(key, "%q: %v", *v, err)
			l.skip = append(l.skip, l.filePath(key))
			return
		}
		*v = n
	}
	// pattern: "*", ".domain" (subdomains), "[host]" or a domain.
	pattern := func(p string) (string, error) {
		t := strings.TrimSpace(p)
		switch {
		case strings.HasPrefix(t, "[") && strings.HasSuffix(t, "]"):
			d, err := domainName(t[1 : len(t)-1])
			return "[" + d + "]", err
		case strings.HasPrefix(t, "."):
			d, err := domainName(t[1:])
			return "." + d, err
		}
		return domainName(t)
	}
	for name, d := range c.Domains {
		for i := range d.Recipients.List {
			fix(fmt.Sprintf("%s.recipients.list[%d]", l.domainPath(name), i), &d.Recipients.List[i], addressName)
		}
	}
	fix("postmaster", &c.Postmaster, addressName)
	for i := range c.Listeners {
		fix(fmt.Sprintf("listeners[%d].null_sender_address", i), &c.Listeners[i].NullSenderAddress, addressName)
	}
	for i := range c.Outbound.Users {
		for j := range c.Outbound.Users[i].Senders {
			fix(fmt.Sprintf("outbound.users[%d].senders[%d]", i, j), &c.Outbound.Users[i].Senders[j], addressName)
		}
	}
	for i := range c.Outbound.AutomaticSenders {
		fix(fmt.Sprintf("outbound.automatic_senders[%d]", i), &c.Outbound.AutomaticSenders[i], addressName)
	}
	for i := range c.Outbound.Routes {
		fix(fmt.Sprintf("outbound.routes[%d].match", i), &c.Outbound.Routes[i].Match, pattern)
	}
	for i := range c.Outbound.TLS.Policies {
		r := &c.Outbound.TLS.Policies[i]
		p := fmt.Sprintf("outbound.tls.policies[%d]", i)
		fix(p+".match", &r.Match, pattern)
		for j := range r.Names {
			fix(fmt.Sprintf("%s.names[%d]", p, j), &r.Names[j], pattern)
		}
		for j := range r.Keys {
			fix(fmt.Sprintf("%s.keys[%d].address", p, j), &r.Keys[j].Address, addressName)
		}
	}
}
