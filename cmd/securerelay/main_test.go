package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsageAndUnknownCommand(t *testing.T) {
	if code, _, errOut := runCLI(); code != 2 || !strings.Contains(errOut, "usage:") {
		t.Errorf("no arguments: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI("frobnicate"); code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI("serve"); code != 2 || !strings.Contains(errOut, "--config FILE is required") {
		t.Errorf("serve without --config: exit %d, stderr %q", code, errOut)
	}
	if code, out, _ := runCLI("version"); code != 0 || !strings.HasPrefix(out, "securerelay ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

func TestCheckConfig(t *testing.T) {
	code, out, errOut := runCLI("check-config", "--config", "../../config.example.yaml")
	if code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("example config: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("hostname: relay.example.test\nlisteners:\n  - name: mx\n    address: \"127.0.0.1:2525\"\n    role: sideways\n    colour: blue\n"), 0o600)
	code, _, errOut = runCLI("check-config", "--config", bad)
	if code != 1 {
		t.Fatalf("bad config: exit %d, want 1; stderr %q", code, errOut)
	}
	for _, want := range []string{bad + ":5: listeners[0].role:", bad + ":6: listeners[0].colour:"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

func TestQueueCountOnEmptySpool(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "c.yaml")
	os.WriteFile(conf, []byte("hostname: relay.example.test\nstate_dir: "+dir+"\nlisteners:\n  - {name: mx, address: \"127.0.0.1:0\", role: inbound}\ndomains:\n  example.test: {deliver_to: \"maildir:"+dir+"/mail\"}\n"), 0o600)
	if code, out, errOut := runCLI("queue", "count", "--config", conf); code != 0 || strings.TrimSpace(out) != "0" {
		t.Errorf("queue count: exit %d, %q, %q", code, out, errOut)
	}
}

// A DKIM key file that cannot be used is a configuration error with its
// position, in check-config as at start, never an unsigned send later.
func TestCheckConfigBadDKIMKey(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bad.key"), []byte("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"), 0o600)
	conf := filepath.Join(dir, "c.yaml")
	os.WriteFile(conf, []byte("hostname: relay.example.test\nstate_dir: "+dir+"\nlisteners:\n  - {name: mx, address: \"127.0.0.1:0\", role: inbound}\ndomains:\n  example.test:\n    dkim:\n      - {selector: s1, key: bad.key}\n      - {selector: s2, key: missing.key}\n"), 0o600)
	code, _, errOut := runCLI("check-config", "--config", conf)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q", code, errOut)
	}
	for _, want := range []string{conf + ":8: domains.example.test.dkim[0].key: ", "bad.key", conf + ":9: domains.example.test.dkim[1].key: ", "missing.key"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

// A warning about a key the file does not set (a defaulted postmaster)
// names the file and the key, not a line 0.
func TestCheckConfigDefaultedKeyWarning(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "c.yaml")
	os.WriteFile(conf, []byte("hostname: relay.example.test\nstate_dir: "+dir+"\nlisteners:\n  - {name: mx, address: \"127.0.0.1:0\", role: inbound}\ndomains:\n  example.test: {deliver_to: \"maildir:"+dir+"/mail\"}\n"), 0o600)
	code, _, errOut := runCLI("check-config", "--config", conf)
	if want := "warning: " + conf + ": postmaster: postmaster@relay.example.test is not in a domain"; code != 0 || !strings.Contains(errOut, want) {
		t.Errorf("exit %d, stderr %q; want it to contain %q", code, errOut, want)
	}
}
