package config

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// Defaults. They are documented next to each field in schema.go and in
// config.example.yaml; change all three together.
const (
	DefaultStateDir                     = "./var"
	DefaultLogFormat                    = "text"
	DefaultLogLevel                     = "info"
	DefaultDNSTimeout                   = Duration(5 * time.Second)
	DefaultDNSCacheSize                 = 10000
	DefaultMaxConnectionsPerDestination = 20
	DefaultConnectTimeout               = Duration(30 * time.Second)
	DefaultOutboundCommandTimeout       = Duration(5 * time.Minute)
	DefaultIdleConnectionTimeout        = Duration(5 * time.Second)
	DefaultDKIMCanonicalization         = "relaxed/relaxed"
	DefaultForeignFrom                  = "reject"
	DefaultNullSender                   = "reject"
	DefaultSenderBinding                = "domains"
	DefaultStartTLS                     = "opportunistic"
	DefaultQueueMaxAge                  = Duration(5 * day)
	DefaultQueueWorkers                 = 100
	// Held mail is what nobody could be told about; a month covers an
	// admin's holiday, and 1GB is 20 messages of the default maximum
	// size, thousands of ordinary ones, and a small part of any disk.
	DefaultQueueHoldMaxAge       = Duration(30 * day)
	DefaultQueueHoldMaxSize      = Size(1000 * 1000 * 1000)
	DefaultQueueQuarantineMaxAge = Duration(30 * day)
	DefaultDSNReturnMaxSize      = Size(1000 * 1000)
	DefaultKeyCacheTTL           = Duration(6 * time.Hour)
	DefaultKeyNegativeCacheTTL   = Duration(30 * time.Minute)
	DefaultEncryptedSubject      = "..."
	// The attachment policy's limits: deep enough for a .tar.gz in a ZIP
	// in a forwarded message, far below what a bomb needs.
	DefaultAttachmentMaxDepth        = 5
	DefaultAttachmentMaxEntries      = 10000
	DefaultAttachmentMaxUncompressed = Size(256 * 1000 * 1000)
	DefaultAttachmentMaxRatio        = 200
	DefaultAttachmentTimeout         = Duration(30 * time.Second)
	DefaultAttachmentAction          = "reject"
)

// DefaultAttachmentBanned: programs, scripts and everything that
// disguises a file (attach.DefaultBanned; a test keeps both equal).
var DefaultAttachmentBanned = []string{"executable", "script", "shortcut", "installer", "disk_image", "office_macro", "deceptive_name", "name_mismatch"}

// KeySources are the OpenPGP key sources in their default order of trust:
// keys the admin pinned, then the admin's keyring, then what the
// recipient's domain publishes.
var KeySources = []string{"pinned", "keyring", "wkd", "openpgpkey"}

// DefaultKeySources is KeySources without the sources that en leaves off.
func DefaultKeySources(en *Encryption) []string {
	var out []string
	for _, s := range KeySources {
		switch {
		case s == "keyring" && en.Keyring == "",
			s == "wkd" && en.WKD != nil && !*en.WKD,
			s == "openpgpkey" && !en.OpenPGPKey:
			continue
		}
		out = append(out, s)
	}
	return out
}

// DefaultMaxMailPerSession: Exim allows 1000 messages per connection
// (smtp_accept_max_per_connection); an inbound transaction here may cost
// an SPF evaluation of up to about 110 DNS questions, so a tenth of that.
// A sender over it reconnects; nothing is lost.
const DefaultMaxMailPerSession = 100

