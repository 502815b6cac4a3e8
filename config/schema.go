// Package config defines securerelay's YAML configuration: the schema, its
// defaults, and validation that reports every problem as FILE:LINE: key: what.
//
// The structs below are the schema. Every key is documented in
// config.example.yaml at the repository root; keep the two in step.
package config

import "time"

// Config is the whole configuration file.
type Config struct {
	// Hostname is our name in the SMTP greeting, EHLO, Received: headers
	// and DSNs. Default: os.Hostname().
	Hostname string `yaml:"hostname"`
	// StateDir holds the spool, the self-signed certificate and caches.
	// Relative paths are relative to the config file's directory.
	StateDir string `yaml:"state_dir"`
	// Postmaster is named in DSNs and receives RCPT TO:<Postmaster>
	// (no domain) on inbound listeners. Default postmaster@<hostname>.
	Postmaster string `yaml:"postmaster"`
	// ProxyAddresses are addresses on which this relay receives mail by
	// way of a NAT router or proxy (Postfix: proxy_interfaces): an MX
	// host with one of them is us, like one with a listener's address.
	ProxyAddresses []string   `yaml:"proxy_addresses"`
	Log            Log        `yaml:"log"`
	TLS            TLS        `yaml:"tls"`
	DNS            DNS        `yaml:"dns"`
	Limits         Limits     `yaml:"limits"`
	Listeners      []Listener `yaml:"listeners"`
	// Domains are the domains we are MX for, keyed by domain name
	// (lower case, no trailing dot).
	Domains  map[string]Domain `yaml:"domains"`
	Inbound  Inbound           `yaml:"inbound"`
	Outbound Outbound          `yaml:"outbound"`
	Queue    Queue             `yaml:"queue"`
	Metrics  Metrics           `yaml:"metrics"`

	// Path is the file the config was read from (not a YAML key).
	Path string `yaml:"-"`

	idx        *index
	domainKeys map[string]string
	warnings   Errors
}

// Warnings are the problems found while loading that do not stop the
// relay, each as FILE:LINE: key: what; check-config and serve print them.
func (c *Config) Warnings() Errors { return c.warnings }

// Line returns the line of a key path ("domains.example.com.dkim[0].key")
// in the file, or 0, so that checks made outside this package (loading
// key files) can still report FILE:LINE: key.
func (c *Config) Line(key string) int {
	if c.idx == nil {
		return 0
	}
	return c.idx.line(key)
}

// KeyError positions err at key, for problems found after loading (a key
// file that does not parse, a rule a package refuses).
func (c *Config) KeyError(key string, err error) *Error {
	return &Error{File: c.Path, Line: c.Line(key), Key: key, Msg: err.Error()}
}

// DomainPath is the key path of a domain as written in the file (domain
// names are normalised when loaded).
func (c *Config) DomainPath(name string) string {
	if raw, ok := c.domainKeys[name]; ok {
		return "domains." + raw
	}
	return "domains." + name
}

// Log selects the log format.
type Log struct {
	Format string `yaml:"format"` // text (default) | json
	Level  string `yaml:"level"`  // debug | info (default) | warn | error
}

// TLS names the certificate used by every listener for STARTTLS.
// Both empty: a self-signed certificate is created in state_dir.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// DNS is the resolver securerelay uses for everything (MX lookups, later
// DNSBL, MTA-STS, DANE). It never reads /etc/resolv.conf when set.
type DNS struct {
	// Resolver is host:port of a recursive resolver. Default: the first
	// nameserver in /etc/resolv.conf, port 53.
	Resolver string   `yaml:"resolver"`
	Timeout  Duration `yaml:"timeout"` // default 5s
	// DNSSECValidating says the resolver validates DNSSEC, so its AD bit
	// can be trusted (DANE needs it). Only true for a validating resolver
	// on this host or reached over a trusted path. Default false.
	DNSSECValidating bool `yaml:"dnssec_validating"`
	// CacheSize is how many answers the relay keeps for their TTL (at
	// most an hour), so that the DKIM key, SPF and DMARC records of a
	// regular sender are asked once, not once per message. 0 turns the
	// cache off (a local caching resolver still helps: it serves every
	// program on the host). Default 10000. Changed only by a restart.
	CacheSize int `yaml:"cache_size"`
}

// Metrics is the operations HTTP listener: /healthz (the process is up),
// /readyz (listeners bound, spool writable, free space above
// queue.min_free_space) and /metrics (Prometheus). Off unless Address is
// set; loopback only.
type Metrics struct {
	// Address is a loopback host:port, e.g. 127.0.0.1:9325.
	Address string `yaml:"address"`
}

