package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// minimal is the smallest configuration that loads.
const minimal = `
hostname: relay.example.com
listeners:
  - {name: mx, address: ":25", role: inbound}
`

func mustParse(t *testing.T, yaml, baseDir string) *Config {
	t.Helper()
	cfg, err := Parse("test.yaml", []byte(yaml), baseDir)
	if err != nil {
		t.Fatalf("Parse failed:\n%v", err)
	}
	return cfg
}

func parseErrors(t *testing.T, yaml string) string {
	t.Helper()
	_, err := Parse("test.yaml", []byte(yaml), "/base")
	if err == nil {
		t.Fatalf("Parse succeeded, want errors")
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error is %T, want Errors", err)
	}
	return err.Error()
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := Load("../config.example.yaml")
	if err != nil {
		t.Fatalf("config.example.yaml does not load:\n%v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Path != filepath.Join(root, "config.example.yaml") {
		t.Errorf("Path = %q", cfg.Path)
	}
	if cfg.Hostname != "relay.localhost" || cfg.DNS.Resolver != "127.0.0.1:53" {
		t.Errorf("hostname %q, resolver %q", cfg.Hostname, cfg.DNS.Resolver)
	}
	if cfg.StateDir != filepath.Join(root, "var") {
		t.Errorf("state_dir = %q, want it relative to the file", cfg.StateDir)
	}
	if got := cfg.Domains["example.test"].DeliverTo; got != "maildir:"+filepath.Join(root, "var", "mail") {
		t.Errorf("deliver_to = %q", got)
	}
	if len(cfg.Listeners) != 2 {
		t.Fatalf("listeners: %+v", cfg.Listeners)
	}
	mx, sub := cfg.Listeners[0], cfg.Listeners[1]
	if mx.Name != "mx" || mx.Address != "127.0.0.1:2525" || mx.Role != "inbound" || mx.Auth != "off" {
		t.Errorf("mx listener: %+v", mx)
	}
	if sub.Name != "submission" || sub.Address != "127.0.0.1:2587" || sub.Role != "outbound" || sub.Auth != "optional" ||
		!reflect.DeepEqual(sub.TrustedNetworks, []string{"127.0.0.0/8", "::1/128"}) {
		t.Errorf("submission listener: %+v", sub)
	}
	if len(cfg.Outbound.Users) != 1 || cfg.Outbound.Users[0].Name != "demo" {
		t.Fatalf("users: %+v", cfg.Outbound.Users)
	}
	if err := bcryptCheck(cfg.Outbound.Users[0].PasswordHash, "demo"); err != nil {
		t.Errorf("the example user's password is documented as demo: %v", err)
	}
	// The example spells out the defaults; they must be the real ones.
	def := mustParse(t, minimal, "/base")
	if cfg.Limits != def.Limits || !reflect.DeepEqual(cfg.Queue, def.Queue) {
		t.Errorf("example limits/queue differ from the defaults:\n%+v %+v\n%+v %+v", cfg.Limits, cfg.Queue, def.Limits, def.Queue)
	}
	if *cfg.Outbound.IdleConnectionTimeout != *def.Outbound.IdleConnectionTimeout ||
		cfg.Outbound.MaxConnectionsPerDestination != def.Outbound.MaxConnectionsPerDestination ||
		cfg.Outbound.ConnectTimeout != def.Outbound.ConnectTimeout ||
		cfg.Outbound.CommandTimeout != def.Outbound.CommandTimeout ||
		cfg.Outbound.StartTLS != def.Outbound.StartTLS ||
		cfg.DNS.Timeout != def.DNS.Timeout || cfg.Log != def.Log {
		t.Errorf("example outbound/dns/log differ from the defaults")
	}
}

// TestExampleDocumentsEveryKey keeps config.example.yaml and schema.go in
// step: every schema key must appear in the example, set or commented out.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for typeName, typ := range schemaTypes {
		for _, key := range yamlKeys(typ) {
			if !strings.Contains(text, key+":") {
				t.Errorf("config.example.yaml does not document %s key %q", typeName, key)
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	withMachine(t, "box.example.net", writeFile(t, "resolv.conf", "# comment\nsearch example.net\nnameserver fe80::1%eth0\nnameserver 192.0.2.53\n"))
	cfg := mustParse(t, `
listeners:
  - {name: mx, address: ":25", role: inbound}
  - {name: sub, address: ":587", role: outbound}
  - {name: relay, address: ":2525", role: outbound, trusted_networks: [10.0.0.0/8]}
outbound:
  users: [{name: u, password_hash: "$2a$10$2i/uRSSVtsw9SFVyBdYQkuTX9YP46UVMoLgXaI5p0vehZ8UPWr5gu"}]
`, "/srv/relay")

	yes := true
	want := Config{
		Hostname:   "box.example.net",
		StateDir:   "/srv/relay/var",
		Postmaster: "postmaster@box.example.net",
		Log:        Log{Format: "text", Level: "info"},
		DNS:        DNS{Resolver: "[fe80::1%eth0]:53", Timeout: Duration(5 * time.Second), CacheSize: 10000},
		Limits: Limits{
			MaxMessageSize: 50_000_000, MaxRecipients: 100, MaxLineLength: 2000, MaxErrors: 10,
			CommandTimeout: Duration(5 * time.Minute), DataTimeout: Duration(10 * time.Minute),
			MaxConnections: 500, BareLineEndings: "reject",
			MaxAutoReplies: 5, AutoReplyWindow: Duration(time.Hour), MaxHops: 50,
			MaxConnectionsPerClient: 50, MaxConnectionRatePerClient: 300, MaxMessageRatePerClient: 300,
			MaxRecipientRatePerClient: 1000, ClientRateWindow: Duration(time.Minute),
			MaxAuthFailuresPerClient: 20, MaxAuthFailuresPerUser: 10, AuthFailureWindow: Duration(15 * time.Minute),
			MaxJunkCommands: 100, StressCommandTimeout: Duration(10 * time.Second),
		},
		Inbound: Inbound{
			Screen:  Screen{DNSBL: DNSBL{Threshold: 3, Timeout: Duration(2 * time.Second)}, CacheTTL: Duration(time.Hour)},
			Checks:  InboundChecks{SenderFQDN: "reject", RecipientFQDN: "reject", SenderDomain: "reject", UnknownRecipient: "reject", HeloFQDN: "off"},
			Verify:  Verify{PositiveTTL: Duration(24 * time.Hour), NegativeTTL: Duration(10 * time.Minute), Timeout: Duration(10 * time.Second)},
			Content: Content{Policies: map[string][]string{"default": {}}, RecipientDeletion: "reject"},
			Auth:    Auth{AuthServID: "box.example.net", RejectDMARC: &yes, Timeout: Duration(10 * time.Second)},
			Attachments: Attachments{Enabled: &yes, MaxDepth: 5, MaxEntries: 10000, MaxUncompressed: 256_000_000, MaxRatio: 200,
				Timeout: Duration(30 * time.Second), Policies: map[string]AttachmentPolicy{"default": {
					Banned: DefaultAttachmentBanned, Action: "reject", Encrypted: "reject", Unopened: "reject", Limits: "reject"}}},

			MaxMailPerSession: 100,
		},
		Queue: Queue{
			Retry: []Duration{
				Duration(time.Minute), Duration(5 * time.Minute), Duration(15 * time.Minute),
				Duration(time.Hour), Duration(4 * time.Hour),
			},
			MaxAge:  Duration(5 * 24 * time.Hour),
			Workers: 100,

			HoldMaxAge: Duration(30 * 24 * time.Hour), HoldMaxSize: 1000 * 1000 * 1000,
			QuarantineMaxAge: Duration(30 * 24 * time.Hour),
			DSNReturnMaxSize: Size(1000 * 1000), MinFreeSpace: Size(75 * 1000 * 1000),
		},
	}
	got := *cfg
	got.Listeners, got.Outbound, got.Path = nil, Outbound{}, ""
	got.idx, got.domainKeys = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", got, want)
	}

	o := cfg.Outbound
	if o.Helo != "box.example.net" || o.MaxConnectionsPerDestination != 20 ||
		o.ConnectTimeout.D() != 30*time.Second || o.CommandTimeout.D() != 5*time.Minute ||
		o.IdleConnectionTimeout == nil || o.IdleConnectionTimeout.D() != 5*time.Second ||
		o.StartTLS != "opportunistic" || o.TLS.Default != "may" || o.TLS.MinVersion != "1.2" || o.TLS.TLSRequiredNo != "ignore" {
		t.Errorf("outbound defaults: %+v (idle %v)", o, o.IdleConnectionTimeout)
	}
	for i, wantAuth := range []string{"off", "required", "optional"} {
		if got := cfg.Listeners[i].Auth; got != wantAuth {
			t.Errorf("listeners[%d].auth = %q, want %q", i, got, wantAuth)
		}
		if cfg.Listeners[i].Limits != cfg.Limits {
			t.Errorf("listeners[%d].limits = %+v, want the global ones", i, cfg.Listeners[i].Limits)
		}
	}
	if cfg.Path != "test.yaml" {
		t.Errorf("Path = %q", cfg.Path)
	}
}

func TestDefaultAuthWithoutUsers(t *testing.T) {
	// Trusted networks and no accounts: AUTH would be offered for nothing.
	cfg := mustParse(t, `
hostname: relay.example.com
listeners: [{name: relay, address: ":25", role: outbound, trusted_networks: [10.0.0.1]}]
`, "/")
	if got := cfg.Listeners[0].Auth; got != "off" {
		t.Errorf("auth = %q, want off", got)
	}
	if got := cfg.Listeners[0].TrustedNetworks; !reflect.DeepEqual(got, []string{"10.0.0.1/32"}) {
		t.Errorf("trusted_networks = %q, want the bare address as a /32", got)
	}
	if got := cfg.Listeners[0].TrustedPrefixes(); len(got) != 1 || got[0].String() != "10.0.0.1/32" {
		t.Errorf("TrustedPrefixes = %v", got)
	}
}

func TestExplicitZeroIdleTimeout(t *testing.T) {
	cfg := mustParse(t, minimal+"outbound: {idle_connection_timeout: 0}\n", "/")
	if cfg.Outbound.IdleConnectionTimeout == nil || *cfg.Outbound.IdleConnectionTimeout != 0 {
		t.Errorf("idle_connection_timeout: 0 must stay 0 (no reuse), got %v", cfg.Outbound.IdleConnectionTimeout)
	}
}

func TestNoResolver(t *testing.T) {
	withMachine(t, "box.example.net", writeFile(t, "resolv.conf", "search example.net\n"))
	cfg := mustParse(t, minimal, "/")
	if cfg.DNS.Resolver != "" {
		t.Errorf("resolver = %q, want empty (serve decides whether it needs one)", cfg.DNS.Resolver)
	}
}

func TestHostnameFromSystem(t *testing.T) {
	const cfg = "listeners: [{name: mx, address: \":25\", role: inbound}]\n"
	withMachine(t, "buildbox", "/nonexistent")
	got := parseErrors(t, cfg)
	want := `test.yaml: hostname: not set, and the system hostname "buildbox" cannot be used: it has no dot; set hostname: to the fully qualified name this relay's IP address resolves to, e.g. mx1.example.com (other mail servers check it)`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	withMachine(t, "", "/nonexistent")
	if got := parseErrors(t, cfg); !strings.HasPrefix(got, "test.yaml: hostname: not set, and the system hostname is unknown") {
		t.Errorf("got %s", got)
	}
}

func TestListenerLimitsInherit(t *testing.T) {
	cfg := mustParse(t, `
hostname: relay.example.com
limits:
  max_message_size: 20MiB
  max_recipients: 50
listeners:
  - name: mx
    address: ":25"
    role: inbound
    limits:
      max_message_size: 100MB
      command_timeout: 1m
      bare_line_endings: normalize
  - {name: mx2, address: ":26", role: inbound}
`, "/")
	g := cfg.Limits
	if g.MaxMessageSize != 20<<20 || g.MaxRecipients != 50 || g.MaxErrors != 10 {
		t.Errorf("global limits: %+v", g)
	}
	l0 := cfg.Listeners[0].Limits
	want := g
	want.MaxMessageSize = 100_000_000
	want.CommandTimeout = Duration(time.Minute)
	want.BareLineEndings = "normalize"
	if l0 != want {
		t.Errorf("listener limits:\n got %+v\nwant %+v", l0, want)
	}
	if cfg.Listeners[1].Limits != g {
		t.Errorf("listener without limits: %+v, want %+v", cfg.Listeners[1].Limits, g)
	}
}

// The per-client limits: a 0 written in the file turns one off (globally
// or for one listener); a key left out inherits.
func TestClientLimitsZeroMeansOff(t *testing.T) {
	cfg := mustParse(t, `
hostname: relay.example.com
limits:
  max_connection_rate_per_client: 0
  max_auth_failures_per_user: 3
listeners:
  - name: mx
    address: ":25"
    role: inbound
    client_limit_exceptions: [192.0.2.7, "2001:db8::1/48"]
    limits: {max_connections_per_client: 0, max_auth_failures_per_user: 0, max_connection_rate_per_client: 60}
  - {name: mx2, address: ":26", role: inbound}
`, "/")
	g := cfg.Limits
	if g.MaxConnectionRatePerClient != 0 || g.MaxAuthFailuresPerUser != 3 || g.MaxConnectionsPerClient != 50 || g.MaxJunkCommands != 100 {
		t.Errorf("global limits: %+v", g)
	}
	l0 := cfg.Listeners[0].Limits
	if l0.MaxConnectionsPerClient != 0 || l0.MaxAuthFailuresPerUser != 0 || l0.MaxConnectionRatePerClient != 60 || l0.MaxMessageRatePerClient != 300 {
		t.Errorf("listener limits: %+v", l0)
	}
	if cfg.Listeners[1].Limits != g {
		t.Errorf("listener without limits: %+v, want the global %+v", cfg.Listeners[1].Limits, g)
	}
	// Unset, the per-client sessions default to at most half a small
	// listener.
	small := mustParse(t, `
hostname: relay.example.com
listeners:
  - {name: mx, address: ":25", role: inbound, limits: {max_connections: 20}}
  - {name: mx2, address: ":26", role: inbound}
`, "/")
	if a, b := small.Listeners[0].Limits.MaxConnectionsPerClient, small.Listeners[1].Limits.MaxConnectionsPerClient; a != 10 || b != 50 {
		t.Errorf("default max_connections_per_client with max_connections 20 and 500: %d and %d, want 10 and 50", a, b)
	}
	if got := cfg.Listeners[0].ClientLimitExceptions; !reflect.DeepEqual(got, []string{"192.0.2.7/32", "2001:db8::/48"}) {
		t.Errorf("client_limit_exceptions = %q, want canonical prefixes", got)
	}
}

func TestRelativePaths(t *testing.T) {
	cfg := mustParse(t, minimal+`
state_dir: spool/../state
tls: {cert: tls/cert.pem, key: /etc/ssl/private/key.pem}
domains:
  a.example: {deliver_to: "maildir:mail/a"}
  b.example: {deliver_to: "maildir:/var/mail/b"}
  c.example: {deliver_to: "smtp://kopano.internal:25"}
`, "/etc/securerelay")
	checks := map[string]string{
		cfg.StateDir:                       "/etc/securerelay/state",
		cfg.TLS.Cert:                       "/etc/securerelay/tls/cert.pem",
		cfg.TLS.Key:                        "/etc/ssl/private/key.pem",
		cfg.Domains["a.example"].DeliverTo: "maildir:/etc/securerelay/mail/a",
		cfg.Domains["b.example"].DeliverTo: "maildir:/var/mail/b",
		cfg.Domains["c.example"].DeliverTo: "smtp://kopano.internal:25",
	}
	for got, want := range checks {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestLoadIsRelativeToTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "conf", "relay.yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(minimal), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "conf", "var"); cfg.StateDir != want {
		t.Errorf("state_dir = %q, want %q", cfg.StateDir, want)
	}
	if cfg.Path != path {
		t.Errorf("Path = %q, want %q", cfg.Path, path)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want a not-exist error", err)
	}
}

func TestDomainNormalisation(t *testing.T) {
	cfg := mustParse(t, minimal+`
domains:
  Example.COM.: {deliver_to: "smtp://kopano.internal:25"}
`, "/")
	if _, ok := cfg.Domains["example.com"]; !ok || len(cfg.Domains) != 1 {
		t.Errorf("domains = %v, want the key example.com", cfg.Domains)
	}
}

// TestIDNNormalisation: every key that names a domain may use U-labels
// or A-labels; the loaded configuration has A-labels only, so that the
// relay compares one form (and DKIM's d= and DNS names are A-labels).
func TestIDNNormalisation(t *testing.T) {
	cfg := mustParse(t, `
hostname: relay.example.com
postmaster: postmaster@MÜLLER.example
listeners:
  - {name: mx, address: ":25", role: inbound}
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8], null_sender: rewrite, null_sender_address: "noreply@bücher.example"}
domains:
  Müller.Example.:
    deliver_to: smtp://kopano.internal:25
    recipients: {list: [jörg, "anna@müller.example", "bob@example.com"]}
  xn--bcher-kva.example: {deliver_to: "smtp://kopano.internal:25"}
  r3--sn-x.example: {deliver_to: "smtp://kopano.internal:25"}
outbound:
  users:
    - name: otrs
      password_hash: "$2y$10$abcdefghijklmnopqrstuuJ1TKt0YLRp8M3w9ZWO6n3Od6/4BGGKy"
      senders: ["@müller.example", "jörg@bücher.example"]
  automatic_senders: ["bot@müller.example", "ticket-bot"]
  routes:
    - {match: .bücher.example, next_hop: "smtp://relay.internal:25"}
    - {match: "*", next_hop: "smtp://relay.internal:25"}
  tls:
    policies:
      - {match: partner.example, level: verify, names: [".mx.bücher.example"]}
      - {match: "[mx.bücher.example]", level: encrypt}
      - {match: .日本.jp, level: encrypt}
`, "/")
	var doms []string
	for d := range cfg.Domains {
		doms = append(doms, d)
	}
	sort.Strings(doms)
	if want := []string{"r3--sn-x.example", "xn--bcher-kva.example", "xn--mller-kva.example"}; !reflect.DeepEqual(doms, want) {
		t.Errorf("domains = %v, want %v", doms, want)
	}
	if got := cfg.DomainPath("xn--mller-kva.example"); got != "domains.Müller.Example." {
		t.Errorf("DomainPath = %q, want the key as written", got)
	}
	if got := cfg.Domains["xn--mller-kva.example"].Recipients.List; !reflect.DeepEqual(got, []string{"jörg", "anna@xn--mller-kva.example", "bob@example.com"}) {
		t.Errorf("recipients = %q", got)
	}
	for _, c := range []struct{ got, want string }{
		{cfg.Postmaster, "postmaster@xn--mller-kva.example"},
		{cfg.Listeners[1].NullSenderAddress, "noreply@xn--bcher-kva.example"},
		{strings.Join(cfg.Outbound.Users[0].Senders, " "), "@xn--mller-kva.example jörg@xn--bcher-kva.example"},
		{strings.Join(cfg.Outbound.AutomaticSenders, " "), "bot@xn--mller-kva.example ticket-bot"},
		{cfg.Outbound.Routes[0].Match, ".xn--bcher-kva.example"},
		{cfg.Outbound.Routes[1].Match, "*"},
		{cfg.Outbound.TLS.Policies[0].Names[0], ".mx.xn--bcher-kva.example"},
		{cfg.Outbound.TLS.Policies[1].Match, "[mx.xn--bcher-kva.example]"},
		{cfg.Outbound.TLS.Policies[2].Match, ".xn--wgv71a.jp"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestAnchorsAndMerge(t *testing.T) {
	cfg := mustParse(t, `
hostname: relay.example.com
listeners:
  - &base {name: mx, address: ":25", role: inbound, limits: {max_recipients: 7}}
  - <<: *base
    name: mx2
    address: ":2525"
`, "/")
	if l := cfg.Listeners[1]; l.Name != "mx2" || l.Role != "inbound" || l.Limits.MaxRecipients != 7 {
		t.Errorf("merged listener: %+v", l)
	}
	// A mistake inside a merged mapping is reported where it is written.
	got := parseErrors(t, `
hostname: relay.example.com
listeners:
  - &base {name: mx, address: ":25", role: inbound, colour: blue}
  - <<: *base
    name: mx2
`)
	if !strings.HasPrefix(got, "test.yaml:4: listeners[0].colour: unknown key") {
		t.Errorf("got:\n%s", got)
	}
}

func TestSeveralMistakesOnOneLine(t *testing.T) {
	got := parseErrors(t, `
hostname: relay.example.com
listeners: [{name: a, address: ":25", role: inbound, port: 1}, {name: b, address: ":26", role: inbound, port: 2}]
queue: {retry: [1m, 1x, 2x], max_age: 1y}
`)
	want := `test.yaml:3: listeners[0].port: unknown key; valid keys here: name, address, role, trusted_networks, auth, allow_insecure_auth, require_tls, foreign_from, null_sender, null_sender_address, limits, client_limit_exceptions, dsn
test.yaml:3: listeners[1].port: unknown key; valid keys here: name, address, role, trusted_networks, auth, allow_insecure_auth, require_tls, foreign_from, null_sender, null_sender_address, limits, client_limit_exceptions, dsn
test.yaml:4: queue.retry[1]: invalid duration "1x": unknown unit "x"; use s, m, h or d (also ms), e.g. 30s, 5m, 1h30m, 5d
test.yaml:4: queue.retry[2]: invalid duration "2x": unknown unit "x"; use s, m, h or d (also ms), e.g. 30s, 5m, 1h30m, 5d
test.yaml:4: queue.max_age: invalid duration "1y": unknown unit "y"; use s, m, h or d (also ms), e.g. 30s, 5m, 1h30m, 5d`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestDroppedListItemKeepsIndexes(t *testing.T) {
	// yaml.v3 drops the undecodable retry[0]; the bad retry[2] must still
	// be reported under its own index and line.
	got := parseErrors(t, minimal+`
queue:
  retry:
    - soon
    - 5m
    - -1h
`)
	want := `test.yaml:8: queue.retry[0]: invalid duration "soon": expected a number followed by a unit, e.g. 30s, 5m, 1h30m, 5d
test.yaml:10: queue.retry[2]: must be a positive delay, e.g. 5m`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestSecondDocument(t *testing.T) {
	got := parseErrors(t, minimal+"---\nhostname: other.example.com\n")
	if !strings.HasPrefix(got, "test.yaml:5: a second YAML document") {
		t.Errorf("got %s", got)
	}
}

func TestPathIsNotAKey(t *testing.T) {
	got := parseErrors(t, minimal+"path: /etc/x.yaml\n")
	if !strings.HasPrefix(got, "test.yaml:5: path: unknown key") {
		t.Errorf("got %s", got)
	}
}

func TestErrorFormat(t *testing.T) {
	errs := Errors{
		{File: "c.yaml", Line: 3, Key: "listeners[1].role", Msg: "bad"},
		{File: "c.yaml", Line: 7, Msg: "YAML syntax error: x"},
		{File: "c.yaml", Key: "listeners", Msg: "none"},
	}
	want := "c.yaml:3: listeners[1].role: bad\nc.yaml:7: YAML syntax error: x\nc.yaml: listeners: none"
	if got := errs.Error(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// Sender binding: the default is domains; login with a user whose name is
// no address is refused at the name when the global switch says login.
func TestSenderBindingKeys(t *testing.T) {
	const head = `
hostname: relay.example.com
listeners: [{name: sub, address: ":587", role: outbound}]
outbound:
`
	const hash = `"$2a$10$2i/uRSSVtsw9SFVyBdYQkuTX9YP46UVMoLgXaI5p0vehZ8UPWr5gu"`
	cfg := mustParse(t, head+`  users: [{name: otrs, password_hash: `+hash+`, senders: [otrs@example.com, "@support.example.com"]}]
`, "/")
	if cfg.Outbound.SenderBinding != "domains" || !reflect.DeepEqual(cfg.Outbound.Users[0].Senders, []string{"otrs@example.com", "@support.example.com"}) {
		t.Errorf("sender_binding %q, senders %q", cfg.Outbound.SenderBinding, cfg.Outbound.Users[0].Senders)
	}
	mustParse(t, head+`  sender_binding: login
  users: [{name: bob@example.com, password_hash: `+hash+`}, {name: otrs, password_hash: `+hash+`, senders: [otrs@example.com]}]
`, "/")
	got := parseErrors(t, head+`  sender_binding: login
  users:
    - {name: otrs, password_hash: `+hash+`}
`)
	if !strings.Contains(got, "test.yaml:7: outbound.users[0].name: \"otrs\" is not an address, and sender_binding is login") {
		t.Errorf("errors:\n%s", got)
	}
}

func TestDNSCacheZeroMeansOff(t *testing.T) {
	if cfg := mustParse(t, minimal+"dns: {cache_size: 0}\n", "/"); cfg.DNS.CacheSize != 0 {
		t.Errorf("cache_size: 0 must stay 0 (no cache), got %d", cfg.DNS.CacheSize)
	}
}
