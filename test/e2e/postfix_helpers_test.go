package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"securerelay/internal/loopback"
)

// ---------------------------------------------------------------------------
// A private Postfix instance on loopback, as the relay's next hop or
// previous hop (the setup of /work/shared/bench/setup-postfix.sh, reduced
// to what these tests need).

type postfixOptions struct {
	// RelayHost is host:port where the instance sends all mail.
	RelayHost string
	// Discard is smtpd_discard_ehlo_keywords ("8bitmime, dsn"): what its
	// smtpd does not offer.
	Discard string
}

type postfixInstance struct {
	Addr string // its smtpd, 127.0.0.1:PORT
	dir  string
}

// startPostfix runs a Postfix instance with its own configuration and
// queue in a temporary directory; it is stopped when the test ends.
// Postfix's master must start as root (it drops to the postfix user).
func startPostfix(t *testing.T, o postfixOptions) *postfixInstance {
	t.Helper()
	requireTool(t, "postfix")
	if os.Geteuid() != 0 {
		skipOrFail(t, "a private Postfix instance needs root (postfix start)")
	}
	// Not t.TempDir(): the postfix user must reach the queue, and
	// t.TempDir's parent is private to root.
	dir, err := os.MkdirTemp("", "securerelay-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	p := &postfixInstance{Addr: fmt.Sprintf("127.0.0.1:%d", loopback.Port(t)), dir: dir}
	for _, d := range []string{"etc", "queue", "data", "log"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	writeFile(t, filepath.Join(dir, "etc", "main.cf"), fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
maillog_file_prefixes = %[1]s
maillog_file = %[1]s/log/maillog
myhostname = postfix.e2e.test
mydomain = e2e.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relay_domains =
relayhost = [%[2]s]:%[3]s
smtpd_relay_restrictions = permit_mynetworks, reject
local_recipient_maps =
alias_maps =
alias_database =
# The relay connects from 127.0.0.1, an inet_interfaces address: without
# this Postfix would rewrite its header addresses as a local client's.
local_header_rewrite_clients =
smtpd_discard_ehlo_keywords = %[4]s
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Retry the relay soon when it is not up yet.
minimal_backoff_time = 2s
maximal_backoff_time = 4s
queue_run_delay = 2s
`, dir, hostOf(o.RelayHost), portOf(o.RelayHost), o.Discard))
	writeFile(t, filepath.Join(dir, "etc", "master.cf"), p.Addr+` inet n - n - - smtpd
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`)
	for _, args := range [][]string{{"set-permissions"}, {"check"}, {"start"}} {
		if out, err := p.run(append([]string{"postfix", "-c", filepath.Join(dir, "etc")}, args...)...); err != nil {
			t.Fatalf("postfix %s: %v\n%s\n%s", args[0], err, out, p.Log())
		}
	}
	t.Cleanup(func() {
		p.run("postfix", "-c", filepath.Join(dir, "etc"), "stop")
		// postfix stop signals the master by its pid file; wait (bounded)
		// until it has gone, then remove the instance.
		pidFile := filepath.Join(dir, "queue", "pid", "master.pid")
		for i := 0; i < 100; i++ {
			b, err := os.ReadFile(pidFile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid == 0 || exec.Command("kill", "-0", strconv.Itoa(pid)).Run() != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if t.Failed() {
			t.Logf("postfix log:\n%s", p.Log())
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.Addr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix not listening on %s: %v\n%s", p.Addr, err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *postfixInstance) run(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
}

// Sendmail hands msg to the instance's sendmail with args (-f, -N, -V,
// -R, recipients), as a local program submits mail.
func (p *postfixInstance) Sendmail(t *testing.T, msg []byte, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sendmail", append([]string{"-C", filepath.Join(p.dir, "etc")}, args...)...)
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("postfix sendmail %v: %v\n%s\n%s", args, err, out, p.Log())
	}
}

// Log is the instance's mail log.
func (p *postfixInstance) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "log", "maillog"))
	return string(b)
}

func hostOf(hp string) string { h, _, _ := net.SplitHostPort(hp); return h }
func portOf(hp string) string { _, p, _ := net.SplitHostPort(hp); return p }

// ---------------------------------------------------------------------------
// Python's smtplib as a client, and its email package as a DSN reader.

type pyRcpt struct {
	To   string   `json:"to"`
	Opts []string `json:"opts"`
}

// pySend runs one transaction with smtplib: EHLO, MAIL with mailOpts, the
// recipients with theirs, DATA if one was accepted. It returns each reply
// as "CODE TEXT" (the text begins with the enhanced status code), in
// order.
func pySend(t *testing.T, addr, from string, mailOpts []string, rcpts []pyRcpt, data []byte) []string {
	t.Helper()
	requireTool(t, "python3")
	spec, _ := json.Marshal(map[string]any{"host": hostOf(addr), "port": portOf(addr), "from": from,
		"mail_opts": mailOpts, "rcpts": rcpts, "data": base64.StdEncoding.EncodeToString(data)})
	const script = `
import base64, json, smtplib, sys
spec = json.load(sys.stdin)
s = smtplib.SMTP(spec["host"], int(spec["port"]), local_hostname="client.e2e.test", timeout=20)
s.ehlo()
out = []
code, msg = s.mail(spec["from"], spec["mail_opts"] or [])
out.append("%d %s" % (code, msg.decode()))
if code == 250:
    ok = False
    for r in spec["rcpts"]:
        code, msg = s.rcpt(r["to"], r["opts"] or [])
        out.append("%d %s" % (code, msg.decode()))
        ok = ok or code == 250
    if ok:
        code, msg = s.data(base64.b64decode(spec["data"]))
        out.append("%d %s" % (code, msg.decode()))
s.quit()
print(json.dumps(out))
`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", "-c", script)
	cmd.Stdin = bytes.NewReader(spec)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("smtplib: %v\n%s%s", err, out, stderr)
	}
	var replies []string
	if err := json.Unmarshal(out, &replies); err != nil {
		t.Fatalf("smtplib output %q: %v", out, err)
	}
	return replies
}

// pyDSN is a DSN as Python's email package reads it.
type pyDSN struct {
	Type         string              `json:"type"`
	ReportType   string              `json:"report_type"`
	Subject      string              `json:"subject"`
	PerMessage   map[string]string   `json:"per_message"`
	Recipients   []map[string]string `json:"recipients"`
	ThirdPart    string              `json:"third_part"`
	ReturnedSubj string              `json:"returned_subject"`
	Text         string              `json:"text"`
}

// readDSN parses msg with Python's email package (the default policy, as
// a script or a MUA built on it would).
func readDSN(t *testing.T, msg []byte) pyDSN {
	t.Helper()
	requireTool(t, "python3")
	const script = `
import email, json, sys
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
parts = list(m.iter_parts())
out = {"type": m.get_content_type(), "report_type": m.get_param("report-type"), "subject": str(m["Subject"]),
       "text": parts[0].get_content(), "per_message": {}, "recipients": [], "third_part": "", "returned_subject": ""}
ds = [p for p in parts if p.get_content_type() == "message/delivery-status"][0]
groups = ds.get_payload()
out["per_message"] = {k: str(v) for k, v in groups[0].items()}
out["recipients"] = [{k: str(v) for k, v in g.items()} for g in groups[1:]]
if len(parts) > 2:
    out["third_part"] = parts[2].get_content_type()
    if parts[2].get_content_type() == "message/rfc822":
        out["returned_subject"] = str(parts[2].get_payload()[0]["Subject"])
print(json.dumps(out))
`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", "-c", script)
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python email: %v\n%s\n%s", err, out, msg)
	}
	var d pyDSN
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	return d
}
