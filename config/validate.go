package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// validate checks what decoding cannot: values that parse but make no
// sense, and combinations that cannot work. It runs after defaults, so a
// zero or negative number here was written in the file.
func (l *loader) validate(c *Config) {
	l.checkHostname(c)
	if l.idx.has("postmaster") {
		if err := checkAddress(c.Postmaster); err != nil {
			l.errorf("postmaster", "%v; write a full address, e.g. postmaster@example.com", err)
		}
	}
	for i, a := range c.ProxyAddresses {
		if ip, err := netip.ParseAddr(a); err != nil || ip.Zone() != "" || ip.IsUnspecified() {
			l.errorf(fmt.Sprintf("proxy_addresses[%d]", i), "%q is not a single IP address; write the public address mail reaches this relay on, e.g. 203.0.113.25 or 2001:db8::25", a)
		}
	}
	l.oneOf("log.format", c.Log.Format, "text", "json")
	l.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")

	switch {
	case c.TLS.Cert != "" && c.TLS.Key == "":
		l.errorf("tls.key", "missing: tls.cert is set, so tls.key must name its private key file (or remove both to use a generated self-signed certificate)")
	case c.TLS.Cert == "" && c.TLS.Key != "":
		l.errorf("tls.cert", "missing: tls.key is set, so tls.cert must name the certificate file (or remove both to use a generated self-signed certificate)")
	}

	if c.DNS.Resolver != "" {
		hp, err := checkHostPort(c.DNS.Resolver, true, 1)
		if err == nil {
			host, _, _ := net.SplitHostPort(hp)
			if _, perr := netip.ParseAddr(host); perr != nil {
				err = fmt.Errorf("%q: the resolver must be an IP address (a name would need a resolver to look it up), e.g. 127.0.0.1:53", c.DNS.Resolver)
			}
		}
		if err != nil {
			l.errorf("dns.resolver", "%v", err)
		}
	}
	l.positiveDuration("dns.timeout", c.DNS.Timeout, "the default, "+DefaultDNSTimeout.String())
	if a := c.Metrics.Address; a != "" {
		host, _, err := net.SplitHostPort(a)
		ip, perr := netip.ParseAddr(host)
		switch {
		case err != nil:
			l.errorf("metrics.address", "%q: %v; write a loopback address and port, e.g. 127.0.0.1:9325", a, err)
		case perr != nil || !ip.IsLoopback():
			l.errorf("metrics.address", "%q: must be a loopback address (127.0.0.1 or [::1]); the health and metrics pages are for this host, reach them from elsewhere through a proxy or an SSH tunnel", a)
		}
	}
	if c.DNS.CacheSize < 0 {
		l.errorf("dns.cache_size", "%d: must be 0 (no cache) or a number of answers, e.g. the default, %d", c.DNS.CacheSize, DefaultDNSCacheSize)
	}

	l.checkLimits("limits", c.Limits, nil)
	l.checkListeners(c)
	l.checkDomains(c)
	l.checkOutbound(c)

	for i, d := range c.Queue.Retry {
		if d <= 0 {
			l.errorf(fmt.Sprintf("queue.retry[%d]", i), "must be a positive delay, e.g. 5m")
		}
	}
	l.positiveDuration("queue.max_age", c.Queue.MaxAge, "the default, "+DefaultQueueMaxAge.String())
	l.positiveInt("queue.workers", c.Queue.Workers, "the default, "+strconv.Itoa(DefaultQueueWorkers))
	l.checkHold(c)
	l.checkDSN(c)
	l.checkControlGroup(c)
}

// checkControlGroup checks that queue.control_group names a group of this
// host.
func (l *loader) checkControlGroup(c *Config) {
	g := c.Queue.ControlGroup
	if g == "" {
		return
	}
	if _, err := user.LookupGroup(g); err != nil {
		l.errorf("queue.control_group", "%q: no such group on this host (%v); create it (groupadd %s) and add the operators to it, or leave the key out (the control socket is then for root and the relay's user only)", g, err, g)
	}
}

// checkDSN checks the DSN settings of the queue.
func (l *loader) checkDSN(c *Config) {
	q := &c.Queue
	switch {
	case q.DelayWarningTime < 0:
		l.errorf("queue.delay_warning_time", "must not be negative; 0 or leaving it out sends no delay notices, 4h sends one after four hours")
	case q.DelayWarningTime > 0 && q.DelayWarningTime >= q.MaxAge:
		l.warnf("queue.delay_warning_time", "%s is not less than queue.max_age (%s): a message expires (and its sender gets the failure notice) before any delay notice; lower it, e.g. 4h", q.DelayWarningTime, q.MaxAge)
	}
}

// checkHold checks the spool/hold limits, and warns about what fills
// spool/hold: a domain that accepts every local part and delivers to a
// system that can refuse them after our 250.
func (l *loader) checkHold(c *Config) {
	q := &c.Queue
	l.positiveDuration("queue.hold_max_age", q.HoldMaxAge, "the default, "+DefaultQueueHoldMaxAge.String())
	l.positiveDuration("queue.quarantine_max_age", q.QuarantineMaxAge, "the default, "+DefaultQueueQuarantineMaxAge.String())
	largest, where := c.Limits.MaxMessageSize, "limits.max_message_size"
	for i, ln := range c.Listeners {
		if ln.Limits.MaxMessageSize > largest {
			largest, where = ln.Limits.MaxMessageSize, fmt.Sprintf("listeners[%d].limits.max_message_size", i)
		}
	}
	switch {
	case q.HoldMaxSize <= 0:
		l.errorf("queue.hold_max_size", "must be positive, e.g. 1GB (0 or leaving it out means the default, %s)", DefaultQueueHoldMaxSize)
	case q.HoldMaxSize < largest:
		l.errorf("queue.hold_max_size", "%s is less than %s (%s): a held message of that size would be deleted the moment it is held; raise it", q.HoldMaxSize, where, largest)
	}

	inbound := false
	for _, ln := range c.Listeners {
		inbound = inbound || ln.Role == "inbound"
	}
	if !inbound {
		return
	}
	names := make([]string, 0, len(c.Domains))
	for name := range c.Domains {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		d := c.Domains[name]
		scheme, _, err := ParseDeliverTo(d.DeliverTo)
		if err != nil || scheme == "maildir" {
			// A maildir creates the mailbox: nothing is refused later.
			continue
		}
		r := d.Recipients
		checked := (len(r.List) > 0 || r.File != "" || r.Verify) && c.Inbound.Checks.UnknownRecipient != "off"
		if checked {
			continue
		}
		key, why, fix := l.domainPath(name)+".recipients", "it has no recipients list, file or verify", "set recipients: {verify: true} or list the recipients"
		if len(r.List) > 0 || r.File != "" || r.Verify {
			key, why, fix = "inbound.checks.unknown_recipient", "inbound.checks.unknown_recipient is off", "set inbound.checks.unknown_recipient: reject"
		}
		if !l.idx.has(key) {
			key = l.domainPath(name)
		}
		l.warnf(key, "%s accepts every local part (%s): what %s refuses after our 250 cannot be bounced and waits in spool/hold until queue.hold_max_age or queue.hold_max_size deletes it, so mail from outsiders to made-up names pushes out the held mail that matters; %s", name, why, d.DeliverTo, fix)
	}
}

