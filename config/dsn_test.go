package config

import (
	"strings"
	"testing"
)

// DSN is offered on outbound listeners and not on inbound ones unless the
// listener says so; the queue's DSN settings have their defaults.
func TestDSNDefaults(t *testing.T) {
	cfg := mustParse(t, `hostname: relay.example.com
listeners:
  - {name: mx, address: ":25", role: inbound}
  - {name: mx2, address: ":2525", role: inbound, dsn: true}
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
  - {name: sub2, address: ":588", role: outbound, trusted_networks: [10.0.0.0/8], dsn: false}
domains:
  example.com: {deliver_to: "smtp://kopano.internal:25", recipients: {list: [bob]}}
`, "/")
	var got []bool
	for _, l := range cfg.Listeners {
		got = append(got, *l.DSN)
	}
	if len(got) != 4 || got[0] || !got[1] || !got[2] || got[3] {
		t.Errorf("dsn per listener = %v, want [false true true false]", got)
	}
	if cfg.Queue.DelayWarningTime != 0 || cfg.Queue.DSNReturnMaxSize != DefaultDSNReturnMaxSize {
		t.Errorf("delay_warning_time %v, dsn_return_max_size %v", cfg.Queue.DelayWarningTime, cfg.Queue.DSNReturnMaxSize)
	}
}

func TestDSNQueueChecks(t *testing.T) {
	got := parseErrors(t, `hostname: relay.example.com
queue:
  delay_warning_time: -1h
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
`)
	if want := "test.yaml:3: queue.delay_warning_time: must not be negative; 0 or leaving it out sends no delay notices, 4h sends one after four hours\n"; got+"\n" != want {
		t.Errorf("errors:\n%s\nwant:\n%s", got, want)
	}
	cfg := mustParse(t, `hostname: relay.example.com
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
queue:
  max_age: 2d
  delay_warning_time: 2d
`, "/")
	if w := warnings(cfg); !strings.HasPrefix(w, "test.yaml:6: queue.delay_warning_time: 2d is not less than queue.max_age (2d)") {
		t.Errorf("warnings: %q", w)
	}
}
