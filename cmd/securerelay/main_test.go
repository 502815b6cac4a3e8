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