func (l *loader) checkHostname(c *Config) {
	const hint = "set hostname: to the fully qualified name this relay's IP address resolves to, e.g. mx1.example.com (other mail servers check it)"
	switch err := checkDomainName(c.Hostname, true); {
	case c.Hostname == "":
		l.errorf("hostname", "not set, and the system hostname is unknown; %s", hint)
	case err == nil:
	case l.hostnameFromOS:
		l.errorf("hostname", "not set, and the system hostname %q cannot be used: %v; %s", c.Hostname, err, hint)
	default:
		l.errorf("hostname", "%q is not a fully qualified host name: %v; %s", c.Hostname, err, hint)
	}
	if l.idx.has("outbound.helo") {
		if err := checkDomainName(c.Outbound.Helo, true); err != nil {
			l.errorf("outbound.helo", "%q is not a fully qualified host name: %v; remove it to use hostname, or write the name this relay's IP address resolves to", c.Outbound.Helo, err)
		}
	}
}

// checkLimits checks one set of limits. For a listener, global is the
// (already checked) global set: a field equal to it was inherited, and its
// problem has been reported once already.
func (l *loader) checkLimits(prefix string, lim Limits, global *Limits) {
	def := func(field string, v any) string {
		if global != nil {
			return "the global limits." + field
		}
		return fmt.Sprintf("the default, %v", v)
	}
	own := func(a, b any) bool { return global == nil || a != b }
	var g Limits
	if global != nil {
		g = *global
	}
	if own(lim.MaxMessageSize, g.MaxMessageSize) && lim.MaxMessageSize <= 0 {
		l.errorf(prefix+".max_message_size", "must be positive, e.g. 50MB (0 or leaving it out means %s)", def("max_message_size", defaultLimits.MaxMessageSize))
	}
	for _, f := range []struct {
		name   string
		v, gv  int
		defVal int
	}{
		{"max_recipients", lim.MaxRecipients, g.MaxRecipients, defaultLimits.MaxRecipients},
		{"max_line_length", lim.MaxLineLength, g.MaxLineLength, defaultLimits.MaxLineLength},
		{"max_errors", lim.MaxErrors, g.MaxErrors, defaultLimits.MaxErrors},
		{"max_connections", lim.MaxConnections, g.MaxConnections, defaultLimits.MaxConnections},
		{"max_auto_replies", lim.MaxAutoReplies, g.MaxAutoReplies, defaultLimits.MaxAutoReplies},
		{"max_hops", lim.MaxHops, g.MaxHops, defaultLimits.MaxHops},
	} {
		if own(f.v, f.gv) {
			l.positiveInt(prefix+"."+f.name, f.v, def(f.name, f.defVal))
		}
	}
	if own(lim.MaxLineLength, g.MaxLineLength) && lim.MaxLineLength > 0 && lim.MaxLineLength < 1000 {
		l.errorf(prefix+".max_line_length", "%d is below the 1000 bytes RFC 5321 requires every server to accept; legitimate mail would be refused", lim.MaxLineLength)
	}
	if own(lim.CommandTimeout, g.CommandTimeout) {
		l.positiveDuration(prefix+".command_timeout", lim.CommandTimeout, def("command_timeout", defaultLimits.CommandTimeout))
	}
	if own(lim.DataTimeout, g.DataTimeout) {
		l.positiveDuration(prefix+".data_timeout", lim.DataTimeout, def("data_timeout", defaultLimits.DataTimeout))
	}
	if own(lim.AutoReplyWindow, g.AutoReplyWindow) {
		l.positiveDuration(prefix+".auto_reply_window", lim.AutoReplyWindow, def("auto_reply_window", defaultLimits.AutoReplyWindow))
	}
	if own(lim.BareLineEndings, g.BareLineEndings) {
		l.oneOf(prefix+".bare_line_endings", lim.BareLineEndings, "reject", "normalize")
	}
	l.checkClientLimits(prefix, lim, global)
}

// checkClientLimits checks the per-client limits of one set of limits, as
// checkLimits (inherited values were checked with the global ones).
func (l *loader) checkClientLimits(prefix string, lim Limits, global *Limits) {
	var g Limits
	if global != nil {
		g = *global
	}
	for _, f := range []struct {
		name  string
		v, gv int
	}{
		{"max_connections_per_client", lim.MaxConnectionsPerClient, g.MaxConnectionsPerClient},
		{"max_connection_rate_per_client", lim.MaxConnectionRatePerClient, g.MaxConnectionRatePerClient},
		{"max_message_rate_per_client", lim.MaxMessageRatePerClient, g.MaxMessageRatePerClient},
		{"max_recipient_rate_per_client", lim.MaxRecipientRatePerClient, g.MaxRecipientRatePerClient},
		{"max_auth_failures_per_client", lim.MaxAuthFailuresPerClient, g.MaxAuthFailuresPerClient},
		{"max_auth_failures_per_user", lim.MaxAuthFailuresPerUser, g.MaxAuthFailuresPerUser},
		{"max_junk_commands", lim.MaxJunkCommands, g.MaxJunkCommands},
	} {
		if (global == nil || f.v != f.gv) && f.v < 0 {
			l.errorf(prefix+"."+f.name, "must be a count, or 0 to turn the limit off (leaving it out means the default)")
		}
	}
	if global == nil || lim.MaxConnectionsPerClient != g.MaxConnectionsPerClient || lim.MaxConnections != g.MaxConnections {
		if pc := lim.MaxConnectionsPerClient; pc > lim.MaxConnections && lim.MaxConnections > 0 {
			l.errorf(prefix+".max_connections_per_client", "%d is more than max_connections (%d): one client could still take every session; use at most %d, or 0 for no per-client limit", pc, lim.MaxConnections, lim.MaxConnections)
		}
	}
	for _, d := range []struct {
		name  string
		v, gv Duration
		def   Duration
	}{
		{"client_rate_window", lim.ClientRateWindow, g.ClientRateWindow, defaultLimits.ClientRateWindow},
		{"auth_failure_window", lim.AuthFailureWindow, g.AuthFailureWindow, defaultLimits.AuthFailureWindow},
		{"stress_command_timeout", lim.StressCommandTimeout, g.StressCommandTimeout, defaultLimits.StressCommandTimeout},
	} {
		if global == nil || d.v != d.gv {
			unset := "the global limits." + d.name
			if global == nil {
				unset = "the default, " + d.def.String()
			}
			l.positiveDuration(prefix+"."+d.name, d.v, unset)
		}
	}
}

