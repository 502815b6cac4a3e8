package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
)

// SMTPUTF8 (RFC 6531/6532) with real peers: Python's smtplib (the
// client most scripts and monitoring use; swaks 20201014 cannot send the
// SMTPUTF8 parameter, so it shows what a client without it gets), Postfix
// as the next hop with smtputf8_enable yes and no, and as the previous
// hop; dkimverify and opendkim-testmsg on what Postfix passed on.

// pyStep is one smtplib call: ehlo, mail FROM [OPTIONS...], rcpt TO,
// data MESSAGE, rset, or send_message FROM TO MESSAGE (the email
// package's EmailMessage, which adds SMTPUTF8 by itself when an address
// or the header needs it).
type pyStep []string

// pyReply is what smtplib returned: the reply code and text (which
// starts with the enhanced status code), or the exception it raised.
type pyReply struct {
	Code  int      `json:"code"`
	Text  string   `json:"text"`
	Exts  []string `json:"exts"`
	Error string   `json:"error"`
}

const pySMTPScript = `
import base64, email.message, json, smtplib, sys
host, port = sys.argv[1].rsplit(":", 1)
s = smtplib.SMTP(host, int(port), local_hostname="client.e2e.test", timeout=20)
out = []
for step in json.loads(sys.argv[2]):
    op, args = step[0], step[1:]
    r = {"code": 0, "text": "", "exts": [], "error": ""}
    try:
        if op == "ehlo":
            code, text = s.ehlo()
            r["exts"] = sorted(s.esmtp_features)
        elif op == "mail":
            code, text = s.mail(args[0], args[1:])
        elif op == "rcpt":
            code, text = s.rcpt(args[0])
        elif op == "data":
            code, text = s.data(base64.b64decode(args[0]))
        elif op == "rset":
            code, text = s.rset()
        elif op == "send_message":
            m = email.message.EmailMessage()
            m["From"], m["To"], m["Subject"] = args[0], args[1], args[2]
            m.set_content(args[3])
            refused = s.send_message(m)
            code, text = 250, json.dumps(refused)
        r["code"], r["text"] = code, text.decode() if isinstance(text, bytes) else text
    except smtplib.SMTPResponseException as e:
        r["code"], r["text"] = e.smtp_code, e.smtp_error.decode()
    except smtplib.SMTPRecipientsRefused as e:
        c, t = list(e.recipients.values())[0]
        r["code"], r["text"] = c, t.decode()
    except Exception as e:
        r["error"] = type(e).__name__ + ": " + str(e)
    out.append(r)
s.quit()
print(json.dumps(out))
`

// pySMTP runs the steps with Python's smtplib against addr, one session.
func pySMTP(t *testing.T, addr string, steps ...pyStep) []pyReply {
	t.Helper()
	requireTool(t, "python3")
	for i, s := range steps {
		if s[0] == "data" {
			steps[i] = pyStep{"data", base64.StdEncoding.EncodeToString([]byte(s[1]))}
		}
	}
	plan, _ := json.Marshal(steps)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "python3", "-c", pySMTPScript, addr, string(plan)).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("python3 smtplib: %v\n%s%s", err, out, stderr)
	}
	var res []pyReply
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(steps) {
		t.Fatalf("python3 smtplib output %q: %v", out, err)
	}
	return res
}

// expectPy checks the replies: want[i] is "CODE" or "CODE X.Y.Z" (the
// text must then start with the enhanced code), "" for a step not checked.
func expectPy(t *testing.T, got []pyReply, want ...string) {
	t.Helper()
	for i, w := range want {
		if w == "" {
			continue
		}
		code, enh, _ := strings.Cut(w, " ")
		g := got[i]
		if fmt.Sprint(g.Code) != code || enh != "" && !strings.HasPrefix(g.Text, enh+" ") {
			t.Errorf("step %d: got %d %q %s, want %s", i, g.Code, g.Text, g.Error, w)
		}
	}
}

// unfoldHeader is a message's header with folded lines joined.
func unfoldHeader(msg []byte) string {
	return strings.NewReplacer("\n\t", " ", "\n ", " ").Replace(headerSection(msg))
}