// Limits apply to every listener unless the listener overrides them.
type Limits struct {
	MaxMessageSize Size     `yaml:"max_message_size"` // default 50MB; advertised as SIZE
	MaxRecipients  int      `yaml:"max_recipients"`   // default 100 per message
	MaxLineLength  int      `yaml:"max_line_length"`  // default 2000 bytes (RFC 5321 §4.5.3.1.6 doubled)
	MaxErrors      int      `yaml:"max_errors"`       // default 10 refused commands, then 421 and close
	CommandTimeout Duration `yaml:"command_timeout"`  // default 5m: idle time allowed between commands
	DataTimeout    Duration `yaml:"data_timeout"`     // default 10m: a whole DATA transfer
	MaxConnections int      `yaml:"max_connections"`  // default 500 concurrent sessions per listener
	// MaxHops: Received: fields a message may already carry; more is a
	// loop (554 5.4.6). Default 50, as Postfix's hopcount_limit.
	MaxHops int `yaml:"max_hops"`
	// MaxAutoReplies: automatic messages (Auto-Submitted, Precedence
	// bulk/junk/list, X-Autoreply, or from <>) per sender and recipient
	// within AutoReplyWindow; more are refused as an auto-reply loop.
	// Default 5.
	MaxAutoReplies int `yaml:"max_auto_replies"`
	// AutoReplyWindow for MaxAutoReplies. Default 1h.
	AutoReplyWindow Duration `yaml:"auto_reply_window"`
	// BareLineEndings: what to do with a bare CR or bare LF in message data:
	// reject (default; 550 5.6.11 refused in the dialog) or normalize (to CRLF).
	BareLineEndings string `yaml:"bare_line_endings"`

	// Per-client limits (Postfix's anvil). A client is one IPv4 address
	// or one IPv6 /64. The listener's trusted_networks and
	// client_limit_exceptions are exempt. Unlike the limits above, a 0
	// written in the file turns one of these off (leaving it out
	// inherits).
	//
	// MaxConnectionsPerClient: sessions at a time per listener; more get
	// 421 4.7.0 at connect. Default 50, at most half of max_connections.
	MaxConnectionsPerClient int `yaml:"max_connections_per_client"`
	// MaxConnectionRatePerClient: new connections per ClientRateWindow;
	// more get 421 4.7.0. Default 300.
	MaxConnectionRatePerClient int `yaml:"max_connection_rate_per_client"`
	// MaxMessageRatePerClient: MAIL commands per ClientRateWindow; more
	// get 450 4.7.1. Default 300.
	MaxMessageRatePerClient int `yaml:"max_message_rate_per_client"`
	// MaxRecipientRatePerClient: RCPT commands per ClientRateWindow; more
	// get 450 4.7.1. Default 1000.
	MaxRecipientRatePerClient int `yaml:"max_recipient_rate_per_client"`
	// ClientRateWindow for the three rates. Default 1m.
	ClientRateWindow Duration `yaml:"client_rate_window"`
	// MaxAuthFailuresPerClient and MaxAuthFailuresPerUser: failed AUTH
	// within AuthFailureWindow, across connections and listeners; at the
	// limit every login of that client or user gets 454 4.7.0 without its
	// password being checked, the right one too. Defaults 20 and 10.
	MaxAuthFailuresPerClient int `yaml:"max_auth_failures_per_client"`
	MaxAuthFailuresPerUser   int `yaml:"max_auth_failures_per_user"`
	// AuthFailureWindow for the two above. Default 15m.
	AuthFailureWindow Duration `yaml:"auth_failure_window"`
	// MaxJunkCommands: NOOP, RSET, VRFY, HELP, EXPN, ETRN a session may
	// send between two messages; more end it with 421 4.7.0 (Postfix:
	// smtpd_junk_command_limit). Default 100.
	MaxJunkCommands int `yaml:"max_junk_commands"`
	// StressCommandTimeout replaces command_timeout for idle sessions
	// while a listener holds 80% of max_connections or more (Postfix's
	// stress mode), and max_junk_commands is then at most 10. Default 10s;
	// command_timeout or more turns it off.
	StressCommandTimeout Duration `yaml:"stress_command_timeout"`
}