func (l *loader) checkListeners(c *Config) {
	if len(c.Listeners) == 0 {
		l.errorf("listeners", `no listeners; add at least one, e.g. {name: mx, address: ":25", role: inbound}`)
		return
	}
	names := map[string]int{}
	addrs := map[string]int{}
	for i := range c.Listeners {
		ln := &c.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)

		switch j, dup := names[ln.Name]; {
		case ln.Name == "":
			l.errorf(p+".name", "missing; every listener needs a name (it appears in logs and Received: headers)")
		case dup:
			l.errorf(p+".name", "%q is already the name of %s; names must be unique", ln.Name, l.ref(fmt.Sprintf("listeners[%d]", j)))
		default:
			names[ln.Name] = i
		}

		if ln.Address == "" {
			l.errorf(p+".address", `missing; write host:port, e.g. ":25" (all addresses) or "127.0.0.1:2525"`)
		} else if hp, err := checkHostPort(ln.Address, false, 0); err != nil {
			l.errorf(p+".address", "%v", err)
		} else if j, dup := addrs[hp]; dup && !strings.HasSuffix(hp, ":0") {
			l.errorf(p+".address", "%q is already used by %s; two listeners cannot share a socket", ln.Address, l.ref(fmt.Sprintf("listeners[%d]", j)))
		} else {
			addrs[hp] = i
		}

		const roles = "inbound (MX: accepts mail for your domains from anyone) or outbound (submission/smarthost: relays for your own systems)"
		switch ln.Role {
		case "inbound":
			if len(ln.TrustedNetworks) > 0 {
				l.errorf(p+".trusted_networks", "only outbound listeners have trusted networks; an inbound (MX) listener relays for no one, so put relaying clients on an outbound listener")
			}
			if ln.Auth != "off" {
				l.errorf(p+".auth", "%q: inbound (MX) listeners do not offer AUTH; remove it, or set role: outbound for a submission listener", ln.Auth)
			}
			if ln.AllowInsecureAuth {
				l.errorf(p+".allow_insecure_auth", "inbound (MX) listeners do not offer AUTH; remove it")
			}
			if ln.ForeignFrom != "" {
				l.errorf(p+".foreign_from", "only outbound listeners sign mail; remove it")
			}
			if ln.NullSender != "" || ln.NullSenderAddress != "" {
				l.errorf(p+".null_sender", "only outbound listeners apply a null-sender policy (inbound mail from <> is checked by the inbound rules); remove it")
			}
		case "outbound":
			l.checkOutboundListener(c, i)
			l.oneOf(p+".foreign_from", ln.ForeignFrom, "reject", "unsigned")
			l.oneOf(p+".null_sender", ln.NullSender, "reject", "rewrite")
			switch {
			case ln.NullSender == "rewrite" && ln.NullSenderAddress == "":
				l.errorf(p+".null_sender_address", "missing; null_sender: rewrite needs the address to use instead of <>, e.g. noreply@example.com")
			case ln.NullSenderAddress != "" && (strings.Count(ln.NullSenderAddress, "@") != 1 || !strings.Contains(ln.NullSenderAddress[strings.Index(ln.NullSenderAddress, "@"):], ".") || strings.ContainsAny(ln.NullSenderAddress, " <>\t")):
				l.errorf(p+".null_sender_address", "%q is not a plain address such as noreply@example.com", ln.NullSenderAddress)
			}
		case "":
			l.errorf(p+".role", "missing; set %s", roles)
		default:
			l.errorf(p+".role", "%q is not a role; use %s", ln.Role, roles)
		}

		l.checkLimits(p+".limits", ln.Limits, &c.Limits)
		for j, s := range ln.ClientLimitExceptions {
			pfx, err := parseNetwork(s)
			if err != nil {
				l.errorf(fmt.Sprintf("%s.client_limit_exceptions[%d]", p, j), "%q is not a network; write a CIDR such as 192.0.2.0/28 or 2001:db8::/48, or a single address", s)
				continue
			}
			ln.ClientLimitExceptions[j] = pfx.String()
		}
	}
}

func (l *loader) checkOutboundListener(c *Config, i int) {
	ln := &c.Listeners[i]
	p := fmt.Sprintf("listeners[%d]", i)
	for j, s := range ln.TrustedNetworks {
		pfx, err := parseNetwork(s)
		if err != nil {
			l.errorf(fmt.Sprintf("%s.trusted_networks[%d]", p, j), "%q is not a network; write a CIDR such as 10.0.0.0/24 or fd00::/64, or a single address such as 192.0.2.10", s)
			continue
		}
		// Canonical form, so that callers can use netip.ParsePrefix.
		ln.TrustedNetworks[j] = pfx.String()
	}
	if l.failed(p + ".trusted_networks") {
		// Unreadable, hence empty: the checks below would blame auth for it.
		return
	}
	authKey := p
	if l.idx.has(l.filePath(p + ".auth")) {
		authKey = p + ".auth"
	}
	switch ln.Auth {
	case "off":
		if len(ln.TrustedNetworks) == 0 {
			l.errorf(authKey, "auth is off and there are no trusted_networks, so no client could send through this listener; add trusted_networks or set auth: required")
		}
	case "required", "optional":
		if len(c.Outbound.Users) == 0 {
			if authKey == p {
				l.errorf(p, "this outbound listener has no trusted_networks and outbound.users is empty, so no client could send through it; add trusted_networks (clients that may relay by IP) or a user under outbound.users")
			} else {
				l.errorf(authKey, "auth is %s but outbound.users is empty, so nobody can log in; add a user under outbound.users, or set auth: off and use trusted_networks", ln.Auth)
			}
		}
	default:
		l.errorf(p+".auth", "%q is not an auth mode; use required (AUTH needed to relay), optional (AUTH or a trusted network) or off (trusted networks only)", ln.Auth)
	}
}

func (l *loader) checkDomains(c *Config) {
	names := make([]string, 0, len(c.Domains))
	for name := range c.Domains {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool {
		return l.idx.line(l.domainPath(names[i])) < l.idx.line(l.domainPath(names[j]))
	})
	for _, name := range names {
		key := l.domainPath(name) + ".deliver_to"
		d := c.Domains[name]
		switch {
		case d.DeliverTo == "" && len(d.DKIM) == 0:
			l.errorf(key, "missing; say where mail for %s goes: smtp://host:port, lmtp://host:port or maildir:PATH (or give the domain dkim keys if it only sends)", name)
		case d.DeliverTo == "":
		default:
			if _, _, err := ParseDeliverTo(d.DeliverTo); err != nil {
				l.errorf(key, "%v", err)
			}
		}
		if d.Recipients.Verify {
			if scheme, _, err := ParseDeliverTo(d.DeliverTo); err != nil || (scheme != "smtp" && scheme != "lmtp") {
				l.errorf(l.domainPath(name)+".recipients.verify", "verifying recipients needs a deliver_to of smtp://host:port or lmtp://host:port to ask")
			}
		}
		sels := map[string]bool{}
		for i, k := range d.DKIM {
			kp := fmt.Sprintf("%s.dkim[%d]", l.domainPath(name), i)
			switch {
			case k.Selector == "":
				l.errorf(kp+".selector", "missing; the selector names the DNS record <selector>._domainkey.%s", name)
			case !validSelector(k.Selector):
				l.errorf(kp+".selector", "%q is not a valid selector (letters, digits, hyphens, dots between labels)", k.Selector)
			case sels[k.Selector]:
				l.errorf(kp+".selector", "%q is listed twice for %s", k.Selector, name)
			}
			sels[k.Selector] = true
			if k.Key == "" {
				l.errorf(kp+".key", "missing; the private key file, as written by `securerelay dkim keygen`")
			}
		}
	}
}

