package milter

import (
	"context"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// A milter that accepts sees the whole conversation the way Postfix sends
// it: the events, the header values (one leading space removed, folding
// with a bare LF), the body byte for byte, and the macros.
func TestAcceptSeesConversation(t *testing.T) {
	s := &script{}
	addr := startMilter(t, s, allActions, 0)
	c := newTestChain(t, Config{Name: "t1", Address: addr})
	res := check(t, c, testEnvelope(), testMessage)
	if res.Action != Accept || len(res.Mods) != 0 || res.Milter != "" {
		t.Fatalf("result %+v, want plain accept", res)
	}
	if got := applied(t, res, testMessage); got != testMessage {
		t.Errorf("Apply changed an unmodified message:\n%q", got)
	}
	wantEvents := []string{
		"connect mail.sender.example tcp4 40123 192.0.2.7",
		"helo mail.sender.example",
		"mail <alice@sender.example>",
		"rcpt <bob@example.net>", "rcpt <carol@example.net>",
		"data", "header", "header", "header", "header", "header", "eoh",
		"body 33", "eom",
	}
	if got := s.Events(); !reflect.DeepEqual(got, wantEvents) {
		t.Errorf("events\n got %q\nwant %q", got, wantEvents)
	}
	wantHeaders := []string{
		"Received:from mail.sender.example ([192.0.2.7])\n\tby mx1.example.net; Tue, 1 Dec 2026 10:00:00 +0000",
		"From:Alice <alice@sender.example>",
		"To:bob@example.net, carol@example.net",
		"Subject: two spaces",
		"Message-ID:<1@check.sender.example>",
	}
	if got := s.Headers(); !reflect.DeepEqual(got, wantHeaders) {
		t.Errorf("headers\n got %q\nwant %q", got, wantHeaders)
	}
	if got, want := s.Body(), "Hello Bob,\r\n\r\nthis is the body.\r\n"; got != want {
		t.Errorf("body %q, want %q", got, want)
	}
	wantMacros := map[string]string{
		"i": "4XyZ1abc", "j": "mx1.example.net", "v": "securerelay", "r": "ESMTPS",
		"_":             "mail.sender.example [192.0.2.7]",
		"{daemon_name}": "mx", "{daemon_addr}": "127.0.0.1", "{daemon_port}": "25", "{if_addr}": "127.0.0.1",
		"{client_addr}": "192.0.2.7", "{client_port}": "40123",
		"{client_name}": "mail.sender.example", "{client_ptr}": "mail.sender.example",
		"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_128_GCM_SHA256",
		"{mail_addr}": "alice@sender.example", "{mail_host}": "sender.example",
		"{rcpt_addr}": "carol@example.net", "{rcpt_host}": "example.net",
	}
	if got := s.Macros(); !reflect.DeepEqual(got, wantMacros) {
		t.Errorf("macros\n got %v\nwant %v", got, wantMacros)
	}
}

// Authentication macros, the null sender, IPv6 and an unknown client name.
func TestEnvelopeVariants(t *testing.T) {
	s := &script{}
	addr := startMilter(t, s, allActions, 0)
	c := newTestChain(t, Config{Address: addr})
	env := testEnvelope()
	env.ClientAddr = netipMust("2001:db8::25")
	env.ClientName, env.ClientPTR = "", "forged.example.org" // a PTR name that did not confirm
	env.AuthUser, env.AuthMech = "otrs", "PLAIN"
	env.From = ""
	env.TLSVersion, env.TLSCipher = "", ""
	if res := check(t, c, env, testMessage); res.Action != Accept {
		t.Fatalf("result %+v", res)
	}
	ev := s.Events()
	if ev[0] != "connect unknown tcp6 40123 2001:db8::25" || ev[2] != "mail <>" {
		t.Errorf("events %q", ev[:3])
	}
	m := s.Macros()
	for k, want := range map[string]string{"{auth_authen}": "otrs", "{auth_type}": "PLAIN", "r": "ESMTPA",
		"{client_name}": "unknown", "{client_ptr}": "forged.example.org", "_": "unknown [2001:db8::25]"} {
		if m[k] != want {
			t.Errorf("macro %s = %q, want %q", k, m[k], want)
		}
	}
	for _, k := range []string{"{tls_version}", "{cipher}", "{mail_addr}", "{mail_host}"} {
		if v, ok := m[k]; ok {
			t.Errorf("macro %s = %q sent, want not sent (no value)", k, v)
		}
	}
}

// Every modification action, asserted on the Result and on the bytes Apply
// writes.
func TestEveryModification(t *testing.T) {
	// A replacement body of more than one 64 KiB packet, with bare LF
	// line ends that Apply must turn into CRLF.
	longLine := strings.Repeat("x", 70)
	var repl strings.Builder
	for repl.Len() < 150_000 {
		repl.WriteString(longLine + "\n")
	}
	s := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
		for _, err := range []error{
			m.AddHeader("X-Spamd-Result", "default: False [0.00 / 15.00];\n\tSYM_A(0.00)[x];\n\tSYM_B(0.00)"),
			m.InsertHeader(0, "X-Top", "first"),
			m.InsertHeader(2, "Authentication-Results", "mx1.example.net; none"),
			m.ChangeHeader(1, "Subject", "[SPAM] two spaces"),
			m.ChangeHeader(1, "Message-Id", ""), // delete; names match case-insensitively
			m.ChangeHeader(3, "X-Absent", "added because index is past the last"),
			m.ChangeHeader(1, "X-Also-Absent", ""), // deleting nothing is a no-op
			m.ReplaceBody(strings.NewReader(repl.String())),
			m.AddRecipient("dave@example.net", ""),
			m.AddRecipient("erin@example.net", "NOTIFY=NEVER"),
			m.DeleteRecipient("bob@example.net"),
			m.ChangeFrom("bounces@sender.example", "SIZE=1000"),
		} {
			if err != nil {
				return nil, err
			}
		}
		return gomilter.RespAccept, nil
	}}
	addr := startMilter(t, s, allActions, 0)
	c := newTestChain(t, Config{Name: "mod", Address: addr})
	res := check(t, c, testEnvelope(), testMessage)
	if res.Action != Accept {
		t.Fatalf("result %+v", res)
	}
	kinds := []ModKind{}
	for _, m := range res.Mods {
		kinds = append(kinds, m.Kind)
		if m.Milter != "mod" {
			t.Errorf("mod %v from milter %q", m.Kind, m.Milter)
		}
	}
	wantKinds := []ModKind{AddHeader, InsertHeader, InsertHeader, ChangeHeader, ChangeHeader, ChangeHeader,
		ChangeHeader, ReplaceBody, AddRcpt, AddRcpt, DelRcpt, ChangeFrom}
	if !reflect.DeepEqual(kinds, wantKinds) {
		t.Fatalf("kinds %v, want %v", kinds, wantKinds)
	}
	if got := string(res.Mods[7].Body); got != repl.String() {
		t.Errorf("replacement body: %d bytes, want %d", len(got), repl.Len())
	}
	if got, want := res.RecipientsAdded(), []string{"dave@example.net", "erin@example.net"}; !reflect.DeepEqual(got, want) {
		t.Errorf("RecipientsAdded %q, want %q", got, want)
	}
	if res.Mods[9].Args != "NOTIFY=NEVER" {
		t.Errorf("ADDRCPT_PAR args %q", res.Mods[9].Args)
	}
	if got, want := res.RecipientsDeleted(), []string{"bob@example.net"}; !reflect.DeepEqual(got, want) {
		t.Errorf("RecipientsDeleted %q, want %q", got, want)
	}
	if from, ok := res.NewFrom(); !ok || from != "bounces@sender.example" || res.Mods[11].Args != "SIZE=1000" {
		t.Errorf("NewFrom %q %v args %q", from, ok, res.Mods[11].Args)
	}
	if !res.ChangesContent() {
		t.Error("ChangesContent false")
	}
	want := "X-Top: first\r\n" +
		"Received: from mail.sender.example ([192.0.2.7])\r\n" +
		"\tby mx1.example.net; Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
		"Authentication-Results: mx1.example.net; none\r\n" +
		"From: Alice <alice@sender.example>\r\n" +
		"To: bob@example.net, carol@example.net\r\n" +
		"Subject: [SPAM] two spaces\r\n" +
		"X-Spamd-Result: default: False [0.00 / 15.00];\r\n\tSYM_A(0.00)[x];\r\n\tSYM_B(0.00)\r\n" +
		"X-Absent: added because index is past the last\r\n" +
		"\r\n" +
		strings.ReplaceAll(repl.String(), "\n", "\r\n")
	if got := applied(t, res, testMessage); got != want {
		t.Errorf("Apply:\n got %q\nwant %q", head(got), head(want))
	}
}