// Listener is one SMTP listening socket with a role.
type Listener struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"` // host:port
	// Role: inbound (MX for our domains) or outbound (smarthost/submission).
	Role string `yaml:"role"`
	// TrustedNetworks (outbound only): clients in these CIDRs may relay
	// without AUTH.
	TrustedNetworks []string `yaml:"trusted_networks"`
	// Auth (outbound only): required (default when no trusted_networks),
	// optional, or off.
	Auth string `yaml:"auth"`
	// AllowInsecureAuth permits AUTH before STARTTLS. Default false.
	AllowInsecureAuth bool `yaml:"allow_insecure_auth"`
	// RequireTLS refuses MAIL before STARTTLS. Default false.
	RequireTLS bool `yaml:"require_tls"`
	// ForeignFrom (outbound only): what to do with mail from an
	// authenticated user whose From: domain is not in domains: reject
	// (default; 553 5.7.1, so a misconfigured application is noticed) or
	// unsigned (send it without a DKIM signature).
	ForeignFrom string `yaml:"foreign_from"`
	// NullSender (outbound only): what to do with MAIL FROM:<> that is not
	// a delivery status or disposition notification (a multipart/report
	// whose report part parses, not just its Content-Type):
	// reject (default; 550 5.7.1) or rewrite (the envelope sender becomes
	// NullSenderAddress; logged and recorded in a header).
	NullSender string `yaml:"null_sender"`
	// NullSenderAddress is the sender used by null_sender: rewrite.
	NullSenderAddress string `yaml:"null_sender_address"`
	// Limits overrides the global limits for this listener; zero values
	// inherit.
	Limits Limits `yaml:"limits"`
	// ClientLimitExceptions: clients (CIDRs or addresses) that the
	// per-client limits do not apply to, besides trusted_networks: a
	// backup MX or a partner's relays on an inbound listener, an office's
	// NAT address on a submission listener. Default none.
	ClientLimitExceptions []string `yaml:"client_limit_exceptions"`
	// DSN offers the DSN extension (RFC 3461: NOTIFY, ORCPT, RET, ENVID).
	// Default true on outbound listeners, false on inbound ones, where
	// a success notice to an unverified sender would be backscatter; with
	// true there, the parameters go to the downstream system, and the
	// relay still sends nothing about inbound mail itself.
	DSN *bool `yaml:"dsn"`
}

// Domain is one of our domains: one we receive mail for (deliver_to), one
// we sign outgoing mail for (dkim), or both.
type Domain struct {
	// DeliverTo is where mail for this domain goes:
	// smtp://host:port, lmtp://host:port or maildir:PATH. Empty: the
	// inbound listeners do not accept mail for the domain (a domain we
	// only send from).
	DeliverTo string `yaml:"deliver_to"`
	// Recipients that exist (inbound RCPT TO check); empty: all.
	Recipients Recipients `yaml:"recipients"`
	// DKIM lists the keys that sign mail from this domain; with several,
	// each signs (RSA + Ed25519, or old and new selector during rotation).
	DKIM []DKIMKey `yaml:"dkim"`
	// ContentPolicy names the inbound.content.policies entry whose
	// milters scan this domain's inbound mail. Default: "default".
	ContentPolicy string `yaml:"content_policy"`
	// AttachmentPolicy names the inbound.attachments.policies entry for
	// this domain's inbound mail. Default: "default".
	AttachmentPolicy string `yaml:"attachment_policy"`
	// OpenPGPSigningKey: an organisation's OpenPGP secret key (armoured,
	// not passphrase-protected) that also signs the mail from this domain
	// that the relay encrypts, so the recipient sees who sent it.
	// Default: none (encrypted, not signed).
	OpenPGPSigningKey string `yaml:"openpgp_signing_key"`
}

// Inbound configures the MX role's checks inside the dialog.
type Inbound struct {
	Screen  Screen        `yaml:"screen"`
	Checks  InboundChecks `yaml:"checks"`
	Verify  Verify        `yaml:"verify"`
	Content Content       `yaml:"content"`
	Auth    Auth          `yaml:"auth"`
	// Attachments is the attachment policy, checked after DATA before
	// everything else in the content stage.
	Attachments Attachments `yaml:"attachments"`
	// MaxMailPerSession ends an inbound session at the MAIL command over
	// it (421 4.7.0; the client reconnects): each transaction may cost
	// DNS work (sender domain, SPF), which RSET must not repeat without
	// end. Default 100 (0 or leaving it out).
	MaxMailPerSession int `yaml:"max_mail_per_session"`
}

// Content is scanning after DATA through milters, while the client waits.
type Content struct {
	// Milters that may be used; policies pick from them by name.
	Milters []Milter `yaml:"milters"`
	// Policies map a policy name to the milters, in order, that scan mail
	// for domains with that content_policy. Default: "default" = every
	// milter above, in order.
	Policies map[string][]string `yaml:"policies"`
	// RecipientDeletion: a milter asked to remove some recipients; the
	// whole message is refused: reject (default, 550 5.7.1) or tempfail
	// (451 4.7.1). Never a 250 that silently drops them.
	RecipientDeletion string `yaml:"recipient_deletion"`
}

