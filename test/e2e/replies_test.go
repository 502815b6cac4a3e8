package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
	"securerelay/smtputil"
)

// smtplibScenario is issue 13's test as a new user made it, with Python's
// smtplib against both listeners: the sequence errors, an unknown
// command, a SIZE= too big, an unknown parameter, and a whole
// transaction. It prints [label, code, text] for every reply as JSON.
// Each connection stays under max_errors (10 by default): the errors of
// go-smtp count towards it too.
const smtplibScenario = `
import json, smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
out = []
def rec(label, r):
    out.append([label, r[0], r[1].decode("ascii", "replace")])
def session():
    s = smtplib.SMTP(local_hostname="client.e2e.test", timeout=10)
    rec("greeting", s.connect(host, port))
    return s

s = session()
rec("HELP before EHLO", s.docmd("HELP"))
rec("MAIL before EHLO", s.docmd("MAIL", "FROM:<alice@example.org>"))
rec("EHLO", s.ehlo())
rec("RCPT before MAIL", s.docmd("RCPT", "TO:<bob@example.test>"))
rec("DATA before MAIL", s.docmd("DATA"))
rec("unknown command", s.docmd("FOO"))
rec("unknown command XYZW", s.docmd("XYZW"))
rec("VRFY", s.verify("bob@example.test"))
rec("NOOP", s.noop())
rec("RSET", s.rset())
rec("QUIT", s.quit())

s = session()
s.ehlo()
rec("MAIL SIZE too big", s.docmd("MAIL", "FROM:<alice@example.org> SIZE=999999999999"))
rec("MAIL SIZE not a number", s.docmd("MAIL", "FROM:<alice@example.org> SIZE=big"))
rec("MAIL unknown parameter", s.docmd("MAIL", "FROM:<alice@example.org> XFOO=1"))
rec("MAIL without colon", s.docmd("MAIL", "FROM alice@example.org"))
rec("MAIL", s.mail("alice@example.org"))
rec("MAIL again", s.docmd("MAIL", "FROM:<alice@example.org>"))
rec("DATA before RCPT", s.docmd("DATA"))
rec("RCPT unknown parameter", s.docmd("RCPT", "TO:<bob@example.test> XFOO"))
rec("RCPT", s.rcpt("bob@example.test"))
rec("DATA", s.data(b"Subject: issue 13\r\n\r\nhello\r\n"))
rec("QUIT", s.quit())
json.dump(out, sys.stdout)
`