func head(s string) string {
	if len(s) > 600 {
		return s[:600] + "…"
	}
	return s
}

// Every reply type, at every stage where a milter can give it.
func TestReplyTypes(t *testing.T) {
	multi, err := gomilter.RejectWithCodeAndReason(550, "5.7.1 Virus found: Eicar\nSee https://av.example/faq\n100% sure")
	if err != nil {
		t.Fatal(err)
	}
	gtube, _ := gomilter.RejectWithCodeAndReason(554, "5.7.1 Gtube pattern")
	soft, _ := gomilter.RejectWithCodeAndReason(451, "4.7.1 Try again")
	noEnh, _ := gomilter.RejectWithCodeAndReason(550, "Go away")
	wrongClass, _ := gomilter.RejectWithCodeAndReason(451, "5.7.1 class mismatch")
	replies := []struct {
		name string
		resp *gomilter.Response
		want Result
	}{
		{"reject", gomilter.RespReject, Result{Action: Reject, Code: 550, Enhanced: "5.7.1", Text: "Message rejected by content scanner t"}},
		{"tempfail", gomilter.RespTempFail, Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1", Text: "Message deferred by content scanner t, try again later"}},
		{"discard", gomilter.RespDiscard, Result{Action: Reject, Code: 550, Enhanced: "5.7.1", Text: "Message rejected by content scanner t"}},
		{"replycode", gtube, Result{Action: Reject, Code: 554, Enhanced: "5.7.1", Text: "Gtube pattern"}},
		{"multiline", multi, Result{Action: Reject, Code: 550, Enhanced: "5.7.1", Text: "Virus found: Eicar\nSee https://av.example/faq\n100% sure"}},
		{"replycode-4xx", soft, Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1", Text: "Try again"}},
		{"replycode-no-enhanced", noEnh, Result{Action: Reject, Code: 550, Enhanced: "5.7.1", Text: "Go away"}},
		{"replycode-class-fixed", wrongClass, Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1", Text: "class mismatch"}},
	}
	stages := []string{"connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom"}
	for _, r := range replies {
		for _, stage := range stages {
			if r.name == "discard" && (stage == "connect" || stage == "helo") {
				continue // go-milter turns a connection-level discard into continue, as Postfix does
			}
			t.Run(r.name+"/"+stage, func(t *testing.T) {
				s := &script{resp: map[string]*gomilter.Response{stage: r.resp}}
				if stage == "eom" {
					s.eom = func(m gomilter.Modifier) (*gomilter.Response, error) {
						// Modifications before a refusal do not count.
						if err := m.AddHeader("X-Ignored", "yes"); err != nil {
							return nil, err
						}
						return r.resp, nil
					}
				}
				c := newTestChain(t, Config{Name: "t", Address: startMilter(t, s, allActions, 0)})
				res := check(t, c, testEnvelope(), testMessage)
				want := r.want
				want.Milter = "t"
				if !reflect.DeepEqual(*res, want) {
					t.Errorf("got %+v\nwant %+v", *res, want)
				}
			})
		}
	}
}

func TestQuarantineRejects(t *testing.T) {
	s := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
		if err := m.AddHeader("X-Spam", "Yes"); err != nil {
			return nil, err
		}
		if err := m.Quarantine("Spam message\nquarantined"); err != nil {
			return nil, err
		}
		return gomilter.RespAccept, nil // rspamd's quarantine_on_reject does this
	}}
	c := newTestChain(t, Config{Name: "rspamd", Address: startMilter(t, s, allActions, 0)})
	res := check(t, c, testEnvelope(), testMessage)
	want := Result{Action: Reject, Code: 550, Enhanced: "5.7.1",
		Text: "Message rejected by content scanner rspamd: Spam message quarantined", Milter: "rspamd"}
	if !reflect.DeepEqual(*res, want) {
		t.Errorf("got %+v\nwant %+v", *res, want)
	}
}

// Accept before the content ends the milter's part: the message is not
// even opened.
func TestAcceptEarly(t *testing.T) {
	for _, stage := range []string{"connect", "helo", "mail", "rcpt"} {
		s := &script{resp: map[string]*gomilter.Response{stage: gomilter.RespAccept}}
		c := newTestChain(t, Config{Address: startMilter(t, s, allActions, 0)})
		var opens atomic.Int32
		res, err := c.Check(context.Background(), testEnvelope(), opener(testMessage, &opens))
		if err != nil || res.Action != Accept {
			t.Fatalf("%s: %+v %v", stage, res, err)
		}
		if opens.Load() != 0 {
			t.Errorf("%s: message opened %d times after an early accept", stage, opens.Load())
		}
	}
}

// The protocol steps a milter negotiates away are not sent, replies it
// negotiated away are not awaited, SKIP stops the header or body stream,
// and SMFIP_HDR_LEADSPC gets the value as written.
func TestNegotiatedSteps(t *testing.T) {
	clamavLike := gomilter.OptNoHelo | gomilter.OptNoEOH | gomilter.OptNoData | gomilter.OptNoUnknown
	rspamdLike := gomilter.OptNoReplies // 0xff080: only the end of message is answered
	cases := []struct {
		name      string
		protocol  gomilter.OptProtocol
		resp      map[string]*gomilter.Response
		events    []string
		headers   int
		body      string
		leadSpace bool
	}{
		{name: "clamav-milter", protocol: clamavLike,
			events:  []string{"connect", "mail", "rcpt", "rcpt", "header", "header", "header", "header", "header", "body", "eom"},
			headers: 5, body: "Hello Bob,\r\n\r\nthis is the body.\r\n"},
		{name: "rspamd", protocol: rspamdLike,
			events:  []string{"connect", "helo", "mail", "rcpt", "rcpt", "data", "header", "header", "header", "header", "header", "eoh", "body", "eom"},
			headers: 5, body: "Hello Bob,\r\n\r\nthis is the body.\r\n"},
		{name: "no-content", protocol: gomilter.OptNoHeaders | gomilter.OptNoBody,
			events: []string{"connect", "helo", "mail", "rcpt", "rcpt", "data", "eoh", "eom"}},
		{name: "no-connect-mail-rcpt", protocol: gomilter.OptNoConnect | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo,
			events:  []string{"helo", "data", "header", "header", "header", "header", "header", "eoh", "body", "eom"},
			headers: 5, body: "Hello Bob,\r\n\r\nthis is the body.\r\n"},
		{name: "skip", protocol: gomilter.OptSkip,
			resp:    map[string]*gomilter.Response{"header": gomilter.RespSkip, "rcpt": gomilter.RespSkip},
			events:  []string{"connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom"},
			headers: 1, body: "Hello Bob,\r\n\r\nthis is the body.\r\n"},
		{name: "leadspace", protocol: gomilter.OptHeaderLeadingSpace,
			events:  []string{"connect", "helo", "mail", "rcpt", "rcpt", "data", "header", "header", "header", "header", "header", "eoh", "body", "eom"},
			headers: 5, body: "Hello Bob,\r\n\r\nthis is the body.\r\n", leadSpace: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &script{resp: tc.resp, eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
				if err := m.AddHeader("X-Scanned", "yes"); err != nil {
					return nil, err
				}
				return gomilter.RespAccept, nil
			}}
			c := newTestChain(t, Config{Address: startMilter(t, s, allActions, tc.protocol)})
			res := check(t, c, testEnvelope(), testMessage)
			if res.Action != Accept || len(res.Mods) != 1 {
				t.Fatalf("result %+v", res)
			}
			var ev []string
			for _, e := range s.Events() {
				ev = append(ev, strings.Fields(e)[0])
			}
			if !reflect.DeepEqual(ev, tc.events) {
				t.Errorf("events\n got %q\nwant %q", ev, tc.events)
			}
			if h := s.Headers(); len(h) != tc.headers {
				t.Errorf("%d headers sent, want %d", len(h), tc.headers)
			} else if tc.headers == 5 {
				wantSubject := "Subject: two spaces"
				if tc.leadSpace {
					wantSubject = "Subject:  two spaces"
				}
				if h[3] != wantSubject {
					t.Errorf("subject sent as %q, want %q", h[3], wantSubject)
				}
			}
			if got := s.Body(); got != tc.body {
				t.Errorf("body %q, want %q", got, tc.body)
			}
			wantField := "X-Scanned: yes\r\n"
			if tc.leadSpace {
				wantField = "X-Scanned:yes\r\n" // the milter's value is the exact text after the colon
			}
			if got := applied(t, res, testMessage); !strings.Contains(got, "Message-ID: <1@check.sender.example>\r\n"+wantField+"\r\n") {
				t.Errorf("Apply: %q", got)
			}
		})
	}
}