// Attachments refuses files by what they are (programs, scripts,
// disguised names), also inside archives, in the dialog: no signature
// needed, no scanner run spent. On by default.
type Attachments struct {
	// Enabled: default true; false turns the stage off.
	Enabled *bool `yaml:"enabled"`
	// MaxDepth: archives nested in archives that are opened (a ZIP
	// attached is 1). Default 5.
	MaxDepth int `yaml:"max_depth"`
	// MaxEntries: files in all archives of one message. Default 10000.
	MaxEntries int `yaml:"max_entries"`
	// MaxUncompressed: bytes all archives of one message expand to (and
	// declare). Default 256MB.
	MaxUncompressed Size `yaml:"max_uncompressed"`
	// MaxRatio: an archive entry over 1 MiB expanding more than this many
	// times its compressed size. Default 200.
	MaxRatio int `yaml:"max_ratio"`
	// Timeout for checking one message. Default 30s. Running out of
	// time defers the message (451 4.7.1) even where limits says
	// reject: the time depends on the server's load, not only on the
	// message.
	Timeout Duration `yaml:"timeout"`
	// Policies by name; domains pick one with attachment_policy. A
	// "default" policy exists even when not written.
	Policies map[string]AttachmentPolicy `yaml:"policies"`
}

// AttachmentPolicy is what one policy bans and what each finding costs.
// Actions: reject (554 5.7.1), tempfail (451 4.7.1), accept (delivered
// with an X-Securerelay-Attachment header); encrypted and unopened also
// off (nothing done).
type AttachmentPolicy struct {
	// Banned classes: executable, script, shortcut, installer,
	// disk_image, office_macro, deceptive_name, name_mismatch. Default:
	// all of them; [] bans none.
	Banned []string `yaml:"banned"`
	// BannedNames: file-name patterns (*, ?, [a-z]; case-insensitive),
	// matched against the name of every file, in archives too. Default
	// none.
	BannedNames []string `yaml:"banned_names"`
	// Action for a banned class or name. Default reject.
	Action string `yaml:"action"`
	// Encrypted: an encrypted archive or document, which cannot be
	// checked. Default reject.
	Encrypted string `yaml:"encrypted"`
	// Unopened: an archive recognised but not opened (7z, RAR, CAB, …)
	// or damaged, or a MIME part mail programs read in different ways
	// (a damaged part header, two differing encodings or types).
	// Default reject.
	Unopened string `yaml:"unopened"`
	// Limits: a limit above was exceeded (a zip bomb). Default reject;
	// for the time limit, reject means tempfail.
	Limits string `yaml:"limits"`
}

// Milter is one content scanner speaking the milter protocol.
type Milter struct {
	Name string `yaml:"name"`
	// Address: unix:/path or inet:host:port.
	Address        string   `yaml:"address"`
	ConnectTimeout Duration `yaml:"connect_timeout"` // default 10s
	ReadTimeout    Duration `yaml:"read_timeout"`    // default 2m
	WriteTimeout   Duration `yaml:"write_timeout"`   // default 30s
	// OnError: tempfail (default; 451 4.7.1), accept (skip this milter)
	// or reject (554 5.7.1) when the milter is down, slow or broken.
	OnError string `yaml:"on_error"`
}

// Auth is SPF, DKIM and DMARC evaluation of inbound mail, recorded in an
// Authentication-Results header.
type Auth struct {
	// Enabled turns the stage on. Default false.
	Enabled bool `yaml:"enabled"`
	// AuthServID names us in Authentication-Results; forged fields
	// claiming it are removed. Default: hostname.
	AuthServID string `yaml:"authserv_id"`
	// RejectDMARC refuses mail failing DMARC whose domain publishes
	// p=reject (550 5.7.26), and mail DMARC cannot be checked for:
	// several From fields (550 5.6.0), more than ten author domains (550
	// 5.7.1). Default true.
	RejectDMARC *bool `yaml:"reject_dmarc"`
	// RejectSPFFail refuses mail whose SPF result is fail (-all), at the
	// first accepted RCPT (550 5.7.23; SPF is evaluated there, once per
	// transaction). Default false: forwarding breaks SPF.
	RejectSPFFail bool `yaml:"reject_spf_fail"`
	// Timeout for all DNS lookups of one message. Default 10s.
	Timeout Duration `yaml:"timeout"`
}

