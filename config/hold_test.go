package config

import (
	"strings"
	"testing"
)

func warnings(cfg *Config) string {
	var b strings.Builder
	for _, w := range cfg.Warnings() {
		b.WriteString(w.Error() + "\n")
	}
	return b.String()
}

// An inbound domain that accepts every local part and delivers to a system
// that can refuse them after our 250 fills spool/hold (issue 11, finding
// 6): check-config says so, at the domain, and nowhere else.
func TestWarnAcceptAllDomain(t *testing.T) {
	cfg := mustParse(t, `hostname: relay.example.com
listeners:
  - {name: mx, address: ":25", role: inbound}
domains:
  Open.Example:
    deliver_to: smtp://kopano.internal:25
  listed.example:
    deliver_to: lmtp://dovecot.internal:24
    recipients: {list: [bob]}
  verified.example:
    deliver_to: smtp://kopano.internal:25
    recipients: {verify: true}
  emptylist.example:
    deliver_to: lmtp://dovecot.internal:24
    recipients: {list: []}
  mailbox.example:
    deliver_to: "maildir:/var/mail"
  sendonly.example:
    dkim: [{selector: s1, key: /k}]
`, "/")
	got := warnings(cfg)
	want := []string{
		"test.yaml:5: domains.Open.Example: open.example accepts every local part (it has no recipients list, file or verify): what smtp://kopano.internal:25 refuses after our 250 cannot be bounced and waits in spool/hold until queue.hold_max_age or queue.hold_max_size deletes it",
		"test.yaml:15: domains.emptylist.example.recipients: emptylist.example accepts every local part",
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != len(want) {
		t.Fatalf("warnings:\n%s\nwant %d", got, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("warning %d:\n%s\nwant it to start with\n%s", i, lines[i], w)
		}
		if !strings.Contains(lines[i], "set recipients: {verify: true} or list the recipients") {
			t.Errorf("warning %d does not say what to do: %s", i, lines[i])
		}
	}

	// unknown_recipient: off makes a list accept everybody too.
	cfg = mustParse(t, `hostname: relay.example.com
listeners:
  - {name: mx, address: ":25", role: inbound}
inbound:
  checks: {unknown_recipient: "off"}
domains:
  listed.example: {deliver_to: "smtp://kopano.internal:25", recipients: {list: [bob]}}
`, "/")
	if got := warnings(cfg); !strings.HasPrefix(got, "test.yaml:5: inbound.checks.unknown_recipient: listed.example accepts every local part (inbound.checks.unknown_recipient is off)") ||
		!strings.HasSuffix(got, "; set inbound.checks.unknown_recipient: reject\n") {
		t.Errorf("unknown_recipient off: %q", got)
	}

	// Without an inbound listener nobody outside can send to it.
	cfg = mustParse(t, `hostname: relay.example.com
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
domains:
  open.example: {deliver_to: "smtp://kopano.internal:25"}
`, "/")
	if got := warnings(cfg); got != "" {
		t.Errorf("no inbound listener, yet: %s", got)
	}
}

// The quick start's example stays free of warnings: its domain delivers to
// a maildir, which creates every mailbox.
func TestExampleConfigHasNoWarnings(t *testing.T) {
	cfg, err := Load("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := warnings(cfg); got != "" {
		t.Errorf("config.example.yaml warns:\n%s", got)
	}
}

func TestHoldLimits(t *testing.T) {
	cfg := mustParse(t, minimal+"queue: {hold_max_age: 7d, hold_max_size: 200MB, quarantine_max_age: 2d}\n", "/")
	if q := cfg.Queue; q.HoldMaxAge.String() != "7d" || q.HoldMaxSize.String() != "200MB" || q.QuarantineMaxAge.String() != "2d" {
		t.Errorf("queue = %+v", q)
	}
	got := parseErrors(t, minimal+`limits: {max_message_size: 20MB}
queue:
  hold_max_age: -1h
  hold_max_size: 10MB
  quarantine_max_age: -1d
`)
	for _, want := range []string{
		"test.yaml:7: queue.hold_max_age: must be positive, e.g. 30s or 5m (0 or leaving it out means the default, 30d)",
		"test.yaml:8: queue.hold_max_size: 10MB is less than limits.max_message_size (20MB): a held message of that size would be deleted the moment it is held; raise it",
		"test.yaml:9: queue.quarantine_max_age: must be positive",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors lack %q:\n%s", want, got)
		}
	}
	// A listener's larger limit counts.
	got = parseErrors(t, `hostname: relay.example.com
listeners:
  - {name: mx, address: ":25", role: inbound, limits: {max_message_size: 2GB}}
`)
	if !strings.Contains(got, "queue.hold_max_size: 1GB is less than listeners[0].limits.max_message_size (2GB)") {
		t.Errorf("errors: %s", got)
	}
}