// The second milter sees the first one's header and body changes, its
// header indexes refer to that header, and the modifications add up.
func TestChainOrder(t *testing.T) {
	first := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
		if err := m.InsertHeader(0, "X-First", "1"); err != nil {
			return nil, err
		}
		if err := m.ReplaceBody(strings.NewReader("new body\r\n")); err != nil {
			return nil, err
		}
		return gomilter.RespAccept, nil
	}}
	second := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
		// The first field is now X-First; insert after it.
		if err := m.InsertHeader(1, "X-Second", "2"); err != nil {
			return nil, err
		}
		if err := m.ChangeHeader(1, "X-First", "changed"); err != nil {
			return nil, err
		}
		return gomilter.RespContinue, nil // continue at end of message counts as accept
	}}
	var opens atomic.Int32
	c := newTestChain(t,
		Config{Name: "first", Address: startMilter(t, first, allActions, 0)},
		Config{Name: "second", Address: startMilter(t, second, allActions, 0)})
	res, err := c.Check(context.Background(), testEnvelope(), opener(testMessage, &opens))
	if err != nil || res.Action != Accept {
		t.Fatalf("%+v %v", res, err)
	}
	if h := second.Headers(); len(h) != 6 || h[0] != "X-First:1" {
		t.Errorf("second milter saw headers %q", h)
	}
	if b := second.Body(); b != "new body\r\n" {
		t.Errorf("second milter saw body %q", b)
	}
	if opens.Load() != 1 {
		t.Errorf("message opened %d times; the second milter streams the replacement", opens.Load())
	}
	want := "X-First: changed\r\nX-Second: 2\r\n" + testMessage[:strings.Index(testMessage, "\r\n\r\n")+4] + "new body\r\n"
	if got := applied(t, res, testMessage); got != want {
		t.Errorf("Apply:\n got %q\nwant %q", got, want)
	}
}