// defaultLimits are the global limits when the file sets none.
var defaultLimits = Limits{
	MaxMessageSize:  50 * 1000 * 1000, // 50MB
	MaxRecipients:   100,
	MaxLineLength:   2000,
	MaxErrors:       10,
	CommandTimeout:  Duration(5 * time.Minute),
	DataTimeout:     Duration(10 * time.Minute),
	MaxConnections:  500,
	MaxHops:         50,
	MaxAutoReplies:  5,
	AutoReplyWindow: Duration(time.Hour),
	BareLineEndings: "reject",

	MaxConnectionsPerClient:    50,
	MaxConnectionRatePerClient: 300,
	MaxMessageRatePerClient:    300,
	MaxRecipientRatePerClient:  1000,
	ClientRateWindow:           Duration(time.Minute),
	MaxAuthFailuresPerClient:   20,
	MaxAuthFailuresPerUser:     10,
	AuthFailureWindow:          Duration(15 * time.Minute),
	MaxJunkCommands:            100,
	StressCommandTimeout:       Duration(10 * time.Second),
}

// DefaultRouteAuthTLS is what a session must prove before route
// credentials go out (outbound.routes[].auth.tls): the next-hop host,
// verified.
const DefaultRouteAuthTLS = "verify"

// DefaultRetry is the retry schedule when the file sets none: quick
// retries first for greylisting, then spaced out.
func DefaultRetry() []Duration {
	return []Duration{
		Duration(time.Minute), Duration(5 * time.Minute), Duration(15 * time.Minute),
		Duration(time.Hour), Duration(4 * time.Hour),
	}
}

// Seams for tests: the defaults depend on the machine.
var (
	osHostname     = os.Hostname
	resolvConfPath = "/etc/resolv.conf"
)