// A message with RFC 6532 header fields, and one with an ASCII header.
const (
	intlMsg = "From: Jörg Müller <jörg@bücher.example>\r\nTo: Anna <anna@müller.example>\r\n" +
		"Subject: Grüße aus Köln\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\nMessage-ID: <utf8@xn--bcher-kva.example>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"Hallo Anna, 8-bit body: schöne Grüße.\r\n"
	asciiMsg = "From: <sender@xn--bcher-kva.example>\r\nTo: <user@xn--mller-kva.example>\r\n" +
		"Subject: hello\r\nDate: Mon, 2 Mar 2026 10:00:00 +0100\r\nMessage-ID: <ascii@xn--bcher-kva.example>\r\n\r\nHallo\r\n"
)

// TestSMTPUTF8Clients: both roles offer SMTPUTF8. swaks, which cannot
// declare it, gets 553 5.6.7 for a non-ASCII address and is served when
// it writes the domain in A-labels; smtplib declares it and is served in
// UTF-8, by hand (every reply code checked) and through the email
// package. Our domain, configured in U-labels, matches both spellings;
// maildir names the mailbox with the A-label domain; mail relayed on goes
// to a next hop offering SMTPUTF8 with the parameter and the addresses
// and header bytes as written, and an ASCII message without it.
func TestSMTPUTF8Clients(t *testing.T) {
	dir := t.TempDir()
	dns := dnstest.NewServer(t, "")
	next := startTestServer(t, listenLoopback(t), serverOptions{SMTPUTF8: true})
	mx, sub, mail := freeAddr(t), freeAddr(t), filepath.Join(dir, "mail")
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  Müller.example:
    deliver_to: "maildir:%s"
    recipients: {list: [jörg, user, anna]}
outbound:
  routes: [{match: "*", next_hop: "smtp://%s"}]
%s`, mx, sub, mail, next.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx, sub)

	// swaks: no SMTPUTF8 parameter, so a non-ASCII address is refused.
	res := swaks(t, "--server", mx, "--from", "sender@example.org", "--to", "jörg@müller.example")
	if e := res.ErrorReplies(); len(e) == 0 || !strings.HasPrefix(e[0], "553 5.6.7 ") {
		t.Errorf("swaks RCPT TO:<jörg@müller.example> without SMTPUTF8: %q, want 553 5.6.7\n%s", e, res.Out)
	}
	res = swaks(t, "--server", mx, "--from", "jörg@bücher.example", "--to", "user@xn--mller-kva.example")
	if e := res.ErrorReplies(); len(e) == 0 || !strings.HasPrefix(e[0], "553 5.6.7 ") {
		t.Errorf("swaks MAIL FROM:<jörg@bücher.example> without SMTPUTF8: %q, want 553 5.6.7\n%s", e, res.Out)
	}
	mustSend(t, "--server", mx, "--from", "sender@example.org", "--to", "user@XN--MLLER-KVA.example")
	waitMaildir(t, mail, "user@xn--mller-kva.example", 1, 10*time.Second)

	// smtplib, by hand: every reply code.
	got := pySMTP(t, mx,
		pyStep{"ehlo"},
		pyStep{"mail", "jörg@bücher.example", "SMTPUTF8"},
		pyStep{"rcpt", "jörg@MÜLLER.example"},
		pyStep{"rcpt", "nobody@müller.example"},
		pyStep{"rcpt", "jörg@other.example"},
		pyStep{"rcpt", "a@bü_cher.example"},
		pyStep{"data", intlMsg},
	)
	// MAIL and RCPT success: the code only (their enhanced codes are the
	// reply catalogue's business).
	expectPy(t, got, "250", "250", "250", "550 5.1.1", "554 5.7.1", "501 5.1.3", "250 2.0.0")
	if !strings.Contains(strings.Join(got[0].Exts, " "), "smtputf8") {
		t.Errorf("EHLO features %v lack SMTPUTF8", got[0].Exts)
	}
	// smtplib through the email package: SMTPUTF8 because of the address.
	expectPy(t, pySMTP(t, mx, pyStep{"send_message", "Jörg <jörg@bücher.example>", "Anna <anna@müller.example>", "Grüße", "Hallo Anna"}), "250")

	m := waitMaildir(t, mail, "jörg@xn--mller-kva.example", 1, 10*time.Second)[0]
	h := unfoldHeader(m)
	for _, want := range []string{"Delivered-To: jörg@müller.example\n", " with UTF8SMTP id ", "From: Jörg Müller <jörg@bücher.example>\n", "Subject: Grüße aus Köln\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("maildir copy lacks %q:\n%s", want, h)
		}
	}
	if !strings.HasSuffix(string(m), strings.ReplaceAll(intlMsg, "\r\n", "\r\n")) {
		t.Errorf("the message changed on the way:\n%s", m)
	}
	a := waitMaildir(t, mail, "anna@xn--mller-kva.example", 1, 10*time.Second)[0]
	if !strings.Contains(unfoldHeader(a), "To: Anna <anna@müller.example>") {
		t.Errorf("anna's copy:\n%s", a)
	}
	if boxes := mailboxes(t, mail); strings.Join(boxes, " ") != "anna@xn--mller-kva.example jörg@xn--mller-kva.example user@xn--mller-kva.example" {
		t.Errorf("mailboxes %q", boxes)
	}

	// Submission, relayed on to a next hop that offers SMTPUTF8.
	got = pySMTP(t, sub,
		pyStep{"ehlo"},
		pyStep{"mail", "jörg@bücher.example", "SMTPUTF8"},
		pyStep{"rcpt", "δοκιμή@παράδειγμα.δοκιμή"},
		pyStep{"rcpt", "user@Παράδειγμα.δοκιμή"},
		pyStep{"data", intlMsg},
		pyStep{"mail", "app@example.org"},
		pyStep{"rcpt", "b@example.net"},
		pyStep{"data", asciiMsg},
	)
	expectPy(t, got, "250", "250", "250", "250", "250 2.0.0", "250", "250", "250 2.0.0")
	msgs := next.WaitMessages(t, 2, 10*time.Second)
	for _, n := range msgs {
		switch n.From {
		case "jörg@bücher.example":
			if !n.UTF8 || strings.Join(n.To, " ") != "δοκιμή@παράδειγμα.δοκιμή user@παράδειγμα.δοκιμή" || !strings.HasSuffix(string(n.Data), intlMsg) {
				t.Errorf("next hop got SMTPUTF8=%v RCPT TO:%q\n%s", n.UTF8, n.To, n.Data)
			}
		case "app@example.org":
			if n.UTF8 {
				t.Error("SMTPUTF8 sent for an ASCII message (RFC 6531 section 3.4: SHOULD NOT)")
			}
		default:
			t.Errorf("unexpected message from <%s>", n.From)
		}
	}
	r.WaitLog(0, 5*time.Second, "msg=sent", "to=δοκιμή@παράδειγμα.δοκιμή")
}

// keygenFor runs `securerelay dkim keygen` for a domain written as given
// and returns the key file and the zone entry it printed.
func keygenFor(t *testing.T, dir, domain, selector, alg string) (keyPath, zone string) {
	t.Helper()
	keyPath = filepath.Join(dir, "keys", selector+".key")
	out, errOut, code := runRelayCmd(t, "dkim", "keygen", "--domain", domain, "--selector", selector, "--algorithm", alg, "--out", keyPath)
	if code != 0 {
		t.Fatalf("dkim keygen: exit %d: %s", code, errOut)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, ";") {
			lines = append(lines, l)
		}
	}
	return keyPath, strings.Join(lines, "\n") + "\n"
}

// pyParseDSN parses a DSN with Python's email package and returns its To:
// and the fields of each message/delivery-status group.
func pyParseDSN(t *testing.T, msg []byte) (to string, groups []map[string]string) {
	t.Helper()
	const script = `
import email, email.policy, json, sys
m = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=email.policy.default)
assert m.get_content_type() == "multipart/report", m.get_content_type()
groups = []
for part in m.walk():
    if part.get_content_type() == "message/delivery-status":
        for g in part.get_payload():
            groups.append({k: str(v) for k, v in g.items()})
