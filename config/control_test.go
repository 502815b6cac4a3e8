package config

import (
	"strings"
	"testing"
)

// queue.control_group must name a group of this host; an existing one
// loads.
func TestControlGroup(t *testing.T) {
	got := parseErrors(t, `hostname: relay.example.com
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
queue:
  control_group: no-such-group-e2e
`)
	if want := `test.yaml:5: queue.control_group: "no-such-group-e2e": no such group on this host`; !strings.HasPrefix(got, want) || !strings.Contains(got, "groupadd no-such-group-e2e") {
		t.Errorf("errors:\n%s\nwant %s…", got, want)
	}
	cfg := mustParse(t, `hostname: relay.example.com
listeners:
  - {name: sub, address: ":587", role: outbound, trusted_networks: [10.0.0.0/8]}
queue:
  control_group: root
`, "/")
	if cfg.Queue.ControlGroup != "root" {
		t.Errorf("control_group = %q", cfg.Queue.ControlGroup)
	}
}