// A later milter's refusal wins; the one before it has been asked.
func TestSecondMilterRejects(t *testing.T) {
	first := &script{}
	gtube, _ := gomilter.RejectWithCodeAndReason(554, "5.7.1 Gtube pattern")
	second := &script{eom: func(gomilter.Modifier) (*gomilter.Response, error) { return gtube, nil }}
	third := &script{}
	var opens atomic.Int32
	c := newTestChain(t,
		Config{Name: "a", Address: startMilter(t, first, allActions, 0)},
		Config{Name: "b", Address: startMilter(t, second, allActions, 0)},
		Config{Name: "c", Address: startMilter(t, third, allActions, 0)})
	res, err := c.Check(context.Background(), testEnvelope(), opener(testMessage, &opens))
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != Reject || res.Code != 554 || res.Milter != "b" || res.Text != "Gtube pattern" {
		t.Errorf("result %+v", res)
	}
	// Every milter's envelope stages run at once (as Postfix sends each
	// event to every milter); the third may have seen the envelope, but
	// never the message, and its conversation ends with ABORT.
	deadline := time.Now().Add(5 * time.Second)
	for third.conns.Load() != 0 && !slices.Contains(third.Events(), "abort") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for _, ev := range third.Events() {
		if ev == "header" || ev == "eoh" || strings.HasPrefix(ev, "body") || ev == "eom" {
			t.Errorf("third milter saw the message after a rejection: %q", third.Events())
			break
		}
	}
	if third.conns.Load() != 0 && !slices.Contains(third.Events(), "abort") {
		t.Errorf("third milter's conversation not aborted: %q", third.Events())
	}
	if opens.Load() != 2 {
		t.Errorf("message opened %d times, want 2 (once per milter that read it)", opens.Load())
	}
}