// checkSenders checks one user's sender binding (p is its path).
func (l *loader) checkSenders(c *Config, p string, u User) {
	for j, s := range u.Senders {
		k := fmt.Sprintf("%s.senders[%d]", p, j)
		if d, ok := strings.CutPrefix(s, "@"); ok {
			if _, err := domainName(d); err != nil {
				l.errorf(k, "%q: %v; write an address (otrs@example.com) or a domain after @ (@example.com)", s, err)
			}
		} else if err := checkAddress(s); err != nil {
			l.errorf(k, "%v; write an address (otrs@example.com) or a domain after @ (@example.com)", err)
		}
	}
	mode := c.Outbound.SenderBinding
	key := p + ".name"
	if u.SenderBinding != "" {
		mode, key = u.SenderBinding, p+".sender_binding"
		switch {
		case u.SenderBinding != "domains" && u.SenderBinding != "login":
			l.oneOf(key, u.SenderBinding, "domains", "login")
			return
		case len(u.Senders) > 0:
			l.errorf(key, "sender_binding only chooses what a user without senders may use, and this user has senders; remove one of the two")
			return
		}
	}
	if mode == "login" && len(u.Senders) == 0 && u.Name != "" && checkAddress(u.Name) != nil {
		l.errorf(key, "%q is not an address, and sender_binding is login (a user may only send as the address it logs in with), so this user could send nothing; log in with an address, or list what it may use under senders", u.Name)
	}
}

// validSelector: a selector is one or more DNS labels (RFC 6376 §3.1).
func validSelector(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func (l *loader) checkOutbound(c *Config) {
	o := &c.Outbound
	l.oneOf("outbound.sender_binding", o.SenderBinding, "domains", "login")
	names := map[string]int{}
	for i, u := range o.Users {
		p := fmt.Sprintf("outbound.users[%d]", i)
		switch j, dup := names[u.Name]; {
		case u.Name == "":
			l.errorf(p+".name", "missing; every user needs the name it logs in with")
		case dup:
			l.errorf(p+".name", "%q is already defined at %s; user names must be unique", u.Name, l.ref(fmt.Sprintf("outbound.users[%d]", j)))
		default:
			names[u.Name] = i
		}
		const howto = `create one with: htpasswd -bnBC 10 "" 'PASSWORD' | tr -d ':\n'`
		if u.PasswordHash == "" {
			l.errorf(p+".password_hash", "missing; %s", howto)
		} else if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			l.errorf(p+".password_hash", "not a bcrypt hash (it must look like $2y$10$ followed by 53 characters; plain passwords are not accepted); %s", howto)
		}
		l.checkSenders(c, p, u)
	}

	seen := map[string]int{}
	catchAll := -1
	for i := range o.Routes {
		r := &o.Routes[i]
		p := fmt.Sprintf("outbound.routes[%d]", i)
		if r.Match != "*" {
			r.Match = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(r.Match)), ".")
		}
		switch j, dup := seen[r.Match]; {
		case r.Match == "":
			l.errorf(p+".match", `missing; write a domain (example.org), its subdomains (.example.org) or "*" for everything`)
		case checkRouteMatch(r.Match) != nil:
			l.errorf(p+".match", "%q %v; write a domain (example.org), its subdomains (.example.org) or \"*\" for everything", r.Match, checkRouteMatch(r.Match))
		case dup:
			l.errorf(p+".match", "%q is already matched by %s; the first match wins, so this route is never used", r.Match, l.ref(fmt.Sprintf("outbound.routes[%d]", j)))
		case catchAll >= 0:
			l.errorf(p+".match", `never used: %s matches "*" before it and the first match wins; move "*" last`, l.ref(fmt.Sprintf("outbound.routes[%d]", catchAll)))
		default:
			seen[r.Match] = i
			if r.Match == "*" {
				catchAll = i
			}
		}
		if r.NextHop == "" {
			l.errorf(p+".next_hop", "missing; write smtp://host:port or lmtp://host:port")
		} else if _, _, err := ParseNextHop(r.NextHop); err != nil {
			l.errorf(p+".next_hop", "%v", err)
		}
		if r.Auth != nil {
			if r.Auth.Username == "" {
				l.errorf(p+".auth.username", "missing; the next hop needs a user name and a password (remove auth: if it needs none)")
			}
			if r.Auth.Password == "" {
				l.errorf(p+".auth.password", "missing; the next hop needs a user name and a password (remove auth: if it needs none)")
			}
			if r.Auth.AllowInsecureAuth && r.Auth.TLS != "" {
				l.errorf(p+".auth.tls", "%q contradicts allow_insecure_auth: true, which sends the credentials over any session, clear text included; remove one of them", r.Auth.TLS)
			} else if !r.Auth.AllowInsecureAuth {
				l.oneOf(p+".auth.tls", r.Auth.TLS, "verify", "encrypt")
			}
		}
	}

	l.positiveInt("outbound.max_connections_per_destination", o.MaxConnectionsPerDestination, "the default, "+strconv.Itoa(DefaultMaxConnectionsPerDestination))
	l.positiveDuration("outbound.connect_timeout", o.ConnectTimeout, "the default, "+DefaultConnectTimeout.String())
	l.positiveDuration("outbound.command_timeout", o.CommandTimeout, "the default, "+DefaultOutboundCommandTimeout.String())
	if o.IdleConnectionTimeout != nil && *o.IdleConnectionTimeout < 0 {
		l.errorf("outbound.idle_connection_timeout", "must not be negative; 0 disables connection reuse")
	}
	l.oneOf("outbound.starttls", o.StartTLS, "opportunistic", "off")
	l.checkOutboundTLS(c)
	l.checkEncryption(c)
	l.checkContent(c)
	l.oneOf("outbound.dkim.canonicalization", o.DKIM.Canonicalization,
		"relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")
	for i, h := range o.DKIM.Oversign {
		if h == "" || strings.ContainsAny(h, ": \t") {
			l.errorf(fmt.Sprintf("outbound.dkim.oversign[%d]", i), "%q is not a header field name", h)
		}
	}
	l.oneOf("outbound.dkim.identity", o.DKIM.Identity, "domain", "from")
	sc := c.Inbound.Screen
	for name, list := range map[string][]string{"allow": sc.Allow, "deny": sc.Deny} {
		for i, n := range list {
			if _, err := parseNetwork(n); err != nil {
				l.errorf(fmt.Sprintf("inbound.screen.%s[%d]", name, i), "%q is not a network; write a CIDR such as 192.0.2.0/24 or a single address", n)
			}
		}
	}
	if sc.Pregreet < 0 || sc.Pregreet > Duration(time.Minute) {
		l.errorf("inbound.screen.pregreet", "must be between 0 (off) and 1m; postscreen uses 6s")
	}
	l.positiveDuration("inbound.screen.cache_ttl", sc.CacheTTL, "the default, 1h")
	if sc.Tarpit < 0 || sc.Tarpit > Duration(time.Minute) {
		l.errorf("inbound.screen.tarpit", "must be between 0 (off) and 1m")
	}
	l.positiveDuration("inbound.verify.positive_ttl", c.Inbound.Verify.PositiveTTL, "the default, 24h")
	l.positiveDuration("inbound.verify.negative_ttl", c.Inbound.Verify.NegativeTTL, "the default, 10m")
	l.positiveDuration("inbound.verify.timeout", c.Inbound.Verify.Timeout, "the default, 10s")
	if sc.DNSBL.Threshold < 0 {
		l.errorf("inbound.screen.dnsbl.threshold", "must be positive (0 or leaving it out means 3)")
	}
	l.positiveDuration("inbound.screen.dnsbl.timeout", sc.DNSBL.Timeout, "the default, 2s")
	for i, z := range sc.DNSBL.Lists {
		p := fmt.Sprintf("inbound.screen.dnsbl.lists[%d]", i)
		if z.Zone == "" || strings.ContainsAny(z.Zone, " /:") {
			l.errorf(p+".zone", "%q is not a DNS zone such as zen.spamhaus.org", z.Zone)
		}
		for j, code := range z.Codes {
			if a, err := netip.ParseAddr(code); err != nil || !a.Is4() {
				l.errorf(fmt.Sprintf("%s.codes[%d]", p, j), "%q is not an IPv4 answer such as 127.0.0.2", code)
			}
		}
	}
	ch := c.Inbound.Checks
	for _, k := range []struct{ key, v string }{
		{"inbound.checks.sender_fqdn", ch.SenderFQDN}, {"inbound.checks.recipient_fqdn", ch.RecipientFQDN},
		{"inbound.checks.sender_domain", ch.SenderDomain}, {"inbound.checks.unknown_recipient", ch.UnknownRecipient},
		{"inbound.checks.helo_fqdn", ch.HeloFQDN},
	} {
		l.oneOf(k.key, k.v, "reject", "tempfail", "off")
	}
	if o.DKIM.Expiration < 0 {
		l.errorf("outbound.dkim.expiration", "must not be negative; 0 means no x= expiry")
	}
}