// Screen is the per-client screening at EHLO (postscreen's job).
type Screen struct {
	// Allow: clients in these networks skip screening (not the envelope
	// checks).
	Allow []string `yaml:"allow"`
	// Deny: clients in these networks are refused (554 5.7.1).
	Deny []string `yaml:"deny"`
	// Pregreet: send the greeting's first line ("220-"), wait this long,
	// and refuse a client that talks before the last line. 0: off
	// (default). Every new client then waits this long for the greeting.
	Pregreet Duration `yaml:"pregreet"`
	// DNSBL scoring.
	DNSBL DNSBL `yaml:"dnsbl"`
	// CacheTTL: a client that passed screening is not screened again (no
	// DNSBL query, no pregreet wait) for this long. Default 1h.
	CacheTTL Duration `yaml:"cache_ttl"`
	// Tarpit delays each reply line to a client listed on a DNSBL but
	// below the threshold. 0: off (default).
	Tarpit Duration `yaml:"tarpit"`
	// ProtocolTests: before MAIL, a client that sends HTTP/proxy
	// commands, a bare newline, or a second command before the first
	// reply is disconnected (554 5.5.1). Default true.
	ProtocolTests *bool `yaml:"protocol_tests"`
	// DeepProtocolTest: a new client's first session ends with 450 at
	// MAIL; real MTAs retry (and are then cached), most bots do not.
	// Default false.
	DeepProtocolTest bool `yaml:"deep_protocol_test"`
}

// DNSBL is DNS blocklist (and allowlist) scoring.
type DNSBL struct {
	// Threshold: a client whose summed weight reaches it is refused with
	// 550 5.7.1 naming the lists. Default 3.
	Threshold int `yaml:"threshold"`
	// Timeout for all lists together; a list that does not answer in time
	// counts as not listed (and is logged). Default 2s.
	Timeout Duration    `yaml:"timeout"`
	Lists   []DNSBLZone `yaml:"lists"`
}

// DNSBLZone is one list.
type DNSBLZone struct {
	Zone string `yaml:"zone"`
	// Weight added when listed; negative for an allowlist. Default 1.
	Weight int `yaml:"weight"`
	// Codes, if set, count only these answers (e.g. 127.0.0.2).
	Codes []string `yaml:"codes"`
}

// InboundChecks: each is reject, tempfail or off, run in this order.
type InboundChecks struct {
	// SenderFQDN: MAIL FROM must be fully qualified (a@b.tld). Default reject.
	SenderFQDN string `yaml:"sender_fqdn"`
	// RecipientFQDN: RCPT TO must be fully qualified. Default reject.
	RecipientFQDN string `yaml:"recipient_fqdn"`
	// SenderDomain: the sender's domain must resolve (MX, or A/AAAA; null
	// MX and NXDOMAIN fail). Default reject; a DNS failure is always a
	// temporary refusal.
	SenderDomain string `yaml:"sender_domain"`
	// UnknownRecipient: a recipient not in its domain's recipients list
	// (when the domain has one). Default reject.
	UnknownRecipient string `yaml:"unknown_recipient"`
	// HeloFQDN: the EHLO/HELO name must be a fully qualified host name or
	// an address literal. Default off (many legitimate servers fail it).
	HeloFQDN string `yaml:"helo_fqdn"`
}

// Recipients lists the addresses that exist in a domain; empty: every
// local part is accepted and the downstream system decides.
type Recipients struct {
	// List of local parts or whole addresses.
	List []string `yaml:"list"`
	// File with one local part or address per line (# comments); re-read
	// when it changes.
	File string `yaml:"file"`
	// Verify: with no list or file, ask the deliver_to system (smtp:// or
	// lmtp://) with an RCPT probe whether a recipient exists, cached as
	// inbound.verify says.
	Verify bool `yaml:"verify"`
}

// Verify configures the recipient probe's caches and time-out.
type Verify struct {
	// PositiveTTL: how long an existing recipient is remembered. Default 24h.
	PositiveTTL Duration `yaml:"positive_ttl"`
	// NegativeTTL: how long an unknown recipient is remembered. Default 10m.
	NegativeTTL Duration `yaml:"negative_ttl"`
	// Timeout for one probe. Default 10s.
	Timeout Duration `yaml:"timeout"`
}

// DKIMKey is one selector and its private key file.
type DKIMKey struct {
	Selector string `yaml:"selector"`
	// Key is a PEM private key (RSA >= 1024 bits, 2048+ advised, or
	// Ed25519), as written by `securerelay dkim keygen`.
	Key string `yaml:"key"`
	// Active: the key signs. false keeps a key known (dkim check looks
	// its record up) without signing: the next key of a rotation before
	// its DNS record is out, or the old one during the grace period.
	// Default true.
	Active *bool `yaml:"active"`
}

