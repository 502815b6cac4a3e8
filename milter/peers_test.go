package milter

import (
	"strings"
	"testing"
	"time"

	"securerelay/internal/milterpeers"
)

// The real milters, rspamd and clamav-milter in front of clamd, come from
// internal/milterpeers: private offline instances on loopback ports, each
// started once for the package (they take seconds to come up) and stopped
// by TestMain.
var peers milterpeers.Pool

const peerFrom, peerTo = "alice@sender.example", "bob@example.net"

// withReceived puts a three-line Received field on top of msg, as an MX
// adds before the milters see a message. milterpeers' builders add none,
// and TestRspamd checks that Authentication-Results lands below it. Its
// date is now, like the builders' Date, so that rspamd sees no skew.
func withReceived(msg string) string {
	return "Received: from mail.sender.example (mail.sender.example [192.0.2.7])\r\n" +
		"\tby mx1.example.net (securerelay) with ESMTPS id 4XyZ1abc\r\n" +
		"\tfor <bob@example.net>; " + time.Now().UTC().Format(time.RFC1123Z) + "\r\n" + msg
}

func cleanMessage() string { return withReceived(milterpeers.CleanMessage(peerFrom, peerTo)) }
func gtubeMessage() string { return withReceived(milterpeers.GTUBEMessage(peerFrom, peerTo)) }
func eicarMessage() string { return withReceived(milterpeers.EICARMessage(peerFrom, peerTo)) }

// emptyMessage has a header and no body at all.
func emptyMessage() string {
	return withReceived(milterpeers.Message(peerFrom, peerTo, "empty", nil, ""))
}

func TestClamavMilter(t *testing.T) {
	clam := peers.Clamav(t)
	c := newTestChain(t, Config{Name: "clamav", Address: clam.Addr, ReadTimeout: 60 * time.Second})
	env := testEnvelope()

	t.Run("eicar", func(t *testing.T) {
		res := check(t, c, env, eicarMessage())
		if res.Action != Reject || res.Code != 550 || res.Enhanced != "5.7.1" || res.Milter != "clamav" ||
			!strings.HasPrefix(res.Text, "Virus found: Local.EICAR.Test.") {
			t.Errorf("result %+v, want 550 5.7.1 Virus found: Local.EICAR.Test.…\n%s", res, clam.Logs())
		}
	})
	t.Run("clean", func(t *testing.T) {
		msg := cleanMessage()
		res := check(t, c, env, msg)
		if res.Action != Accept {
			t.Fatalf("result %+v\n%s", res, clam.Logs())
		}
		out := applied(t, res, msg)
		t.Logf("clamav-milter's changes applied:\n%s", out)
		for _, want := range []string{"\r\nX-Virus-Scanned: ", "\r\nX-Virus-Status: Clean\r\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q in\n%s\nmods %+v", want, out, res.Mods)
			}
		}
		if !strings.HasSuffix(out, msg[strings.Index(msg, "\r\n\r\n"):]) {
			t.Error("body changed")
		}
	})
	// An empty body goes as one empty line (an empty BODY packet made
	// libmilter drop the connection).
	t.Run("empty body", func(t *testing.T) {
		if res := check(t, c, env, emptyMessage()); res.Action != Accept {
			t.Errorf("result %+v\n%s", res, clam.Logs())
		}
	})
}