func TestUnixSocket(t *testing.T) {
	s := &script{}
	path := t.TempDir() + "/m.sock"
	ln, err := netListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return &testMilter{s: s} }))
	go srv.Serve(ln) //nolint:errcheck
	defer srv.Close()
	c := newTestChain(t, Config{Address: "unix:" + path})
	if res := check(t, c, testEnvelope(), testMessage); res.Action != Accept {
		t.Fatalf("%+v", res)
	}
	if len(s.Events()) == 0 {
		t.Error("milter on unix socket saw nothing")
	}
}

// A milter slower than ReadTimeout fails per OnError; SMFIR_PROGRESS keeps
// a slow one alive.
func TestTimeoutAndProgress(t *testing.T) {
	slow := &script{eom: func(gomilter.Modifier) (*gomilter.Response, error) {
		time.Sleep(1500 * time.Millisecond)
		return gomilter.RespAccept, nil
	}}
	c := newTestChain(t, Config{Name: "slow", Address: startMilter(t, slow, allActions, 0), ReadTimeout: 300 * time.Millisecond})
	start := time.Now()
	res := check(t, c, testEnvelope(), testMessage)
	if el := time.Since(start); el > time.Second {
		t.Errorf("timeout took %v", el)
	}
	want := Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1", Text: "Content scanner slow unavailable, try again later", Milter: "slow"}
	if !reflect.DeepEqual(*res, want) {
		t.Errorf("got %+v\nwant %+v", *res, want)
	}

	progressing := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
		for range 6 {
			time.Sleep(150 * time.Millisecond)
			if err := m.Progress(); err != nil {
				return nil, err
			}
		}
		return gomilter.RespAccept, nil
	}}
	c = newTestChain(t, Config{Address: startMilter(t, progressing, allActions, 0), ReadTimeout: 300 * time.Millisecond})
	if res := check(t, c, testEnvelope(), testMessage); res.Action != Accept {
		t.Errorf("milter sending progress: %+v", res)
	}
}

