package config

import (
	"strings"
	"testing"
)

func TestParseNextHop(t *testing.T) {
	for _, tc := range []struct{ in, scheme, hostport string }{
		{"smtp://mail.isp.example:587", "smtp", "mail.isp.example:587"},
		{"lmtp://10.0.0.7:24", "lmtp", "10.0.0.7:24"},
		{"SMTP://[2001:db8::1]:25", "smtp", "[2001:db8::1]:25"},
		{"smtp://relay.example:25/", "smtp", "relay.example:25"},
	} {
		s, hp, err := ParseNextHop(tc.in)
		if err != nil || s != tc.scheme || hp != tc.hostport {
			t.Errorf("ParseNextHop(%q) = %q, %q, %v", tc.in, s, hp, err)
		}
	}
	for _, in := range []string{
		"", "mail.isp.example:587", "smtp://mail.isp.example", "smtps://x:465",
		"smtp://user@x:25", "smtp://x:25/path", "smtp://x:0", "smtp://x:smtp",
		"smtp://:25", "maildir:/var/mail", "smtp://2001:db8::1:25", "smtp://exa_mple:25",
	} {
		if s, hp, err := ParseNextHop(in); err == nil {
			t.Errorf("ParseNextHop(%q) = %q, %q; want an error", in, s, hp)
		}
	}
}

func TestParseDeliverTo(t *testing.T) {
	for _, tc := range []struct{ in, scheme, target string }{
		{"smtp://kopano.internal:25", "smtp", "kopano.internal:25"},
		{"lmtp://dovecot.internal:24", "lmtp", "dovecot.internal:24"},
		{"maildir:/var/mail/example.com", "maildir", "/var/mail/example.com"},
		{"maildir:relative/dir", "maildir", "relative/dir"},
	} {
		s, target, err := ParseDeliverTo(tc.in)
		if err != nil || s != tc.scheme || target != tc.target {
			t.Errorf("ParseDeliverTo(%q) = %q, %q, %v", tc.in, s, target, err)
		}
	}
	for _, in := range []string{"", "maildir:", "kopano.internal:25", "/var/mail", "file:/x", "smtp://kopano"} {
		if s, target, err := ParseDeliverTo(in); err == nil {
			t.Errorf("ParseDeliverTo(%q) = %q, %q; want an error", in, s, target)
		}
	}
	// The message must show the fix.
	_, _, err := ParseDeliverTo("kopano.internal:25")
	if err == nil || !strings.Contains(err.Error(), "smtp://kopano.internal:25") {
		t.Errorf("no hint in %v", err)
	}
}

func TestCheckDomainName(t *testing.T) {
	for _, ok := range []string{"example.com", "mx-1.example.co.uk", "xn--bcher-kva.example", "localhost"} {
		if err := checkDomainName(ok, false); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a.example", "a..example", ".example", "example.", "a_b.example", "bücher.example", "192.0.2.1", strings.Repeat("a", 64) + ".example"} {
		if err := checkDomainName(bad, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, bad := range []string{"localhost", "host.123"} {
		if err := checkDomainName(bad, true); err == nil {
			t.Errorf("%q accepted as fully qualified", bad)
		}
	}
}

func TestRoutesNormalisedAndValid(t *testing.T) {
	cfg := mustParse(t, minimal+`
outbound:
  routes:
    - {match: Partner.Example., next_hop: "smtp://mx.partner.example:25"}
    - {match: .partner.example, next_hop: "lmtp://10.0.0.1:24", auth: {username: u, password: p}}
    - {match: "*", next_hop: "smtp://smtp.isp.example:587"}
`, "/")
	if got := cfg.Outbound.Routes[0].Match; got != "partner.example" {
		t.Errorf("match = %q", got)
	}
}

// A rule that encrypts but whose key sources can never give a key (no
// pins; keyring, WKD and OPENPGPKEY off or not listed) reads as
// encryption and acts as defer: check-config says so, at the rule.
func TestWarnEncryptionWithoutKeySource(t *testing.T) {
	cfg := mustParse(t, `hostname: relay.example.com
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
outbound:
  encryption: {wkd: false}
  tls:
    policies:
      - {match: defaults.example, level: verify, fallback: encrypt}
      - {match: pinned.example, level: verify, encrypt: always, key_sources: [pinned]}
`, "/")
	got := strings.Split(strings.TrimSpace(warnings(cfg)), "\n")
	want := []string{
		"test.yaml:8: outbound.tls.policies[0].fallback: no source can give a key for this rule",
		"test.yaml:9: outbound.tls.policies[1].key_sources: no source can give a key for this rule",
	}
	if len(got) != len(want) {
		t.Fatalf("warnings:\n%s\nwant %d", strings.Join(got, "\n"), len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("warning %d:\n%s\nwant it to start with\n%s", i, got[i], w)
		}
	}
	// WKD on (the default), or a key pinned: no warning.
	cfg = mustParse(t, `hostname: relay.example.com
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
outbound:
  tls:
    policies:
      - {match: defaults.example, level: verify, fallback: encrypt}
`, "/")
	if w := warnings(cfg); w != "" {
		t.Errorf("with WKD on: %s", w)
	}
}