// applyDefaults fills every unset field, so that the rest of the program
// reads the configuration without knowing the defaults. Zero means unset:
// there is no useful zero for any of these settings (except
// idle_connection_timeout, which is a pointer for that reason).
func (l *loader) applyDefaults(c *Config) {
	if c.Hostname == "" {
		if h, err := osHostname(); err == nil && h != "" {
			c.Hostname = h
			l.hostnameFromOS = true
		}
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Postmaster == "" && c.Hostname != "" {
		c.Postmaster = "postmaster@" + c.Hostname
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.DNS.Resolver == "" {
		// Left empty if there is none: maildir-only setups never need DNS,
		// so only serve may insist.
		c.DNS.Resolver = systemResolver(resolvConfPath)
	}
	if c.DNS.Timeout == 0 {
		c.DNS.Timeout = DefaultDNSTimeout
	}
	if !l.idx.has("dns.cache_size") {
		c.DNS.CacheSize = DefaultDNSCacheSize
	}

	c.Limits.inherit(defaultLimits, func(key string) bool { return l.idx.has("limits." + key) })
	perClientSet := l.idx.has("limits.max_connections_per_client")
	if !perClientSet {
		c.Limits.MaxConnectionsPerClient = defaultPerClient(c.Limits.MaxConnections)
	}
	hasUsers := len(c.Outbound.Users) > 0
	for i := range c.Listeners {
		ln := &c.Listeners[i]
		set := func(key string) bool {
			return l.idx.has(l.filePath(fmt.Sprintf("listeners[%d].limits.%s", i, key)))
		}
		ln.Limits.inherit(c.Limits, set)
		if !perClientSet && !set("max_connections_per_client") {
			ln.Limits.MaxConnectionsPerClient = defaultPerClient(ln.Limits.MaxConnections)
		}
		if ln.Auth == "" {
			switch {
			case ln.Role != "outbound":
				ln.Auth = "off"
			case len(ln.TrustedNetworks) == 0:
				ln.Auth = "required"
			case hasUsers:
				ln.Auth = "optional"
			default:
				// Trusted networks only, and no accounts to log in to:
				// advertising AUTH would only invite failed attempts.
				ln.Auth = "off"
			}
		}
	}

	o := &c.Outbound
	if o.Helo == "" {
		o.Helo = c.Hostname
	}
	if o.MaxConnectionsPerDestination == 0 {
		o.MaxConnectionsPerDestination = DefaultMaxConnectionsPerDestination
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.CommandTimeout == 0 {
		o.CommandTimeout = DefaultOutboundCommandTimeout
	}
	if o.IdleConnectionTimeout == nil {
		d := DefaultIdleConnectionTimeout
		o.IdleConnectionTimeout = &d
	}
	if o.StartTLS == "" {
		o.StartTLS = DefaultStartTLS
	}
	ct := &c.Inbound.Content
	if ct.RecipientDeletion == "" {
		ct.RecipientDeletion = "reject"
	}
	for i := range ct.Milters {
		if ct.Milters[i].OnError == "" {
			ct.Milters[i].OnError = "tempfail"
		}
	}
	if _, ok := ct.Policies["default"]; !ok {
		if ct.Policies == nil {
			ct.Policies = map[string][]string{}
		}
		ct.Policies["default"] = []string{}
		for _, m := range ct.Milters {
			ct.Policies["default"] = append(ct.Policies["default"], m.Name)
		}
	}
	at := &c.Inbound.Attachments
	if at.Enabled == nil {
		t := true
		at.Enabled = &t
	}
	if at.MaxDepth == 0 {
		at.MaxDepth = DefaultAttachmentMaxDepth
	}
	if at.MaxEntries == 0 {
		at.MaxEntries = DefaultAttachmentMaxEntries
	}
	if at.MaxUncompressed == 0 {
		at.MaxUncompressed = DefaultAttachmentMaxUncompressed
	}
	if at.MaxRatio == 0 {
		at.MaxRatio = DefaultAttachmentMaxRatio
	}
	if at.Timeout == 0 {
		at.Timeout = DefaultAttachmentTimeout
	}
	if _, ok := at.Policies["default"]; !ok {
		if at.Policies == nil {
			at.Policies = map[string]AttachmentPolicy{}
		}
		at.Policies["default"] = AttachmentPolicy{}
	}
	for name, p := range at.Policies {
		if p.Banned == nil {
			p.Banned = append([]string(nil), DefaultAttachmentBanned...)
		}
		for _, a := range []*string{&p.Action, &p.Encrypted, &p.Unopened, &p.Limits} {
			if *a == "" {
				*a = DefaultAttachmentAction
			}
		}
		at.Policies[name] = p
	}
	au := &c.Inbound.Auth
	if au.AuthServID == "" {
		au.AuthServID = c.Hostname
	}
	if au.RejectDMARC == nil {
		t := true
		au.RejectDMARC = &t
	}
	if au.Timeout == 0 {
		au.Timeout = Duration(10 * time.Second)
	}
	if c.Inbound.MaxMailPerSession == 0 {
		c.Inbound.MaxMailPerSession = DefaultMaxMailPerSession
	}
	if o.TLS.Default == "" {
		o.TLS.Default = "may"
		if o.StartTLS == "off" {
			o.TLS.Default = "none"
		}
	}
	if o.TLS.MinVersion == "" {
		o.TLS.MinVersion = "1.2"
	}
	if o.TLS.TLSRequiredNo == "" {
		o.TLS.TLSRequiredNo = "ignore"
	}
	en := &o.Encryption
	if en.WKD == nil {
		t := true
		en.WKD = &t
	}
	if en.CacheTTL == 0 {
		en.CacheTTL = DefaultKeyCacheTTL
	}
	if en.NegativeCacheTTL == 0 {
		en.NegativeCacheTTL = DefaultKeyNegativeCacheTTL
	}
	for i := range o.TLS.Policies {
		r := &o.TLS.Policies[i]
		if r.Inbound == "" {
			r.Inbound = "off"
		}
		if r.Encrypt == "always" && r.WithoutKey == "" {
			r.WithoutKey = "refuse"
		}
		if r.Encrypt == "always" || r.Fallback == "encrypt" {
			if r.EncryptedSubject == "" {
				r.EncryptedSubject = DefaultEncryptedSubject
			}
			if len(r.KeySources) == 0 {
				r.KeySources = DefaultKeySources(en)
			}
		}
	}
	for i := range o.Routes {
		if a := o.Routes[i].Auth; a != nil && a.TLS == "" && !a.AllowInsecureAuth {
			a.TLS = DefaultRouteAuthTLS
		}
	}
	if o.DKIM.Canonicalization == "" {
		o.DKIM.Canonicalization = DefaultDKIMCanonicalization
	}
	if c.Inbound.Checks.HeloFQDN == "" {
		c.Inbound.Checks.HeloFQDN = "off"
	}
	if v := &c.Inbound.Verify; v.PositiveTTL == 0 {
		v.PositiveTTL = Duration(24 * time.Hour)
	}
	if v := &c.Inbound.Verify; v.NegativeTTL == 0 {
		v.NegativeTTL = Duration(10 * time.Minute)
	}
	if v := &c.Inbound.Verify; v.Timeout == 0 {
		v.Timeout = Duration(10 * time.Second)
	}
	if c.Inbound.Screen.CacheTTL == 0 {
		c.Inbound.Screen.CacheTTL = Duration(time.Hour)
	}
	if c.Inbound.Screen.DNSBL.Threshold == 0 {
		c.Inbound.Screen.DNSBL.Threshold = 3
	}
	if c.Inbound.Screen.DNSBL.Timeout == 0 {
		c.Inbound.Screen.DNSBL.Timeout = Duration(2 * time.Second)
	}
	for i := range c.Inbound.Screen.DNSBL.Lists {
		if z := &c.Inbound.Screen.DNSBL.Lists[i]; z.Weight == 0 {
			z.Weight = 1
		}
	}
	for _, p := range []*string{&c.Inbound.Checks.SenderFQDN, &c.Inbound.Checks.RecipientFQDN,
		&c.Inbound.Checks.SenderDomain, &c.Inbound.Checks.UnknownRecipient} {
		if *p == "" {
			*p = "reject"
		}
	}
	if o.SenderBinding == "" {
		o.SenderBinding = DefaultSenderBinding
	}
	if o.DKIM.Identity == "" {
		o.DKIM.Identity = "domain"
	}
	if o.DKIM.Oversign == nil {
		o.DKIM.Oversign = DefaultDKIMOversign()
	}
	for i := range c.Listeners {
		if ln := &c.Listeners[i]; ln.Role == "outbound" && ln.ForeignFrom == "" {
			ln.ForeignFrom = DefaultForeignFrom
		}
		if ln := &c.Listeners[i]; ln.Role == "outbound" && ln.NullSender == "" {
			ln.NullSender = DefaultNullSender
		}
		if ln := &c.Listeners[i]; ln.DSN == nil {
			// On outbound listeners only: see Listener.DSN.
			dsn := ln.Role == "outbound"
			ln.DSN = &dsn
		}
	}

	q := &c.Queue
	if len(q.Retry) == 0 {
		q.Retry = DefaultRetry()
	}
	if q.MaxAge == 0 {
		q.MaxAge = DefaultQueueMaxAge
	}
	if q.Workers == 0 {
		q.Workers = DefaultQueueWorkers
	}
	if q.HoldMaxAge == 0 {
		q.HoldMaxAge = DefaultQueueHoldMaxAge
	}
	if q.HoldMaxSize == 0 {
		q.HoldMaxSize = DefaultQueueHoldMaxSize
	}
	if q.QuarantineMaxAge == 0 {
		q.QuarantineMaxAge = DefaultQueueQuarantineMaxAge
	}
	if q.DSNReturnMaxSize == 0 {
		q.DSNReturnMaxSize = DefaultDSNReturnMaxSize
	}
	if !l.idx.has("queue.min_free_space") {
		// Postfix's rule for queue_minfree 0: room for one and a half
		// of the largest message a listener takes.
		largest := c.Limits.MaxMessageSize
		for _, ln := range c.Listeners {
			largest = max(largest, ln.Limits.MaxMessageSize)
		}
		q.MinFreeSpace = largest + largest/2
	}
}

// defaultPerClient is max_connections_per_client when no file sets it: 50,
// but at most half of max_connections (Postfix's default is half its
// process limit), so that one client never holds a small listener alone.
func defaultPerClient(maxConnections int) int {
	return min(defaultLimits.MaxConnectionsPerClient, max(1, maxConnections/2))
}

// inherit fills each zero field from d: a listener states only what differs
// from the global limits, and callers read only the listener's copy. set
// tells whether a key (under this limits: block) is in the file.
func (lim *Limits) inherit(d Limits, set func(key string) bool) {
	if lim.MaxMessageSize == 0 {
		lim.MaxMessageSize = d.MaxMessageSize
	}
	if lim.MaxRecipients == 0 {
		lim.MaxRecipients = d.MaxRecipients
	}
	if lim.MaxLineLength == 0 {
		lim.MaxLineLength = d.MaxLineLength
	}
	if lim.MaxErrors == 0 {
		lim.MaxErrors = d.MaxErrors
	}
	if lim.CommandTimeout == 0 {
		lim.CommandTimeout = d.CommandTimeout
	}
	if lim.DataTimeout == 0 {
		lim.DataTimeout = d.DataTimeout
	}
	if lim.MaxConnections == 0 {
		lim.MaxConnections = d.MaxConnections
	}
	if lim.BareLineEndings == "" {
		lim.BareLineEndings = d.BareLineEndings
	}
	if lim.MaxHops == 0 {
		lim.MaxHops = d.MaxHops
	}
	if lim.MaxAutoReplies == 0 {
		lim.MaxAutoReplies = d.MaxAutoReplies
	}
	if lim.AutoReplyWindow == 0 {
		lim.AutoReplyWindow = d.AutoReplyWindow
	}
	// For the per-client limits a 0 in the file means off, so only a
	// key left out inherits.
	for _, f := range []struct {
		key      string
		own, def *int
	}{
		{"max_connections_per_client", &lim.MaxConnectionsPerClient, &d.MaxConnectionsPerClient},
		{"max_connection_rate_per_client", &lim.MaxConnectionRatePerClient, &d.MaxConnectionRatePerClient},
		{"max_message_rate_per_client", &lim.MaxMessageRatePerClient, &d.MaxMessageRatePerClient},
		{"max_recipient_rate_per_client", &lim.MaxRecipientRatePerClient, &d.MaxRecipientRatePerClient},
		{"max_auth_failures_per_client", &lim.MaxAuthFailuresPerClient, &d.MaxAuthFailuresPerClient},
		{"max_auth_failures_per_user", &lim.MaxAuthFailuresPerUser, &d.MaxAuthFailuresPerUser},
		{"max_junk_commands", &lim.MaxJunkCommands, &d.MaxJunkCommands},
	} {
		if !set(f.key) {
			*f.own = *f.def
		}
	}
	if lim.ClientRateWindow == 0 {
		lim.ClientRateWindow = d.ClientRateWindow
	}
	if lim.AuthFailureWindow == 0 {
		lim.AuthFailureWindow = d.AuthFailureWindow
	}
	if lim.StressCommandTimeout == 0 {
		lim.StressCommandTimeout = d.StressCommandTimeout
	}
}

// systemResolver returns the first usable nameserver of a resolv.conf as
// host:port, or "" if there is none.
func systemResolver(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		if _, err := netip.ParseAddr(fields[1]); err == nil {
			return net.JoinHostPort(fields[1], "53")
		}
	}
	return ""
}

// DefaultDKIMOversign is the default of outbound.dkim.oversign: the fields a
// reader trusts most, which a replayer would most like to add or replace
// (the same list as dkim.DefaultOversign; config imports no securerelay
// package). Date is not in it: RFC 5321 §6.4 lets a relay add a missing
// Date, which an over-signed Date would turn into a failed signature.
func DefaultDKIMOversign() []string {
	return []string{"From", "Sender", "Reply-To", "To", "Cc", "Subject",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding"}
}