// An unreachable milter, per OnError; with accept the next milter still
// decides.
func TestOnErrorUnreachable(t *testing.T) {
	dead := "inet:127.0.0.1:" + itoa(freePort(t))
	next := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
		if err := m.AddHeader("X-Next", "ran"); err != nil {
			return nil, err
		}
		return gomilter.RespAccept, nil
	}}
	nextAddr := startMilter(t, next, allActions, 0)
	cases := []struct {
		onError string
		want    Result
	}{
		{"", Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1", Text: "Content scanner dead unavailable, try again later", Milter: "dead"}},
		{"tempfail", Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1", Text: "Content scanner dead unavailable, try again later", Milter: "dead"}},
		{"reject", Result{Action: Reject, Code: 554, Enhanced: "5.7.1", Text: "Content scanner dead failed, message refused", Milter: "dead"}},
		{"accept", Result{Action: Accept, Mods: []Modification{{Kind: AddHeader, Milter: "next", Name: "X-Next", Value: "ran"}}}},
	}
	for _, tc := range cases {
		c := newTestChain(t,
			Config{Name: "dead", Address: dead, OnError: tc.onError, ConnectTimeout: 2 * time.Second},
			Config{Name: "next", Address: nextAddr})
		res := check(t, c, testEnvelope(), testMessage)
		if !reflect.DeepEqual(*res, tc.want) {
			t.Errorf("on_error %q:\n got %+v\nwant %+v", tc.onError, *res, tc.want)
		}
	}
}

// The caller's context ends a conversation at once and is reported as the
// caller's error, not blamed on the milter.
func TestContextCancel(t *testing.T) {
	stuck := &script{eom: func(gomilter.Modifier) (*gomilter.Response, error) {
		time.Sleep(3 * time.Second)
		return gomilter.RespAccept, nil
	}}
	c := newTestChain(t, Config{Address: startMilter(t, stuck, allActions, 0)})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := c.Check(ctx, testEnvelope(), opener(testMessage, nil))
	if err == nil || ctx.Err() == nil || res != nil {
		t.Fatalf("Check = %+v, %v; want the context's error", res, err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("cancel took %v", el)
	}
}

func TestHeaderTooLarge(t *testing.T) {
	s := &script{}
	c := newTestChain(t, Config{Name: "t", Address: startMilter(t, s, allActions, 0)})
	msg := strings.Repeat("X-Filler: "+strings.Repeat("a", 100)+"\r\n", 11000) + "\r\nbody\r\n"
	res := check(t, c, testEnvelope(), msg)
	if res.Action != Reject || res.Code != 552 || res.Enhanced != "5.3.4" {
		t.Errorf("result %+v", res)
	}
}

func TestCheckNoMilters(t *testing.T) {
	c := newTestChain(t)
	var opens atomic.Int32
	res, err := c.Check(context.Background(), testEnvelope(), opener(testMessage, &opens))
	if err != nil || res.Action != Accept || opens.Load() != 0 {
		t.Errorf("%+v %v opens=%d", res, err, opens.Load())
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{Address: ""},
		{Address: "tcp:1.2.3.4:5"},
		{Address: "inet:nohost"},
		{Address: "unix:"},
		{Address: "127.0.0.1:1", OnError: "drop"},
		{Address: "127.0.0.1:1", ReadTimeout: -1},
		{Address: "127.0.0.1:1", Name: "spam\r\n250 ok"},
	}
	for _, cfg := range bad {
		if _, err := NewChain([]Config{cfg}, nil); err == nil {
			t.Errorf("NewChain(%+v) accepted", cfg)
		}
	}
}

func TestParseAddress(t *testing.T) {
	cases := map[string][2]string{
		"unix:/run/x.sock":          {"unix", "/run/x.sock"},
		"local:/run/x.sock":         {"unix", "/run/x.sock"},
		"/run/x.sock":               {"unix", "/run/x.sock"},
		"inet:127.0.0.1:11332":      {"tcp", "127.0.0.1:11332"},
		"inet:11333@127.0.0.1":      {"tcp", "127.0.0.1:11333"},
		"inet6:[::1]:11332":         {"tcp", "[::1]:11332"},
		"inet:scanner.internal:100": {"tcp", "scanner.internal:100"},
		"127.0.0.1:11332":           {"tcp", "127.0.0.1:11332"},
	}
	for in, want := range cases {
		n, a, err := parseAddress(in)
		if err != nil || n != want[0] || a != want[1] {
			t.Errorf("parseAddress(%q) = %q %q %v, want %q", in, n, a, err, want)
		}
	}
}

// Messages without a body, or without an empty line after the header,
// reach the milter whole, and Apply keeps their shape.
func TestOddMessages(t *testing.T) {
	// An empty body reaches the milter as one empty line (see body()).
	cases := []struct{ name, msg, body, applied string }{
		{"empty body", "Subject: x\r\n\r\n", "\r\n", "Subject: x\r\nX-Scanned: yes\r\n\r\n"},
		{"header only", "Subject: x\r\n", "\r\n", "Subject: x\r\nX-Scanned: yes\r\n"},
		{"no empty line", "Subject: x\r\nnot a field\r\n", "not a field\r\n", "Subject: x\r\nX-Scanned: yes\r\n\r\nnot a field\r\n"},
		{"body only", "\r\nbody\r\n", "body\r\n", "X-Scanned: yes\r\n\r\nbody\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &script{eom: func(m gomilter.Modifier) (*gomilter.Response, error) {
				if err := m.AddHeader("X-Scanned", "yes"); err != nil {
					return nil, err
				}
				return gomilter.RespAccept, nil
			}}
			c := newTestChain(t, Config{Address: startMilter(t, s, allActions, 0)})
			res := check(t, c, testEnvelope(), tc.msg)
			if res.Action != Accept {
				t.Fatalf("%+v", res)
			}
			if got := s.Body(); got != tc.body {
				t.Errorf("milter saw body %q, want %q", got, tc.body)
			}
			if got := applied(t, res, tc.msg); got != tc.applied {
				t.Errorf("Apply = %q, want %q", got, tc.applied)
			}
		})
	}
}

