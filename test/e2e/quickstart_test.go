package e2e

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const exampleConfig = "../../config.example.yaml"

// waitPortFree waits until addr can be bound: the quick start uses the fixed
// ports of config.example.yaml, which another test run may hold briefly.
func waitPortFree(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			l.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is in use by another process; the quick start needs it: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestQuickStart follows README.md's quick start on a copy of
// config.example.yaml that differs only in state_dir.
func TestQuickStart(t *testing.T) {
	requireTool(t, "swaks")
	src, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "var")
	re := regexp.MustCompile(`(?m)^state_dir: .*$`)
	if n := len(re.FindAllIndex(src, -1)); n != 1 {
		t.Fatalf("config.example.yaml has %d top-level state_dir lines, want 1", n)
	}
	cfgText := re.ReplaceAllLiteralString(string(src), "state_dir: "+state)
	cfg := filepath.Join(dir, "config.yaml")
	writeFile(t, cfg, cfgText)

	waitPortFree(t, "127.0.0.1:2525")
	waitPortFree(t, "127.0.0.1:2587")
	startRelay(t, cfg, "127.0.0.1:2525", "127.0.0.1:2587")

	res := mustSend(t, "--server", "127.0.0.1:2525", "--from", "alice@example.org", "--to", "bob@example.test",
		"--header", "Subject: e2e quick start")
	// deliver_to is maildir:./var/mail, relative to the config file, which
	// is <state>/mail here.
	msgs := waitMaildir(t, filepath.Join(state, "mail"), "bob@example.test", 1, 5*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("%d messages in the maildir, want 1", len(msgs))
	}
	if !hasHeader(msgs[0], "Received") {
		t.Errorf("delivered message has no Received: header:\n%s", msgs[0])
	}
	if !strings.Contains(headerSection(msgs[0]), "id "+res.QueueID()) {
		t.Errorf("Received: header does not name queue ID %s:\n%s", res.QueueID(), headerSection(msgs[0]))
	}
	if !strings.Contains(string(msgs[0]), "Subject: e2e quick start") {
		t.Errorf("delivered message lost its Subject:\n%s", msgs[0])
	}

	// The spool entry is removed right after the maildir write; give it a
	// moment, then queue count must say 0.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, errOut, code := runRelayCmd(t, "queue", "count", "--config", cfg)
		if code != 0 {
			t.Fatalf("queue count: exit %d: %s%s", code, out, errOut)
		}
		if strings.TrimSpace(out) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue count prints %q 5s after delivery, want 0", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, errOut, code := runRelayCmd(t, "queue", "list", "--config", cfg); code != 0 || !strings.Contains(out, "QUEUE ID") {
		t.Errorf("queue list: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestCheckConfigExample(t *testing.T) {
	out, errOut, code := runRelayCmd(t, "check-config", "--config", exampleConfig)
	if code != 0 {
		t.Fatalf("check-config %s: exit %d\nstdout: %s\nstderr: %s", exampleConfig, code, out, errOut)
	}
	if !strings.Contains(out, "OK") {
		t.Errorf("check-config stdout = %q, want it to say OK", out)
	}
}

func TestCheckConfigBad(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	// Line numbers matter: the errors must point at lines 7, 10 and 12.
	writeFile(t, cfg, `hostname: relay.localhost
state_dir: ./var
listeners:
  - name: mx
    address: "127.0.0.1:2525"
    role: inbound
    colour: blue
domains:
  example.test:
    deliver_to: "nowhere"
queue:
  max_age: 5
`)
	out, errOut, code := runRelayCmd(t, "check-config", "--config", cfg)
	if code == 0 {
		t.Fatalf("check-config on a bad file exits 0\nstdout: %s\nstderr: %s", out, errOut)
	}
	lineRe := regexp.MustCompile(`^` + regexp.QuoteMeta(cfg) + `:(\d+): ([A-Za-z0-9_.\[\]-]+): \S.*$`)
	lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
	got := map[string]string{}
	for _, l := range lines {
		m := lineRe.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("stderr line not in the form FILE:LINE: key: what is wrong: %q", l)
			continue
		}
		got[m[1]] = m[2]
	}
	for line, key := range map[string]string{"7": "listeners[0].colour", "10": "domains.example.test.deliver_to", "12": "queue.max_age"} {
		if got[line] != key {
			t.Errorf("no error for line %s key %s; got %v\nstderr:\n%s", line, key, got, errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	out, errOut, code := runRelayCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "securerelay ") {
		t.Fatalf("version: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