// Signs reports whether the key is active (the default).
func (k DKIMKey) Signs() bool { return k.Active == nil || *k.Active }

// DKIMOptions say how outbound mail is signed.
type DKIMOptions struct {
	// Canonicalization: header/body, each relaxed or simple. Default
	// relaxed/relaxed.
	Canonicalization string `yaml:"canonicalization"`
	// Oversign names header fields signed once more than they occur, so
	// that one added later breaks the signature. From is always
	// over-signed. Default From, To, Cc, Subject, Date, Reply-To.
	Oversign []string `yaml:"oversign"`
	// Expiration sets x= this long after signing; 0 (default): none.
	Expiration Duration `yaml:"expiration"`
	// UseEnvelopeSender: when the From: domain has no key, sign with the
	// key of the envelope sender's domain. Default false.
	UseEnvelopeSender bool `yaml:"use_envelope_sender"`
	// Identity: the i= tag (RFC 6376 §3.5): "domain" (default; no i=,
	// meaning the whole signing domain) or "from" (the From: address when
	// it is in the signing domain or below).
	Identity string `yaml:"identity"`
}

// Outbound configures the submission side and the delivery engine.
type Outbound struct {
	// Users may authenticate on outbound listeners (SMTP AUTH PLAIN/LOGIN).
	Users []User `yaml:"users"`
	// SenderBinding: what a user without a senders list may use as
	// envelope sender and in From:, Sender:, Resent-From: and
	// Resent-Sender:: domains (default; any address in a domain under
	// domains:) or login (only the address it logs in with, so the user
	// name must be one). Clients in trusted_networks that do not log in
	// are not bound.
	SenderBinding string `yaml:"sender_binding"`
	// Routes send recipient domains to a fixed next hop, in order; the
	// first match wins; no match: MX lookup.
	Routes []Route `yaml:"routes"`
	// Helo is the name sent in EHLO. Default: hostname.
	Helo string `yaml:"helo"`
	// MaxConnectionsPerDestination limits parallel sessions to one next
	// hop (MX host set or route target). Default 20.
	MaxConnectionsPerDestination int `yaml:"max_connections_per_destination"`
	// ConnectTimeout for outgoing TCP connects. Default 30s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// CommandTimeout for each outgoing SMTP command. Default 5m.
	CommandTimeout Duration `yaml:"command_timeout"`
	// IdleConnectionTimeout: how long an idle outgoing connection is kept
	// for reuse. Default 5s; 0 disables reuse.
	IdleConnectionTimeout *Duration `yaml:"idle_connection_timeout"`
	// StartTLS for MX and route delivery: opportunistic (default) or off.
	// Mandatory levels come with the TLS policy (tls:), never weakened.
	StartTLS string `yaml:"starttls"`
	// TLS is the per-destination TLS policy.
	TLS OutboundTLS `yaml:"tls"`
	// Encryption: where the OpenPGP fallback finds recipients' keys.
	Encryption Encryption `yaml:"encryption"`
	// DKIM signing options; the keys are per domain (domains.*.dkim).
	DKIM DKIMOptions `yaml:"dkim"`
	// AutomaticSenders adds local parts ("ticket-bot") or addresses
	// ("alerts@example.com") to the built-in list of addresses only
	// programs send from (MAILER-DAEMON, noreply, …): automatic mail to
	// them is refused on every listener as half of an auto-reply loop.
	AutomaticSenders []string `yaml:"automatic_senders"`
}

// OutboundTLS decides, per delivery, the TLS level the destination needs.
type OutboundTLS struct {
	// Default level where no rule, DANE or MTA-STS decides: none, may,
	// encrypt, verify or secure. Default may (none with starttls: off).
	Default string `yaml:"default"`
	// MinVersion of TLS for every level that encrypts: "1.2" (default)
	// or "1.3"; a policy may raise it.
	MinVersion string `yaml:"min_version"`
	// DANE (RFC 7672): use DNSSEC-validated TLSA records of MX hosts.
	// Needs dns.dnssec_validating: true.
	DANE bool `yaml:"dane"`
	// MTASTS (RFC 8461): fetch and honour MTA-STS policies.
	MTASTS bool `yaml:"mta_sts"`
	// TLSRequiredNo: "honour" lets a message with the header
	// "TLS-Required: No" (RFC 8689) go with may where only DANE or MTA-STS
	// would require more; "ignore" (default) does not. Policies below are
	// never lowered by it.
	TLSRequiredNo string `yaml:"tls_required_no"`
	// CAFile adds PEM trust roots to the system's for verify and secure
	// (a private PKI of a partner; the tests' own CA).
	CAFile string `yaml:"ca_file"`
	// Policies are per-partner rules; the first match wins.
	Policies []TLSPolicy `yaml:"policies"`
}