print(json.dumps({"to": str(m["To"]), "groups": groups}))
`
	f := filepath.Join(t.TempDir(), "dsn.eml")
	if err := os.WriteFile(f, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("python3", "-c", script, f).CombinedOutput()
	if err != nil {
		t.Fatalf("python3 email: %v\n%s\n%s", err, out, msg)
	}
	var res struct {
		To     string              `json:"to"`
		Groups []map[string]string `json:"groups"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python3 email output %q: %v", out, err)
	}
	return res.To, res.Groups
}

// TestSMTPUTF8PostfixNextHop: Postfix is the next hop for müller.example
// (a route written in U-labels) and relays what it accepts to a recording
// server that offers SMTPUTF8, which shows what Postfix was given.
//
// smtputf8_enable = yes: the message goes with SMTPUTF8, its addresses
// and header bytes as the sender wrote them, and its DKIM signatures (by
// a key of bücher.example, configured in U-labels, d= in A-labels) verify
// with dkimverify and opendkim-testmsg on the bytes Postfix passed on.
//
// smtputf8_enable = no: a recipient whose domain alone is non-ASCII goes
// in A-labels, without SMTPUTF8; a recipient with a UTF-8 local part, a
// UTF-8 header and a UTF-8 sender never reach Postfix: the sender gets a
// DSN with 5.6.7 (parsed with Python's email package), in its maildir.
func TestSMTPUTF8PostfixNextHop(t *testing.T) {
	for _, mode := range []string{"yes", "no"} {
		t.Run("smtputf8_enable="+mode, func(t *testing.T) {
			dir := t.TempDir()
			rec := startTestServer(t, listenLoopback(t), serverOptions{SMTPUTF8: true})
			pf := startPostfix(t, postfixOptions{Relayhost: rec.Addr, Main: []string{"smtputf8_enable = " + mode}})
			rsaKey, rsaZone := keygenFor(t, dir, "Bücher.example", "s2026", "rsa")
			edKey, edZone := keygenFor(t, dir, "bücher.example", "e2026", "ed25519")
			if !strings.HasPrefix(rsaZone, "s2026._domainkey.xn--bcher-kva.example. IN TXT") {
				t.Fatalf("dkim keygen zone entry not in A-labels:\n%s", rsaZone)
			}
			dns := dnstest.NewServer(t, "")
			sub, mail := freeAddr(t), filepath.Join(dir, "mail")
			cfg := filepath.Join(dir, "relay.yaml")
			writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  bücher.example:
    deliver_to: "maildir:%s"
    dkim:
      - {selector: s2026, key: %q}
      - {selector: e2026, key: %q}
outbound:
  routes: [{match: müller.example, next_hop: "smtp://%s"}]
%s`, sub, mail, rsaKey, edKey, pf.Addr, outboundTimeouts))
			r := startRelay(t, cfg, sub)

			if mode == "yes" {
				expectPy(t, pySMTP(t, sub, pyStep{"ehlo"}, pyStep{"mail", "jörg@bücher.example", "SMTPUTF8"},
					pyStep{"rcpt", "jörg@müller.example"}, pyStep{"rcpt", "user@müller.example"}, pyStep{"data", intlMsg}),
					"250", "250", "250", "250", "250 2.0.0")
				m := rec.WaitMessages(t, 1, 30*time.Second)[0]
				if !m.UTF8 || m.From != "jörg@bücher.example" || strings.Join(m.To, " ") != "jörg@müller.example user@müller.example" {
					t.Errorf("Postfix passed on SMTPUTF8=%v MAIL FROM:<%s> RCPT TO:%q", m.UTF8, m.From, m.To)
				}
				if !strings.HasSuffix(string(m.Data), intlMsg) || strings.Count(unfoldHeader(m.Data), "DKIM-Signature:") != 2 {
					t.Fatalf("Postfix passed on:\n%s", m.Data)
				}
				if !regexp.MustCompile(`DKIM-Signature:[^\n]*d=xn--bcher-kva\.example;`).MatchString(unfoldHeader(m.Data)) {
					t.Errorf("d= is not in A-labels:\n%s", headerSection(m.Data))
				}
				verifyDKIMTools(t, dir, m.Data, rsaZone+edZone, "8-bit body", "8-bit b0dy")
				r.WaitLog(0, 5*time.Second, "msg=sent", "to=user@müller.example")
				return
			}

			got := pySMTP(t, sub, pyStep{"ehlo"},
				// 1: domain-only non-ASCII recipient goes; jörg is returned.
				pyStep{"mail", "sender@bücher.example", "SMTPUTF8"}, pyStep{"rcpt", "user@müller.example"}, pyStep{"rcpt", "jörg@müller.example"}, pyStep{"data", asciiMsg},
				// 2: a UTF-8 header: returned.
				pyStep{"mail", "sender@bücher.example", "SMTPUTF8"}, pyStep{"rcpt", "user@müller.example"}, pyStep{"data", intlMsg},
				// 3: a UTF-8 sender: returned (to a UTF-8 address).
				pyStep{"mail", "jörg@bücher.example", "SMTPUTF8"}, pyStep{"rcpt", "user@müller.example"}, pyStep{"data", asciiMsg},
			)
			expectPy(t, got, "250", "250", "250", "250", "250 2.0.0", "250", "250", "250 2.0.0", "250", "250", "250 2.0.0")
			m := rec.WaitMessages(t, 1, 30*time.Second)[0]
			if m.UTF8 || m.From != "sender@xn--bcher-kva.example" || strings.Join(m.To, " ") != "user@xn--mller-kva.example" || !strings.HasSuffix(string(m.Data), asciiMsg) {
				t.Errorf("Postfix passed on SMTPUTF8=%v MAIL FROM:<%s> RCPT TO:%q\n%s", m.UTF8, m.From, m.To, m.Data)
			}
			dsns := waitMaildir(t, mail, "sender@xn--bcher-kva.example", 2, 20*time.Second)
			waitMaildir(t, mail, "jörg@xn--bcher-kva.example", 1, 20*time.Second)
			var finals []string
			for _, d := range dsns {
				to, groups := pyParseDSN(t, d)
				if to != "sender@xn--bcher-kva.example" || len(groups) != 2 {
					t.Fatalf("DSN To %q, %d groups:\n%s", to, len(groups), d)
				}
				g := groups[1]
				if g["Status"] != "5.6.7" || g["Action"] != "failed" {
					t.Errorf("DSN group %v, want failed 5.6.7", g)
				}
				finals = append(finals, g["Final-Recipient"])
				if !strings.Contains(string(d), "SMTPUTF8") {
					t.Errorf("DSN does not say why:\n%s", d)
				}
			}
			if s := strings.Join(finals, " | "); !strings.Contains(s, `utf-8; j\x{F6}rg@m\x{FC}ller.example`) || !strings.Contains(s, "rfc822; user@xn--mller-kva.example") {
				t.Errorf("Final-Recipient fields %q", s)
			}
			// Postfix only ever saw the one downgraded transaction.
			time.Sleep(500 * time.Millisecond)
			if n := len(rec.Messages()); n != 1 {
				t.Errorf("Postfix passed on %d messages, want 1", n)
			}
			if l := pf.Log(); strings.Contains(l, "SMTPUTF8") || strings.Count(l, "status=sent") != 1 {
				t.Errorf("postfix log:\n%s", l)
			}
		})
	}
}

// TestSMTPUTF8PostfixPreviousHop: Postfix relays an SMTPUTF8 message to
// the relay's inbound listener, which takes it (with SMTPUTF8) for our
// domain and delivers it to the mailbox of the A-label domain.
func TestSMTPUTF8PostfixPreviousHop(t *testing.T) {
	dir := t.TempDir()
	dns := dnstest.NewServer(t, "")
	mx, mail := freeAddr(t), filepath.Join(dir, "mail")
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  xn--mller-kva.example: {deliver_to: "maildir:%s"}
`, mx, mail))
	r := startRelay(t, cfg, mx)
	pf := startPostfix(t, postfixOptions{Relayhost: mx, Main: []string{"smtputf8_enable = yes"}})
	expectPy(t, pySMTP(t, pf.Addr, pyStep{"ehlo"}, pyStep{"mail", "jörg@bücher.example", "SMTPUTF8"},
		pyStep{"rcpt", "jörg@müller.example"}, pyStep{"data", intlMsg}),
		"250", "250 2.1.0", "250 2.1.5", "250 2.0.0")
	m := waitMaildir(t, mail, "jörg@xn--mller-kva.example", 1, 30*time.Second)[0]
	h := unfoldHeader(m)
	if !strings.Contains(h, "by relay.e2e.test (securerelay) with UTF8SMTP id ") || !strings.Contains(h, "by postfix.e2e.test (Postfix) with UTF8") ||
		!strings.HasSuffix(string(m), intlMsg[strings.Index(intlMsg, "To: "):]) {
		t.Errorf("maildir copy:\n%s", m)
	}
	pf.WaitLog(t, 10*time.Second, "status=sent", "to=<jörg@müller.example>")
	r.WaitLog(0, 5*time.Second, "msg=sent", "to=jörg@müller.example")
}

// TestSMTPUTF8InboundHold: inbound mail is never bounced. A message with
// a UTF-8 header for a downstream without SMTPUTF8 is accepted (nothing
// at RCPT tells) and then held with 5.6.7 and a log line, not sent, no
// DSN; a recipient with a UTF-8 local part is refused in the dialog
// (553 5.6.7) when the domain verifies its recipients, since the probe
// shows that the downstream cannot take it; a recipient whose domain
// alone is non-ASCII is probed, and delivered, in A-labels.
func TestSMTPUTF8InboundHold(t *testing.T) {
	dir := t.TempDir()
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  müller.example:
    deliver_to: "smtp://%s"
    recipients: {verify: true}
`, mx, down.Addr))
	r := startRelay(t, cfg, mx)
	got := pySMTP(t, mx, pyStep{"ehlo"},
		pyStep{"mail", "jörg@bücher.example", "SMTPUTF8"},
		pyStep{"rcpt", "jörg@müller.example"},
		pyStep{"rcpt", "user@müller.example"},
		pyStep{"data", intlMsg},
		pyStep{"mail", "sender@bücher.example", "SMTPUTF8"},
		pyStep{"rcpt", "anna@müller.example"},
		pyStep{"data", asciiMsg},
	)
	expectPy(t, got, "250", "250", "553 5.6.7", "250", "250 2.0.0", "250", "250", "250 2.0.0")
	held := regexp.MustCompile(`queued as ([0-9A-F]+)`).FindStringSubmatch(got[4].Text)
	if held == nil {
		t.Fatalf("no queue ID in %q", got[4].Text)
	}
	r.WaitLog(0, 10*time.Second, "msg=held", "queue_id="+held[1], "dsn=5.6.7", "SMTPUTF8 is required, but was not offered")
	r.WaitLog(0, 10*time.Second, "held:", "queue_id="+held[1])
	m := down.WaitMessages(t, 1, 10*time.Second)
	if len(m) != 1 || m[0].UTF8 || m[0].From != "sender@xn--bcher-kva.example" || strings.Join(m[0].To, " ") != "anna@xn--mller-kva.example" {
		t.Errorf("downstream got %+v", m)
	}
	if rc := strings.Join(down.Rcpts(), " "); strings.Contains(rc, "ü") || !strings.Contains(rc, "user@xn--mller-kva.example") {
		t.Errorf("downstream was asked RCPT TO %q; want A-labels only", rc)
	}
	if l := r.LogLines("sender non-delivery notification"); len(l) != 0 {
		t.Errorf("a DSN for inbound mail: %q", l)
	}
	out, _, _ := runRelayCmd(t, "queue", "list", "--config", cfg)
	if !strings.Contains(out, held[1]) || !strings.Contains(out, "held") {
		t.Errorf("queue list does not show %s held:\n%s", held[1], out)
	}
}

// TestSMTPUTF8FlagSurvivesRestart: the queue entry records that the
// message came with SMTPUTF8; after a restart it still leaves with it.
func TestSMTPUTF8FlagSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	dns := dnstest.NewServer(t, "")
	var refuse atomic.Bool
	refuse.Store(true)
	down := startTestServer(t, listenLoopback(t), serverOptions{SMTPUTF8: true, RcptErr: func(string) error {
		if refuse.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}})
	sub := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
outbound:
  routes: [{match: "*", next_hop: "smtp://%s"}]
%squeue: {retry: [1s]}
`, sub, down.Addr, outboundTimeouts))
	r := startRelay(t, cfg, sub)
	got := pySMTP(t, sub, pyStep{"ehlo"}, pyStep{"mail", "app@example.org", "SMTPUTF8"}, pyStep{"rcpt", "b@example.net"}, pyStep{"data", asciiMsg})
	expectPy(t, got, "250", "250", "250", "250 2.0.0")
	id := regexp.MustCompile(`queued as ([0-9A-F]+)`).FindStringSubmatch(got[3].Text)[1]
	r.WaitLog(0, 10*time.Second, "msg=deferred", "queue_id="+id)
	r.Stop()
	files, _ := filepath.Glob(filepath.Join(dir, "state", "spool", "*", id))
	if len(files) != 1 {
		t.Fatalf("spool file of %s: %v", id, files)
	}
	if b, err := os.ReadFile(files[0]); err != nil || !strings.Contains(string(b), `"smtputf8":true`) {
		t.Fatalf("spool file does not record SMTPUTF8: %v\n%.400s", err, b)
	}
	refuse.Store(false)
	startRelay(t, cfg, sub)
	m := down.WaitMessages(t, 1, 20*time.Second)[0]
	if !m.UTF8 || m.From != "app@example.org" {
		t.Errorf("after the restart: SMTPUTF8=%v MAIL FROM:<%s>", m.UTF8, m.From)
	}
}