// checkContent: every milter named and reachable in form, every policy
// naming known milters, every domain naming a known policy.
func (l *loader) checkContent(c *Config) {
	ct := &c.Inbound.Content
	names := map[string]int{}
	for i, m := range ct.Milters {
		p := fmt.Sprintf("inbound.content.milters[%d]", i)
		switch j, dup := names[m.Name]; {
		case m.Name == "" || strings.ContainsAny(m.Name, " \t,"):
			l.errorf(p+".name", "missing or not a single word; policies and logs refer to the milter by it (e.g. rspamd)")
		case dup:
			l.errorf(p+".name", "%q is already used by %s", m.Name, l.ref(fmt.Sprintf("inbound.content.milters[%d]", j)))
		default:
			names[m.Name] = i
		}
		if err := checkMilterAddress(m.Address); err != nil {
			l.errorf(p+".address", "%v; write unix:/path/to/socket or inet:host:port", err)
		}
		for k, d := range map[string]Duration{"connect_timeout": m.ConnectTimeout, "read_timeout": m.ReadTimeout, "write_timeout": m.WriteTimeout} {
			if d < 0 {
				l.errorf(p+"."+k, "must not be negative (0 or leaving it out means the default)")
			}
		}
		l.oneOf(p+".on_error", m.OnError, "tempfail", "accept", "reject")
	}
	for name, list := range ct.Policies {
		if !l.idx.has("inbound.content.policies." + name) {
			continue // the generated default: every milter, checked above
		}
		for i, m := range list {
			if _, ok := names[m]; !ok {
				l.errorf(fmt.Sprintf("inbound.content.policies.%s[%d]", name, i), "%q is not a milter defined in inbound.content.milters", m)
			}
		}
	}
	l.oneOf("inbound.content.recipient_deletion", ct.RecipientDeletion, "reject", "tempfail")
	for name, d := range c.Domains {
		if d.ContentPolicy == "" {
			continue
		}
		if _, ok := ct.Policies[d.ContentPolicy]; !ok {
			l.errorf(l.domainPath(name)+".content_policy", "%q is not a policy in inbound.content.policies", d.ContentPolicy)
		}
	}
	l.checkAttachments(c)
	l.positiveDuration("inbound.auth.timeout", c.Inbound.Auth.Timeout, "the default, 10s")
	if c.Inbound.MaxMailPerSession < 0 {
		l.errorf("inbound.max_mail_per_session", "must be positive (0 or leaving it out means %d)", DefaultMaxMailPerSession)
	}
	if c.Inbound.Auth.Enabled && strings.ContainsAny(c.Inbound.Auth.AuthServID, " ;()\t") {
		l.errorf("inbound.auth.authserv_id", "%q is not a host name", c.Inbound.Auth.AuthServID)
	}
}