// TLSPolicy is one partner rule (Postfix's smtp_tls_policy_maps entry).
type TLSPolicy struct {
	// Match: "partner.example" (that recipient domain), ".partner.example"
	// (its subdomains) or "[mx.partner.example]" (that next-hop host).
	Match string `yaml:"match"`
	// Level: none, may, encrypt, verify, secure, dane, dane-only,
	// fingerprint.
	Level string `yaml:"level"`
	// Names the certificate may carry in addition to the MX host name
	// (verify) or the domain and names under it (secure); ".x.example"
	// accepts any name under x.example.
	Names []string `yaml:"names"`
	// Fingerprints (level fingerprint): SHA-256 of the certificate or of
	// its public key, hex with or without colons.
	Fingerprints []string `yaml:"fingerprints"`
	// MinVersion raises the TLS version for this partner ("1.3").
	MinVersion string `yaml:"min_version"`
	// Ciphers restricts TLS 1.2 cipher suites (Go names, e.g.
	// TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384).
	Ciphers []string `yaml:"ciphers"`
	// Fallback when the level cannot be met: defer (default: retry until
	// max_age, then a DSN), bounce (a DSN at once) or encrypt (OpenPGP
	// end to end to each recipient's key, sent over the best session the
	// hosts offer; recipients without a key wait, then get a DSN).
	Fallback string `yaml:"fallback"`
	// Encrypt: always encrypts every message to this destination with
	// OpenPGP, whatever TLS achieves; "" (default): only as the fallback.
	Encrypt string `yaml:"encrypt"`
	// WithoutKey (with encrypt: always): a recipient without a usable key
	// is refused at RCPT on outbound listeners and waits at delivery
	// (refuse, default), or is sent unencrypted when the TLS level is met
	// (tls; not with level none or may, which clear text meets).
	WithoutKey string `yaml:"without_key"`
	// Keys pinned for this destination: used first, need not name the
	// recipient in a user ID.
	Keys []PinnedKey `yaml:"keys"`
	// KeySources: where recipients' keys are looked up, in this order:
	// pinned, keyring, wkd, openpgpkey. A source not listed is not trusted
	// for this rule. Default: every source enabled in outbound.encryption.
	KeySources []string `yaml:"key_sources"`
	// EncryptedSubject is the Subject outside the encrypted part (the real
	// one travels inside, as a protected header). Default "...".
	EncryptedSubject string `yaml:"encrypted_subject"`
	// Inbound: mail from this domain (envelope sender), and any mail
	// (the null sender of its DSNs and MDNs included) from a client whose
	// EHLO name is the domain or a host under it, over a plaintext
	// session on an inbound listener is refused: tempfail (450 4.7.0) or
	// reject (530 5.7.0); off (default) accepts it.
	Inbound string `yaml:"inbound"`
}

// PinnedKey is an OpenPGP public key an admin vouches for.
type PinnedKey struct {
	// Address limits the key to one recipient; empty: every recipient of
	// the rule (a partner's gateway or domain key).
	Address string `yaml:"address"`
	// Fingerprint of the primary key (hex, spaces allowed), as gpg
	// --fingerprint prints it; must match File.
	Fingerprint string `yaml:"fingerprint"`
	// File holds the ASCII-armoured (or binary) public key.
	File string `yaml:"file"`
}

// Encryption configures the OpenPGP fallback's key lookup.
type Encryption struct {
	// Keyring is a folder of ASCII-armoured public keys (one or more per
	// file), read again when it changes. Default: none.
	Keyring string `yaml:"keyring"`
	// WKD looks keys up in the recipient domain's Web Key Directory
	// (HTTPS, valid certificate). Default true.
	WKD *bool `yaml:"wkd"`
	// OpenPGPKey looks keys up in DNS (OPENPGPKEY, RFC 7929), trusted only
	// from a DNSSEC-validated answer; needs dns.dnssec_validating. Default
	// false.
	OpenPGPKey bool `yaml:"openpgpkey"`
	// CacheTTL: how long a key found by WKD or DNS is kept (an OPENPGPKEY
	// answer no longer than its DNS TTL). Default 6h.
	CacheTTL Duration `yaml:"cache_ttl"`
	// NegativeCacheTTL: how long "no key there" is kept. Default 30m.
	NegativeCacheTTL Duration `yaml:"negative_cache_ttl"`
}