// TestRepliesWithRealClients: issue 13's scenario with Python's smtplib
// and swaks on both roles. Every reply is the catalogue's, with the code
// the RFCs call for, and none of go-smtp's own texts reaches the wire.
func TestRepliesWithRealClients(t *testing.T) {
	requireTool(t, "python3")
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - name: mx
    address: %q
    role: inbound
  - name: submission
    address: %q
    role: outbound
    trusted_networks: [127.0.0.0/8]
    auth: optional
outbound:
  users: [{name: otrs, password_hash: %q}]
domains:
  example.test:
    deliver_to: "maildir:%s"
`, mx, sub, bcryptHash(t, "s3cret"), filepath.Join(dir, "mail")))
	startRelay(t, cfg, mx, sub)

	const host = "relay.e2e.test"
	type want struct {
		label, reply string
	}
	r := func(code, enh, text string) string {
		if enh == "" {
			return code + " " + text
		}
		return code + " " + enh + " " + text
	}
	wants := []want{
		{"greeting", r("220", "", smtputil.Greeting(host).Message)},
		{"HELP before EHLO", r("214", "2.0.0", smtputil.HelpReply().Message)},
		{"MAIL before EHLO", r("503", "5.5.1", smtputil.NeedHelo("MAIL").Message)},
		{"EHLO", "250 " + host},
		{"RCPT before MAIL", r("503", "5.5.1", smtputil.NeedMail("RCPT").Message)},
		{"DATA before MAIL", r("503", "5.5.1", smtputil.NeedMail("DATA").Message)},
		{"unknown command", r("500", "5.5.2", smtputil.UnknownCommand("FOO").Message)},
		{"unknown command XYZW", r("500", "5.5.2", smtputil.UnknownCommand("XYZW").Message)},
		{"VRFY", r("252", "2.0.0", smtputil.VrfyReply().Message)},
		{"NOOP", "250 2.0.0 Ok"},
		{"RSET", "250 2.0.0 Ok"},
		{"QUIT", "221 2.0.0 " + host + " closing connection"},
		{"greeting", r("220", "", smtputil.Greeting(host).Message)},
		{"MAIL SIZE too big", r("552", "5.3.4", smtputil.MessageTooBig(50000000).Message)},
		{"MAIL SIZE not a number", r("501", "5.5.4", smtputil.ParamSyntax("SIZE").Message)},
		{"MAIL unknown parameter", r("555", "5.5.4", smtputil.ParamUnsupported("XFOO").Message)},
		{"MAIL without colon", r("501", "5.5.4", smtputil.CommandSyntax("MAIL").Message)},
		{"MAIL", "250 2.1.0 Ok"},
		{"MAIL again", r("503", "5.5.1", smtputil.NestedMail().Message)},
		{"DATA before RCPT", r("503", "5.5.1", smtputil.NeedRcpt("DATA").Message)},
		{"RCPT unknown parameter", r("555", "5.5.4", smtputil.ParamUnsupported("XFOO").Message)},
		{"RCPT", "250 2.1.5 Ok"},
		{"DATA", "250 2.0.0 Ok: queued as "},
		{"QUIT", "221 2.0.0 " + host + " closing connection"},
	}
	for _, listener := range []struct{ name, addr string }{{"inbound", mx}, {"outbound", sub}} {
		t.Run("smtplib "+listener.name, func(t *testing.T) {
			h, p, _ := strings.Cut(listener.addr, ":")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "python3", "-c", smtplibScenario, h, p).Output()
			if err != nil {
				var stderr string
				if ee, ok := err.(*exec.ExitError); ok {
					stderr = string(ee.Stderr)
				}
				t.Fatalf("python3 smtplib: %v\n%s", err, stderr)
			}
			var got [][]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("smtplib output %q: %v", out, err)
			}
			if len(got) != len(wants) {
				t.Fatalf("smtplib saw %d replies, want %d:\n%s", len(got), len(wants), out)
			}
			for i, w := range wants {
				label, _ := got[i][0].(string)
				code, _ := got[i][1].(float64)
				text, _ := got[i][2].(string)
				if w.label == "EHLO" {
					// smtplib joins the lines with \n: the first names
					// the server, the extensions follow.
					text, _, _ = strings.Cut(text, "\n")
				}
				reply := strings.TrimSpace(fmt.Sprintf("%d %s", int(code), text))
				if label != w.label || reply != w.reply && !(w.label == "DATA" && strings.HasPrefix(reply, w.reply) && len(reply) > len(w.reply)) {
					t.Errorf("%s: got %q %q, want %q", w.label, label, reply, w.reply)
				}
			}
		})
	}

	// swaks: a whole transaction with STARTTLS (and AUTH on the outbound
	// listener). Each reply line of its transcript is checked.
	for _, tc := range []struct {
		name string
		args []string
		auth bool
	}{
		{"inbound", []string{"--server", mx}, false},
		{"outbound", []string{"--server", sub, "--auth", "PLAIN", "--auth-user", "otrs", "--auth-password", "s3cret"}, true},
	} {
		t.Run("swaks "+tc.name, func(t *testing.T) {
			res := mustSend(t, append(tc.args, "--tls", "--from", "alice@example.test", "--to", "bob@example.test",
				"--header", "Subject: issue 13 with swaks")...)
			lines := map[string]bool{}
			var replies strings.Builder
			for _, l := range strings.Split(res.Out, "\n") {
				if strings.HasPrefix(l, "<") {
					lines[strings.TrimRight(l, "\r")] = true
					replies.WriteString(l + "\n")
				}
			}
			want := []string{
				"<-  220 " + host + " ESMTP ready",
				"<-  250-" + host,
				"<-  220 2.0.0 Ready to start TLS",
				"<~  250-" + host,
				"<~  250 2.1.0 Ok",
				"<~  250 2.1.5 Ok",
				"<~  354 End data with <CR><LF>.<CR><LF>",
				"<~  250 2.0.0 Ok: queued as " + res.QueueID(),
				"<~  221 2.0.0 " + host + " closing connection",
			}
			if tc.auth {
				want = append(want, "<~  235 2.7.0 Authentication successful")
			}
			for _, w := range want {
				if !lines[w] {
					t.Errorf("swaks transcript lacks %q:\n%s", w, res.Out)
				}
			}
			if m := regexp.MustCompile(`(?i)roger|make sure|go ahead|\bbye\b|hello |service ready`).FindString(replies.String()); m != "" {
				t.Errorf("go-smtp's own text %q reached the wire:\n%s", m, res.Out)
			}
		})
	}
}