func TestRspamd(t *testing.T) {
	rs := peers.Rspamd(t)
	c := newTestChain(t, Config{Name: "rspamd", Address: rs.Addr, ReadTimeout: 60 * time.Second})
	env := testEnvelope()

	t.Run("gtube", func(t *testing.T) {
		res := check(t, c, env, gtubeMessage())
		want := Result{Action: Reject, Code: 554, Enhanced: "5.7.1", Text: "Gtube pattern", Milter: "rspamd"}
		if res.Action != want.Action || res.Code != want.Code || res.Enhanced != want.Enhanced || res.Text != want.Text || res.Milter != want.Milter {
			t.Errorf("result %+v, want %+v\n%s", res, want, rs.Logs())
		}
	})
	t.Run("clean", func(t *testing.T) {
		msg := cleanMessage()
		res := check(t, c, env, msg)
		if res.Action != Accept {
			t.Fatalf("result %+v\n%s", res, rs.Logs())
		}
		got := map[string]Modification{}
		for _, m := range res.Mods {
			got[m.Name] = m
		}
		// rspamd's queue id header carries our macro i: the macros arrive.
		if m := got["X-Rspamd-Queue-Id"]; m.Kind != AddHeader || m.Value != env.QueueID {
			t.Errorf("X-Rspamd-Queue-Id %+v, want %q", m, env.QueueID)
		}
		if m := got["X-Spamd-Result"]; m.Kind != AddHeader || !strings.HasPrefix(m.Value, "default: False [") {
			t.Errorf("X-Spamd-Result %+v", m)
		}
		// Its authserv-id is our {daemon_name}.
		if m := got["Authentication-Results"]; m.Kind != InsertHeader || m.Index != 1 || !strings.HasPrefix(m.Value, env.DaemonName+";") {
			t.Errorf("Authentication-Results %+v", m)
		}
		out := applied(t, res, msg)
		t.Logf("rspamd's changes applied:\n%s", out)
		// Authentication-Results goes below the first field (our
		// Received), X-Spamd-Result is appended with its folding turned
		// into CRLF.
		lines := strings.Split(out, "\r\n")
		if !strings.HasPrefix(lines[3], "Authentication-Results: ") {
			t.Errorf("Authentication-Results not after the Received field:\n%s", out)
		}
		if !strings.Contains(out, "\r\nX-Spamd-Result: default: False [") || strings.Contains(strings.ReplaceAll(out, "\r\n", ""), "\n") {
			t.Errorf("X-Spamd-Result missing or bare LF left:\n%q", out)
		}
	})
	t.Run("empty body", func(t *testing.T) {
		if res := check(t, c, env, emptyMessage()); res.Action != Accept {
			t.Errorf("result %+v\n%s", res, rs.Logs())
		}
	})
}

// rspamd, then clamav-milter, as in Postfix: the EICAR message passes
// rspamd (its score stays below reject) and clamav-milter refuses it; a
// clean one collects both milters' headers.
func TestRealChain(t *testing.T) {
	rs, clam := peers.Rspamd(t), peers.Clamav(t)
	c := newTestChain(t,
		Config{Name: "rspamd", Address: rs.Addr, ReadTimeout: 60 * time.Second},
		Config{Name: "clamav", Address: clam.Addr, ReadTimeout: 60 * time.Second})
	env := testEnvelope()
	res := check(t, c, env, eicarMessage())
	if res.Action != Reject || res.Milter != "clamav" || !strings.HasPrefix(res.Text, "Virus found: ") {
		t.Errorf("eicar through both: %+v", res)
	}
	res = check(t, c, env, gtubeMessage())
	if res.Action != Reject || res.Milter != "rspamd" || res.Code != 554 {
		t.Errorf("gtube through both: %+v", res)
	}
	msg := cleanMessage()
	res = check(t, c, env, msg)
	if res.Action != Accept {
		t.Fatalf("clean through both: %+v", res)
	}
	out := applied(t, res, msg)
	for _, want := range []string{"\r\nX-Spamd-Result: ", "\r\nX-Virus-Status: Clean\r\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}

// With clamd gone, clamav-milter answers TEMPFAIL itself (OnFail Defer).
// It breaks the package's ClamAV on purpose, so the pool forgets it; the
// name keeps it after the other clamav tests, which need no restart.
func TestZClamdDown(t *testing.T) {
	clam := peers.Clamav(t)
	defer peers.Forget("clamav")
	if !clam.StopDaemon("clamd") { // clamav-milter stays up
		t.Fatalf("no clamd in the instance\n%s", clam.Logs())
	}
	c := newTestChain(t, Config{Name: "clamav", Address: clam.Addr, ReadTimeout: 60 * time.Second})
	res := check(t, c, testEnvelope(), cleanMessage())
	want := Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1",
		Text: "Message deferred by content scanner clamav, try again later", Milter: "clamav"}
	if res.Action != want.Action || res.Code != want.Code || res.Text != want.Text {
		t.Errorf("got %+v, want %+v\n%s", res, want, clam.Logs())
	}
}