// Apply streams: writing a 20 MiB message with a changed header allocates
// a small, fixed amount, not the message.
func TestApplyStreams(t *testing.T) {
	res := &Result{Mods: []Modification{{Kind: AddHeader, Name: "X-A", Value: "b"}}}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var n countWriter
	if err := res.Apply(&n, newSynth(20<<20)); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if want := int64(20<<20 + len("X-A: b\r\n")); int64(n) != want {
		t.Errorf("wrote %d bytes, want %d", n, want)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("Apply allocated %d bytes for a 20 MiB message", alloc)
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// A check begun and then closed without Check (the caller refused the
// message on its own, e.g. for DMARC, while the envelope went to the
// milters) ends every conversation with ABORT and never sends the message.
func TestBeginThenCloseSendsNoContent(t *testing.T) {
	first, second := &script{}, &script{}
	c := newTestChain(t,
		Config{Name: "a", Address: startMilter(t, first, allActions, 0)},
		Config{Name: "b", Address: startMilter(t, second, allActions, 0)})
	r := c.Begin(context.Background(), testEnvelope())
	time.Sleep(50 * time.Millisecond) // let the envelope stages run
	r.Close()
	r.Close() // twice is harmless
	for _, s := range []*script{first, second} {
		ev := waitEvent(t, s, "abort")
		if !slices.Contains(ev, "abort") {
			t.Errorf("conversation not aborted: %q", ev)
		}
		for _, e := range ev {
			if e == "header" || e == "eoh" || strings.HasPrefix(e, "body") || e == "eom" {
				t.Errorf("milter saw the message: %q", ev)
				break
			}
		}
	}
	if _, err := r.Check(opener(testMessage, nil)); err == nil {
		t.Error("Check after Close succeeded")
	}
}

// Observe gets each milter's verdict, the failed one's as "error", and
// none from a milter the chain did not reach.
func TestObserve(t *testing.T) {
	gtube, _ := gomilter.RejectWithCodeAndReason(554, "5.7.1 Gtube pattern")
	c := newTestChain(t,
		Config{Name: "dead", Address: "inet:127.0.0.1:" + itoa(freePort(t)), OnError: "accept", ConnectTimeout: 2 * time.Second},
		Config{Name: "ok", Address: startMilter(t, &script{}, allActions, 0)},
		Config{Name: "spam", Address: startMilter(t, &script{eom: func(gomilter.Modifier) (*gomilter.Response, error) { return gtube, nil }}, allActions, 0)},
		Config{Name: "unreached", Address: startMilter(t, &script{}, allActions, 0)})
	var mu sync.Mutex
	var got []string
	c.Observe = func(name, verdict string, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if took < 0 {
			t.Errorf("%s: negative duration %v", name, took)
		}
		got = append(got, name+"="+verdict)
	}
	if res := check(t, c, testEnvelope(), testMessage); res.Action != Reject || res.Milter != "spam" {
		t.Fatalf("result %+v", res)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"dead=error", "ok=accept", "spam=reject"}; !slices.Equal(got, want) {
		t.Errorf("observed %q, want %q", got, want)
	}
}

// waitEvent waits up to 5 s for the milter to have recorded ev.
func waitEvent(t *testing.T, s *script, ev string) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(s.Events(), ev) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return s.Events()
}

// A check begun in the dialog: the first recipient opens every
// conversation, later ones follow as AddRcpt passes them on, and the
// queue ID and DATA come with EndEnvelope; the milters see the message
// only with Check.
func TestBeginTransaction(t *testing.T) {
	first, second := &script{}, &script{}
	c := newTestChain(t,
		Config{Name: "a", Address: startMilter(t, first, allActions, 0)},
		Config{Name: "b", Address: startMilter(t, second, allActions, 0)})
	env := testEnvelope()
	env.QueueID, env.Rcpts = "", env.Rcpts[:1]
	r := c.BeginTransaction(context.Background(), env)
	defer r.Close()
	for _, s := range []*script{first, second} {
		if ev := waitEvent(t, s, "rcpt <bob@example.net>"); !slices.Contains(ev, "rcpt <bob@example.net>") {
			t.Fatalf("first recipient not passed on before DATA: %q", ev)
		}
	}
	if _, err := r.Check(opener(testMessage, nil)); err == nil {
		t.Error("Check before EndEnvelope succeeded")
	}
	r.AddRcpt("carol@example.net")
	r.EndEnvelope("4XyZ1abc")
	res, err := r.Check(opener(testMessage, nil))
	if err != nil || res.Action != Accept {
		t.Fatalf("Check: %+v, %v", res, err)
	}
	for _, s := range []*script{first, second} {
		ev := s.Events()
		want := []string{"mail <alice@sender.example>", "rcpt <bob@example.net>", "rcpt <carol@example.net>", "data"}
		var got []string
		for _, e := range ev {
			if slices.Contains(want, e) {
				got = append(got, e)
			}
		}
		if !slices.Equal(got, want) || !slices.Contains(ev, "eom") {
			t.Errorf("events %q, want %q in order, then the message", ev, want)
		}
		if id := s.Macros()["i"]; id != "4XyZ1abc" {
			t.Errorf("queue ID macro %q, want the one EndEnvelope gave", id)
		}
	}
}

// A transaction that ends before DATA (RSET, QUIT, every later command
// refused): Close ends the conversations waiting for recipients with
// ABORT, and nothing hangs.
func TestBeginTransactionThenClose(t *testing.T) {
	s := &script{}
	c := newTestChain(t, Config{Name: "a", Address: startMilter(t, s, allActions, 0)})
	env := testEnvelope()
	env.Rcpts = env.Rcpts[:1]
	r := c.BeginTransaction(context.Background(), env)
	waitEvent(t, s, "rcpt <bob@example.net>")
	r.Close()
	ev := waitEvent(t, s, "abort")
	if !slices.Contains(ev, "abort") || slices.Contains(ev, "data") {
		t.Errorf("events %q, want ABORT and no DATA", ev)
	}
}
