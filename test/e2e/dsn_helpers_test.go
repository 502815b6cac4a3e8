package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os/exec"
	"testing"
	"time"
)

// Sendmail hands msg to the instance's sendmail with args (-f, -N, -V,
// -R, recipients), as a local program submits mail.
func (p *postfixInstance) Sendmail(t *testing.T, msg []byte, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sendmail", append([]string{"-C", p.conf}, args...)...)
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("postfix sendmail %v: %v\n%s\n%s", args, err, out, p.Log())
	}
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
	ReturnedBody string              `json:"returned_body"`
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
       "text": parts[0].get_content(), "per_message": {}, "recipients": [], "third_part": "", "returned_subject": "", "returned_body": ""}
ds = [p for p in parts if p.get_content_type() == "message/delivery-status"][0]
groups = ds.get_payload()
out["per_message"] = {k: str(v) for k, v in groups[0].items()}
out["recipients"] = [{k: str(v) for k, v in g.items()} for g in groups[1:]]
if len(parts) > 2:
    out["third_part"] = parts[2].get_content_type()
    if parts[2].get_content_type() == "message/rfc822":
        out["returned_subject"] = str(parts[2].get_payload()[0]["Subject"])
        rm = parts[2].get_payload()[0]
        if rm.get_content_maintype() == "text":
            out["returned_body"] = rm.get_content()
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
