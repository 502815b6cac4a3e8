package main

import (
	"os"
	"path/filepath"
	"testing"

	"securerelay/config"
)

// RCPT TO:<Postmaster> is routed to the postmaster only when one of our
// domains delivers that address; otherwise the bare form is refused
// rather than accepted and then held or relayed.
func TestServedPostmaster(t *testing.T) {
	for _, c := range []struct{ postmaster, want string }{
		{"postmaster@example.test", "postmaster@example.test"},
		{"PostMaster@Example.Test", "PostMaster@Example.Test"},
		{"postmaster@relay.example", ""}, // the host name, not a domain of ours
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "c.yaml")
		os.WriteFile(path, []byte(`hostname: relay.example
postmaster: `+c.postmaster+`
listeners: [{name: mx, address: "127.0.0.1:2525", role: inbound}]
domains:
  example.test: {deliver_to: "maildir:`+dir+`/mail"}
`), 0o600)
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("%s: %v", c.postmaster, err)
		}
		if got := servedPostmaster(cfg); got != c.want {
			t.Errorf("postmaster %s: %q, want %q", c.postmaster, got, c.want)
		}
	}
}