// checkAttachments: limits positive, classes and patterns known, every
// domain naming a known policy.
func (l *loader) checkAttachments(c *Config) {
	at := &c.Inbound.Attachments
	const p = "inbound.attachments"
	l.positiveInt(p+".max_depth", at.MaxDepth, fmt.Sprintf("the default, %d", DefaultAttachmentMaxDepth))
	l.positiveInt(p+".max_entries", at.MaxEntries, fmt.Sprintf("the default, %d", DefaultAttachmentMaxEntries))
	l.positiveInt(p+".max_ratio", at.MaxRatio, fmt.Sprintf("the default, %d", DefaultAttachmentMaxRatio))
	if at.MaxUncompressed < 0 {
		l.errorf(p+".max_uncompressed", "must be positive, e.g. 256MB (0 or leaving it out means the default, %s)", DefaultAttachmentMaxUncompressed)
	}
	l.positiveDuration(p+".timeout", at.Timeout, "the default, "+DefaultAttachmentTimeout.String())
	names := make([]string, 0, len(at.Policies))
	for name := range at.Policies {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		pol, pp := at.Policies[name], p+".policies."+name
		for i, b := range pol.Banned {
			if !slices.Contains(DefaultAttachmentBanned, b) {
				l.errorf(fmt.Sprintf("%s.banned[%d]", pp, i), "%q is not a class; the classes are %s", b, strings.Join(DefaultAttachmentBanned, ", "))
			}
		}
		for i, pat := range pol.BannedNames {
			if _, err := path.Match(pat, ""); err != nil || pat == "" || strings.ContainsAny(pat, `/\`) {
				l.errorf(fmt.Sprintf("%s.banned_names[%d]", pp, i), "%q is not a file-name pattern; write e.g. \"*.xyz\" (* any characters, ? one, [a-z] a range; no folder)", pat)
			}
		}
		l.oneOf(pp+".action", pol.Action, "reject", "tempfail", "accept")
		l.oneOf(pp+".limits", pol.Limits, "reject", "tempfail", "accept")
		l.oneOf(pp+".encrypted", pol.Encrypted, "reject", "tempfail", "accept", "off")
		l.oneOf(pp+".unopened", pol.Unopened, "reject", "tempfail", "accept", "off")
	}
	for name, d := range c.Domains {
		if d.AttachmentPolicy == "" {
			continue
		}
		if _, ok := at.Policies[d.AttachmentPolicy]; !ok {
			l.errorf(l.domainPath(name)+".attachment_policy", "%q is not a policy in inbound.attachments.policies", d.AttachmentPolicy)
		}
	}
}

// checkMilterAddress accepts the forms Postfix's smtpd_milters take.
func checkMilterAddress(a string) error {
	switch {
	case a == "":
		return errors.New("missing")
	case strings.HasPrefix(a, "unix:"):
		if !strings.HasPrefix(a[5:], "/") {
			return fmt.Errorf("%q: the socket path must be absolute", a)
		}
		return nil
	case strings.HasPrefix(a, "inet:"):
		if _, _, err := net.SplitHostPort(a[5:]); err != nil {
			return fmt.Errorf("%q: %v", a, err)
		}
		return nil
	}
	return fmt.Errorf("%q has no unix: or inet: prefix", a)
}

// TLSLevels are the policy levels, weakest first, with Postfix's names.
var TLSLevels = []string{"none", "may", "encrypt", "dane", "verify", "secure", "dane-only", "fingerprint"}

// checkOutboundTLS refuses TLS rules that cannot mean what they say: a
// rule that could silently give less than its author expects is an error,
// not a warning.
func (l *loader) checkOutboundTLS(c *Config) {
	t := &c.Outbound.TLS
	l.oneOf("outbound.tls.default", t.Default, "none", "may", "encrypt", "verify", "secure")
	if c.Outbound.StartTLS == "off" && t.Default != "none" && l.idx.has("outbound.tls.default") {
		l.errorf("outbound.tls.default", "%q contradicts outbound.starttls: off; remove one of them", t.Default)
	}
	l.oneOf("outbound.tls.min_version", t.MinVersion, "1.2", "1.3")
	l.oneOf("outbound.tls.tls_required_no", t.TLSRequiredNo, "honour", "ignore")
	if t.DANE && !c.DNS.DNSSECValidating {
		l.errorf("outbound.tls.dane", "needs a DNSSEC-validating resolver: set dns.dnssec_validating: true once dns.resolver validates (e.g. a local unbound), or DANE could trust forged TLSA records")
	}
	if t.CAFile != "" {
		if _, err := os.Stat(t.CAFile); err != nil {
			l.errorf("outbound.tls.ca_file", "%v", err)
		}
	}
	seen := map[string]int{}
	for i := range t.Policies {
		r := &t.Policies[i]
		p := fmt.Sprintf("outbound.tls.policies[%d]", i)
		r.Match = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(r.Match)), ".")
		host := strings.HasPrefix(r.Match, "[") && strings.HasSuffix(r.Match, "]")
		m := strings.TrimSuffix(strings.TrimPrefix(r.Match, "["), "]")
		switch j, dup := seen[r.Match]; {
		case r.Match == "":
			l.errorf(p+".match", "missing; write a domain (partner.example), its subdomains (.partner.example) or a next-hop host ([mx.partner.example])")
		case checkRouteMatch(strings.TrimPrefix(m, ".")) != nil || m == "*" || host && strings.HasPrefix(m, "."):
			l.errorf(p+".match", "%q is not a domain, .subdomains or [host]", r.Match)
		case dup:
			l.errorf(p+".match", "%q is already matched by %s; the first match wins, so this rule is never used", r.Match, l.ref(fmt.Sprintf("outbound.tls.policies[%d]", j)))
		default:
			seen[r.Match] = i
		}
		if r.Level == "" {
			l.errorf(p+".level", "missing; use %s", strings.Join(TLSLevels, ", "))
		} else {
			l.oneOf(p+".level", r.Level, TLSLevels...)
		}
		if r.Level == "fingerprint" && len(r.Fingerprints) == 0 {
			l.errorf(p+".fingerprints", "missing; level fingerprint needs the SHA-256 of the partner's certificate or public key (openssl x509 -noout -fingerprint -sha256)")
		}
		if r.Level != "fingerprint" && len(r.Fingerprints) > 0 {
			l.errorf(p+".fingerprints", "only used with level: fingerprint (this rule has %q); remove them or change the level", r.Level)
		}
		for j, fp := range r.Fingerprints {
			if h := strings.ReplaceAll(fp, ":", ""); len(h) != 64 || strings.Trim(strings.ToLower(h), "0123456789abcdef") != "" {
				l.errorf(fmt.Sprintf("%s.fingerprints[%d]", p, j), "%q is not a SHA-256 fingerprint (64 hex digits, colons allowed)", fp)
			}
		}
		if len(r.Names) > 0 && r.Level != "verify" && r.Level != "secure" {
			l.errorf(p+".names", "only checked with level verify or secure (this rule has %q); remove them or change the level", r.Level)
		}
		if (r.Level == "dane" || r.Level == "dane-only") && !c.DNS.DNSSECValidating {
			l.errorf(p+".level", "%s needs dns.dnssec_validating: true (a validating resolver); without it no TLSA record can be trusted", r.Level)
		}
		if r.MinVersion != "" {
			l.oneOf(p+".min_version", r.MinVersion, "1.2", "1.3")
			if r.Level == "none" || r.Level == "may" {
				l.errorf(p+".min_version", "has no effect with level %s (TLS is optional there); use encrypt or higher", r.Level)
			}
		}
		for j, cs := range r.Ciphers {
			if !knownCipher(cs) {
				l.errorf(fmt.Sprintf("%s.ciphers[%d]", p, j), "%q is not a TLS 1.2 cipher suite Go offers (e.g. TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)", cs)
			}
		}
		if r.Fallback != "" {
			l.oneOf(p+".fallback", r.Fallback, "defer", "bounce", "encrypt")
		}
		l.checkRuleEncryption(c, p, r, host)
		l.oneOf(p+".inbound", r.Inbound, "off", "tempfail", "reject")
		if r.Inbound != "off" && host {
			l.errorf(p+".inbound", "applies to sender domains, not to a next-hop host; use a domain match")
		}
	}
}

// checkRuleEncryption checks a TLS rule's OpenPGP settings: encryption
// needs a recipient address, so only domain rules can have it, and every
// setting that only matters with encryption is refused without it, so
// that nobody believes mail is encrypted when it is not.
func (l *loader) checkRuleEncryption(c *Config, p string, r *TLSPolicy, host bool) {
	en := &c.Outbound.Encryption
	if r.Encrypt != "" {
		l.oneOf(p+".encrypt", r.Encrypt, "always")
	}
	encrypts := r.Encrypt == "always" || r.Fallback == "encrypt"
	if encrypts && host {
		key := p + ".fallback"
		if r.Encrypt != "" {
			key = p + ".encrypt"
		}
		l.errorf(key, "encryption needs the recipient's address, and a [host] rule names a server; write the rule for the recipient domain")
	}
	if r.Fallback == "encrypt" && r.Encrypt == "" && (r.Level == "none" || r.Level == "may") {
		l.errorf(p+".fallback", "level %s is always met, so the encrypt fallback would never be used; raise the level (encrypt, verify, …) or set encrypt: always", r.Level)
	}
	if r.WithoutKey != "" {
		if r.Encrypt != "always" {
			l.errorf(p+".without_key", "only used with encrypt: always (with fallback: encrypt a recipient without a key always waits)")
		} else {
			l.oneOf(p+".without_key", r.WithoutKey, "refuse", "tls")
		}
		if r.Encrypt == "always" && r.WithoutKey == "tls" && (r.Level == "none" || r.Level == "may") {
			l.errorf(p+".without_key", "tls sends the mail of a recipient without a key unencrypted under the rule's level, and level %s is met in clear text; raise the level (encrypt, verify, …) or use refuse", r.Level)
		}
	}
	if !encrypts {
		for _, k := range []struct {
			set  bool
			name string
		}{{len(r.Keys) > 0, "keys"}, {len(r.KeySources) > 0, "key_sources"}, {r.EncryptedSubject != "", "encrypted_subject"}} {
			if k.set {
				l.errorf(p+"."+k.name, "only used when the rule encrypts (fallback: encrypt or encrypt: always)")
			}
		}
		return
	}
	seen := map[string]bool{}
	for j, s := range r.KeySources {
		key := fmt.Sprintf("%s.key_sources[%d]", p, j)
		switch {
		case !slices.Contains(KeySources, s):
			l.errorf(key, "%q is not a key source; use %s", s, strings.Join(KeySources, ", "))
		case seen[s]:
			l.errorf(key, "%q is listed twice", s)
		case s == "keyring" && en.Keyring == "":
			l.errorf(key, "keyring is not configured (outbound.encryption.keyring)")
		case s == "wkd" && en.WKD != nil && !*en.WKD:
			l.errorf(key, "wkd is switched off (outbound.encryption.wkd)")
		case s == "openpgpkey" && !en.OpenPGPKey:
			l.errorf(key, "openpgpkey is switched off (outbound.encryption.openpgpkey)")
		}
		seen[s] = true
	}
	if len(r.Keys) > 0 && !seen["pinned"] && l.idx.has(p+".key_sources") {
		l.errorf(p+".key_sources", "does not list pinned, so the keys of this rule are never used")
	}
	if len(r.Keys) == 0 && !slices.ContainsFunc(r.KeySources, func(s string) bool { return s != "pinned" }) {
		// Not clear text, but not what the admin meant either: no
		// recipient ever has a key, so the rule acts as defer (or, with
		// encrypt: always, refuses every recipient) while it reads as
		// encryption.
		key := p + ".key_sources"
		if !l.idx.has(key) {
			key = p + ".fallback"
			if r.Encrypt == "always" {
				key = p + ".encrypt"
			}
		}
		l.warnf(key, "no source can give a key for this rule: no keys are pinned in it, and no keyring, WKD or OPENPGPKEY is configured or listed; "+
			"mail to %s is never encrypted and waits (or is refused) for a key; pin keys (keys:) or set up outbound.encryption", r.Match)
	}
	for i := 0; i < len(r.EncryptedSubject); i++ {
		if ch := r.EncryptedSubject[i]; ch < 0x20 || ch > 0x7e {
			l.errorf(p+".encrypted_subject", "printable ASCII only (it is a header field outside the encryption)")
			break
		}
	}
	dom := strings.TrimPrefix(r.Match, ".")
	for j, k := range r.Keys {
		key := fmt.Sprintf("%s.keys[%d]", p, j)
		fp := strings.NewReplacer(" ", "", ":", "").Replace(k.Fingerprint)
		if (len(fp) != 40 && len(fp) != 64) || strings.Trim(strings.ToLower(fp), "0123456789abcdef") != "" {
			l.errorf(key+".fingerprint", "%q is not an OpenPGP fingerprint (40 hex digits for a v4 key, 64 for v6; gpg --fingerprint prints it)", k.Fingerprint)
		}
		if k.File == "" {
			l.errorf(key+".file", "missing; the public key file (gpg --export --armor FINGERPRINT > FILE)")
		} else if _, err := os.Stat(k.File); err != nil {
			l.errorf(key+".file", "%v", err)
		}
		if k.Address != "" {
			at := strings.LastIndexByte(k.Address, '@')
			d := strings.ToLower(k.Address[at+1:])
			if at <= 0 || (d != dom && !strings.HasSuffix(d, "."+dom)) || (!strings.HasPrefix(r.Match, ".") && d != dom) {
				l.errorf(key+".address", "%q is not an address this rule (match %s) applies to", k.Address, r.Match)
			}
		}
	}
}

// checkEncryption checks outbound.encryption.
func (l *loader) checkEncryption(c *Config) {
	en := &c.Outbound.Encryption
	if en.Keyring != "" {
		if fi, err := os.Stat(en.Keyring); err != nil {
			l.errorf("outbound.encryption.keyring", "%v", err)
		} else if !fi.IsDir() {
			l.errorf("outbound.encryption.keyring", "%s is not a folder (put one armoured public key file per partner in it)", en.Keyring)
		}
	}
	if en.OpenPGPKey && !c.DNS.DNSSECValidating {
		l.errorf("outbound.encryption.openpgpkey", "needs dns.dnssec_validating: true: an OPENPGPKEY record is only trusted from a DNSSEC-validated answer, or anyone who can forge DNS answers chooses the key")
	}
	l.positiveDuration("outbound.encryption.cache_ttl", en.CacheTTL, "6h")
	l.positiveDuration("outbound.encryption.negative_cache_ttl", en.NegativeCacheTTL, "30m")
	for name, d := range c.Domains {
		if d.OpenPGPSigningKey == "" {
			continue
		}
		if _, err := os.Stat(d.OpenPGPSigningKey); err != nil {
			l.errorf(l.domainPath(name)+".openpgp_signing_key", "%v", err)
		}
	}
}

func knownCipher(name string) bool {
	for _, c := range tls.CipherSuites() {
		if c.Name == name {
			return true
		}
	}
	return false
}

func (l *loader) oneOf(key, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	l.errorf(key, "%q is not allowed; use %s", v, strings.Join(allowed, " or "))
}

func (l *loader) positiveInt(key string, v int, unset string) {
	if v <= 0 {
		l.errorf(key, "must be positive (0 or leaving it out means %s)", unset)
	}
}

func (l *loader) positiveDuration(key string, v Duration, unset string) {
	if v <= 0 {
		l.errorf(key, "must be positive, e.g. 30s or 5m (0 or leaving it out means %s)", unset)
	}
}

// ParseNextHop parses a route's next_hop: smtp://host:port or
// lmtp://host:port. The port is required: a smarthost on 25 and one on 587
// behave differently, and guessing wrong fails only at delivery time.
// scheme is "smtp" or "lmtp"; hostport is suitable for net.Dial (IPv6
// literals in brackets).
func ParseNextHop(s string) (scheme, hostport string, err error) {
	return parseHop(s, false)
}

// ParseDeliverTo parses a domain's deliver_to: smtp://host:port,
// lmtp://host:port or maildir:PATH. scheme is "smtp", "lmtp" or "maildir";
// target is host:port or the maildir path (absolute after Load).
func ParseDeliverTo(s string) (scheme, target string, err error) {
	return parseHop(s, true)
}

func parseHop(s string, maildir bool) (scheme, target string, err error) {
	forms := "smtp://host:port or lmtp://host:port"
	if maildir {
		forms = "smtp://host:port, lmtp://host:port or maildir:PATH"
	}
	if maildir && len(s) >= 8 && strings.EqualFold(s[:8], "maildir:") {
		if s[8:] == "" {
			return "", "", fmt.Errorf("%q has no path; write e.g. maildir:/var/mail/example.com", s)
		}
		return "maildir", s[8:], nil
	}
	sch, rest, ok := strings.Cut(s, "://")
	if !ok {
		switch {
		case maildir && strings.HasPrefix(s, "/"):
			return "", "", fmt.Errorf("%q has no scheme; write maildir:%s, or use %s", s, s, forms)
		case strings.Contains(s, ":"):
			return "", "", fmt.Errorf("%q has no scheme; write smtp://%s (or lmtp://%s for LMTP)", s, s, s)
		}
		return "", "", fmt.Errorf("%q is not %s", s, forms)
	}
	sch = strings.ToLower(sch)
	if sch != "smtp" && sch != "lmtp" {
		return "", "", fmt.Errorf("%q: unknown scheme %q; use %s", s, sch, forms)
	}
	rest = strings.TrimSuffix(rest, "/")
	if strings.Contains(rest, "@") {
		return "", "", fmt.Errorf("%q: a user name cannot go into the address; put credentials under auth: (username, password)", s)
	}
	if strings.ContainsAny(rest, "/?#") {
		return "", "", fmt.Errorf("%q: only %s://host:port is allowed, without a path or options", s, sch)
	}
	if _, _, err := net.SplitHostPort(rest); err != nil && !strings.Contains(rest, ":") {
		port := "25"
		if sch == "lmtp" {
			port = "24"
		}
		return "", "", fmt.Errorf("%q has no port; write e.g. %s://%s:%s", s, sch, rest, port)
	}
	hp, err := checkHostPort(rest, true, 1)
	if err != nil {
		return "", "", fmt.Errorf("%q: %v", s, err)
	}
	return sch, hp, nil
}

// checkHostPort validates host:port and returns it in canonical form.
// Listeners may leave the host empty (all addresses) and use port 0 (any
// free port, for tests); destinations need both.
func checkHostPort(s string, needHost bool, minPort int) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		switch {
		case strings.Count(s, ":") > 1 && !strings.Contains(s, "["):
			return "", fmt.Errorf("%q: an IPv6 address needs brackets, e.g. [::1]:25", s)
		case !strings.Contains(s, ":"):
			if _, err := strconv.Atoi(s); err == nil {
				if needHost {
					return "", fmt.Errorf("%q is only a port; write host:%s", s, s)
				}
				return "", fmt.Errorf("%q is only a port; write \":%s\" (all addresses) or \"127.0.0.1:%s\"", s, s, s)
			}
			return "", fmt.Errorf("%q has no port; write host:port, e.g. %s:25", s, s)
		}
		return "", fmt.Errorf("%q is not host:port, e.g. 127.0.0.1:25, [::1]:25 or :25", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || int(n) < minPort {
		return "", fmt.Errorf("%q: the port must be a number from %d to 65535 (names such as \"smtp\" are not looked up)", s, minPort)
	}
	switch {
	case host == "" && needHost:
		return "", fmt.Errorf("%q has no host; write host:port", s)
	case host == "":
	default:
		if _, err := netip.ParseAddr(host); err != nil {
			if err := checkDomainName(host, false); err != nil {
				return "", fmt.Errorf("%q: %q is neither an IP address nor a host name: %v", s, host, err)
			}
		}
	}
	return net.JoinHostPort(host, port), nil
}

// checkDomainName checks DNS host name syntax (letters, digits, hyphens).
// fqdn additionally wants a dot and a non-numeric top label, which is what
// receiving servers expect from an EHLO name.
func checkDomainName(s string, fqdn bool) error {
	if s == "" {
		return errors.New("it is empty")
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return errors.New("it is an IP address, not a name")
	}
	if len(s) > 253 {
		return errors.New("it is longer than 253 characters")
	}
	labels := strings.Split(s, ".")
	for _, label := range labels {
		if label == "" {
			return errors.New("it has an empty label (two dots in a row, or a leading or trailing dot)")
		}
		if len(label) > 63 {
			return fmt.Errorf("the label %q is longer than 63 characters", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				if r > 127 {
					return fmt.Errorf("it contains %q; write international names in their xn-- (punycode) form", r)
				}
				return fmt.Errorf("it contains %q; only letters, digits, \"-\" and \".\" are allowed", r)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("the label %q starts or ends with \"-\"", label)
		}
	}
	if fqdn {
		if len(labels) < 2 {
			return errors.New("it has no dot")
		}
		if _, err := strconv.Atoi(labels[len(labels)-1]); err == nil {
			return errors.New("its last label is numeric")
		}
	}
	return nil
}

func checkRouteMatch(m string) error {
	if m == "*" {
		return nil
	}
	return checkDomainName(strings.TrimPrefix(m, "."), false)
}

// checkAddress is a deliberately loose mail address check: it catches the
// usual mistakes (a bare name, a missing domain) without rejecting valid
// but unusual local parts.
func checkAddress(a string) error {
	local, domain, ok := strings.Cut(a, "@")
	switch {
	case !ok || local == "" || domain == "":
		return fmt.Errorf("%q is not a mail address", a)
	case strings.ContainsAny(a, " <>\t"):
		return fmt.Errorf("%q must be a bare address, without spaces or angle brackets", a)
	}
	if _, err := domainName(domain); err != nil {
		return fmt.Errorf("%q has an invalid domain: %v", a, err)
	}
	return nil
}

// parseNetwork accepts a CIDR or a single address, the two forms Postfix's
// mynetworks accepts, and returns the masked prefix.
func parseNetwork(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// TrustedPrefixes returns TrustedNetworks parsed; Load has already
// validated them (and turned bare addresses into /32 or /128 prefixes), so
// it never fails on a loaded configuration.
func (ln *Listener) TrustedPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ln.TrustedNetworks))
	for _, s := range ln.TrustedNetworks {
		if p, err := parseNetwork(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