// User is one SMTP AUTH account.
type User struct {
	Name         string `yaml:"name"`
	PasswordHash string `yaml:"password_hash"` // bcrypt ($2a$/$2b$/$2y$)
	// Senders (Postfix's smtpd_sender_login_maps, turned round): what
	// this user may use as envelope sender and in From:, Sender:,
	// Resent-From: and Resent-Sender:: "otrs@example.com" (that address)
	// or "@support.example.com" (any address in that domain). The list is
	// then all the user may use. Empty: as SenderBinding says.
	Senders []string `yaml:"senders"`
	// SenderBinding for this user when it has no Senders; empty:
	// outbound.sender_binding.
	SenderBinding string `yaml:"sender_binding"`
}

// Route is one transport_maps-like entry.
type Route struct {
	// Match: "example.org" (that domain), ".example.org" (its
	// subdomains) or "*" (everything).
	Match string `yaml:"match"`
	// NextHop: smtp://host:port or lmtp://host:port.
	NextHop string `yaml:"next_hop"`
	// Auth for an ISP smarthost; sent only when the next hop offers AUTH
	// PLAIN inside TLS that auth.tls accepts, or in clear text with
	// allow_insecure_auth.
	Auth *RouteAuth `yaml:"auth"`
}

// RouteAuth are credentials presented to a next hop.
type RouteAuth struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLS is what the session must prove before the credentials are
	// sent: verify (default: a certificate that chains to a trusted root,
	// outbound.tls.ca_file included, and names the next-hop host) or
	// encrypt (any certificate: whoever can redirect the connection can
	// read the password).
	TLS string `yaml:"tls"`
	// AllowInsecureAuth sends them in clear text too (hence over any
	// session); it cannot be combined with tls. Default false.
	AllowInsecureAuth bool `yaml:"allow_insecure_auth"`
}

// Queue configures the spool and the retry schedule.
type Queue struct {
	// Retry lists the delays between attempts; the last repeats.
	// Default [1m, 5m, 15m, 1h, 4h].
	Retry []Duration `yaml:"retry"`
	// MaxAge: after this a message still undelivered fails permanently
	// (DSN for outbound mail). Default 5d.
	MaxAge Duration `yaml:"max_age"`
	// Workers: deliveries in parallel. Default 100.
	Workers int `yaml:"workers"`
	// HoldMaxAge: a message in spool/hold (inbound mail the downstream
	// refused after our 250, failed null-sender mail: nobody can be told)
	// is deleted this long after it was held. Default 30d.
	HoldMaxAge Duration `yaml:"hold_max_age"`
	// HoldMaxSize: past this many bytes in spool/hold the oldest held
	// messages are deleted. At least the largest max_message_size.
	// Default 1GB.
	HoldMaxSize Size `yaml:"hold_max_size"`
	// QuarantineMaxAge: a file in spool/quarantine (found damaged or
	// incomplete at start) is deleted this long after. Default 30d.
	QuarantineMaxAge Duration `yaml:"quarantine_max_age"`
	// DelayWarningTime: the sender of outbound mail still undelivered this
	// long after it arrived gets one delay notice, for the recipients that
	// asked for one (NOTIFY=DELAY, or no NOTIFY), as Postfix's
	// delay_warning_time. 0 (default): none.
	DelayWarningTime Duration `yaml:"delay_warning_time"`
	// DSNReturnMaxSize: a failed message whose sender asked for it back
	// whole (RET=FULL) is returned so up to this size, else as its
	// header. Default 1MB.
	DSNReturnMaxSize Size `yaml:"dsn_return_max_size"`
	// MinFreeSpace: while the file system of state_dir has less free space
	// (plus the SIZE a client declares), new mail gets 452 4.3.1 at MAIL
	// FROM, before the client sends it, logged as a refusal with
	// check=min_free_space; accepting resumes by itself once there is
	// room. Default: one and a half times the largest max_message_size
	// (Postfix's rule); 0 turns the check off.
	MinFreeSpace Size `yaml:"min_free_space"`
	// ControlGroup: members of this group (a name in the group database)
	// may run the queue commands against the running relay, besides root
	// and the relay's user: state_dir/control.sock becomes mode 0660 with
	// this group, and state_dir gets the group and g+x (search, not
	// list), nothing more. The relay's user must be root or a member.
	// Default "" (the socket is mode 0600). A restart applies a change.
	ControlGroup string `yaml:"control_group"`
}

// Duration is a time.Duration that also accepts a "d" (day) unit: "5d", "1h30m".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count that accepts units: 4096, "4KiB", "50MB", "1G".
type Size int64
