package outbound_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/internal/loopback"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/tlspolicy"
)

// A message with lines a naive transfer would get wrong: a lone dot (end
// of data unless stuffed) and lines starting with dots.
const message = "Received: from client.example.org ([192.0.2.1])\r\n\tby mx.ours.test (securerelay) with ESMTP id 1\r\n" +
	"From: <sender@ours.test>\r\nTo: <a@remote.test>\r\nSubject: test\r\n\r\nline\r\n.\r\n..two dots\r\n.leading\r\nend\r\n"

func TestDeliverSMTPRoute(t *testing.T) {
	h := newHop(t, hopOptions{})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	sp := newSpool(t)

	d := sp.put("sender@ours.test", []string{"a@remote.test", "b@remote.test"}, message)
	res := deliver(t, e, d)
	for i, r := range res {
		check(t, d.Rcpts[i], r, queue.Delivered, "2.0.0")
		if r.TLS != "" {
			t.Errorf("TLS %q with a next hop without STARTTLS", r.TLS)
		}
		if want := "127.0.0.1[127.0.0.1]:" + h.port; r.Relay != want {
			t.Errorf("relay %q, want %q", r.Relay, want)
		}
	}
	m := h.next()
	if m.From != "sender@ours.test" || strings.Join(m.To, ",") != "a@remote.test,b@remote.test" {
		t.Errorf("next hop got MAIL FROM:<%s> RCPT TO:%v", m.From, m.To)
	}
	if string(m.Data) != message {
		t.Errorf("data differs:\n got %q\nwant %q", m.Data, message)
	}
	if m.Helo != "relay.ours.test" {
		t.Errorf("EHLO %q, want the configured name", m.Helo)
	}
	h.none()
}

func TestDeliverNullSender(t *testing.T) {
	h := newHop(t, hopOptions{})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	d := newSpool(t).put("", []string{"a@remote.test"}, message)
	check(t, "null sender", deliver(t, e, d)[0], queue.Delivered, "2.0.0")
	if m := h.next(); m.From != "" {
		t.Errorf("MAIL FROM:<%s>, want <>", m.From)
	}
}

func TestConnectionReuse(t *testing.T) {
	for _, tc := range []struct {
		idle  time.Duration
		conns int
	}{{time.Minute, 1}, {0, 3}} {
		t.Run(fmt.Sprint("idle=", tc.idle), func(t *testing.T) {
			h := newHop(t, hopOptions{})
			e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) { o.IdleTimeout = tc.idle })
			sp := newSpool(t)
			for i := 0; i < 3; i++ {
				d := sp.put("sender@ours.test", []string{fmt.Sprintf("r%d@remote.test", i)}, message)
				check(t, "message", deliver(t, e, d)[0], queue.Delivered, "2.0.0")
				if m := h.next(); m.To[0] != d.Rcpts[0] || string(m.Data) != message {
					t.Errorf("message %d: to %v, %d bytes", i, m.To, len(m.Data))
				}
			}
			if n := h.Conns(); n != tc.conns {
				t.Errorf("next hop saw %d connections for 3 messages, want %d", n, tc.conns)
			}
		})
	}
}

// A pooled session the peer has closed in the meantime is not a delivery
// failure: the engine retries once on a fresh connection.
func TestStalePooledConnection(t *testing.T) {
	h := newHop(t, hopOptions{})
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) { o.IdleTimeout = time.Minute })
	sp := newSpool(t)
	check(t, "first", deliver(t, e, sp.put("s@ours.test", []string{"a@remote.test"}, message))[0], queue.Delivered, "2.0.0")
	h.next()
	h.dropSessions()
	check(t, "after the peer closed", deliver(t, e, sp.put("s@ours.test", []string{"b@remote.test"}, message))[0], queue.Delivered, "2.0.0")
	if m := h.next(); m.To[0] != "b@remote.test" {
		t.Errorf("second message to %v", m.To)
	}
	if n := h.Conns(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// When the peer closed every pooled session, the retry must not take the
// next stale one from the pool (and fail the delivery with it): it goes
// to a fresh connection.
func TestAllPooledConnectionsStale(t *testing.T) {
	var mails atomic.Int32
	both := make(chan struct{})
	h := newHop(t, hopOptions{Mail: func(string) error {
		// Hold the first two transactions until both are open, so that
		// the engine needs (and then pools) two sessions.
		if mails.Add(1) == 2 {
			close(both)
		}
		select {
		case <-both:
		case <-time.After(testTimeout):
		}
		return nil
	}})
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) { o.IdleTimeout = time.Minute })
	sp := newSpool(t)
	var wg sync.WaitGroup
	for _, rc := range []string{"a@remote.test", "b@remote.test"} {
		d := sp.put("s@ours.test", []string{rc}, message)
		wg.Go(func() { check(t, rc, deliver(t, e, d)[0], queue.Delivered, "2.0.0") })
	}
	wg.Wait()
	h.next()
	h.next()
	if n := h.Conns(); n != 2 {
		t.Fatalf("%d connections for two concurrent deliveries, want 2", n)
	}
	h.dropSessions()
	check(t, "after the peer closed both", deliver(t, e, sp.put("s@ours.test", []string{"c@remote.test"}, message))[0], queue.Delivered, "2.0.0")
	if m := h.next(); m.To[0] != "c@remote.test" {
		t.Errorf("third message to %v", m.To)
	}
	if n := h.Conns(); n != 3 {
		t.Errorf("%d connections, want 3 (one fresh after the stale one)", n)
	}
}

func TestLMTPPerRecipient(t *testing.T) {
	h := newHop(t, hopOptions{LMTP: true, Status: func(to string) error {
		switch {
		case strings.HasPrefix(to, "unknown@"):
			return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		case strings.HasPrefix(to, "full@"):
			return smtpErr(452, smtp.EnhancedCode{4, 2, 2}, "mailbox full")
		}
		return nil
	}})
	r := &outbound.Router{Local: map[string]outbound.Target{"ours.test": target(t, "lmtp://"+h.addr)}}
	// STARTTLS on: must not be attempted over LMTP.
	e := engine(t, r, nil)
	d := newSpool(t).put("sender@remote.test", []string{"good@ours.test", "unknown@ours.test", "full@ours.test"}, message)
	res := deliver(t, e, d)
	check(t, "good", res[0], queue.Delivered, "2.0.0")
	check(t, "unknown", res[1], queue.PermFail, "5.1.1")
	check(t, "full", res[2], queue.TempFail, "4.2.2")
	if !strings.Contains(res[1].Reply, "550") || !strings.Contains(res[1].Reply, "no such user") {
		t.Errorf("reply %q does not carry the next hop's answer", res[1].Reply)
	}
	m := h.next()
	if len(m.To) != 1 || m.To[0] != "good@ours.test" || string(m.Data) != message {
		t.Errorf("LMTP hop stored to %v: %q", m.To, m.Data)
	}
}

func TestRcptTempFail(t *testing.T) {
	h := newHop(t, hopOptions{Rcpt: func(to string) error {
		if strings.HasPrefix(to, "later@") {
			return smtpErr(450, smtp.EnhancedCode{4, 2, 1}, "try again later")
		}
		if strings.HasPrefix(to, "gone@") {
			return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "user unknown")
		}
		return nil
	}})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	sp := newSpool(t)
	res := deliver(t, e, sp.put("sender@ours.test", []string{"later@remote.test", "ok@remote.test", "gone@remote.test"}, message))
	check(t, "later", res[0], queue.TempFail, "4.2.1")
	check(t, "ok", res[1], queue.Delivered, "2.0.0")
	check(t, "gone", res[2], queue.PermFail, "5.1.1")
	if !strings.Contains(res[0].Reply, "450") {
		t.Errorf("reply %q lacks the remote code", res[0].Reply)
	}
	if m := h.next(); len(m.To) != 1 || m.To[0] != "ok@remote.test" {
		t.Errorf("sent to %v", m.To)
	}

	// Only refused recipients: no DATA at all.
	res = deliver(t, e, sp.put("sender@ours.test", []string{"later@remote.test"}, message))
	check(t, "only later", res[0], queue.TempFail, "4.2.1")
	h.none()
}

func TestMailPermFail(t *testing.T) {
	h := newHop(t, hopOptions{Mail: func(string) error {
		return smtpErr(550, smtp.EnhancedCode{5, 7, 1}, "sender rejected")
	}})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test", "b@remote.test"}, message))
	for i, r := range res {
		check(t, fmt.Sprint("rcpt ", i), r, queue.PermFail, "5.7.1")
	}
	h.none()
}

func TestMailTempFailWithoutEnhancedCode(t *testing.T) {
	h := newHop(t, hopOptions{Mail: func(string) error {
		return smtpErr(451, smtp.NoEnhancedCode, "local problem")
	}})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "451 without enhanced code", res[0], queue.TempFail, "4.0.0")
}

// A 5xx greeting refuses the session, not the message: keep trying.
func TestGreeting5xxIsTemporary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(testTimeout))
			fmt.Fprintf(c, "554 5.7.1 hop.test go away\r\n")
			c.Close()
		}
	}()
	e := engine(t, everything(t, "smtp://"+ln.Addr().String()), nil)
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "5xx greeting", res[0], queue.TempFail, "4.7.1")
}

func TestConnectRefusedIsTemporary(t *testing.T) {
	addr := loopback.Addr(t) // nothing listens there
	e := engine(t, everything(t, "smtp://"+addr), nil)
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "connection refused", res[0], queue.TempFail, "4.4.1")
}

// mxResolver: dest.test has two MX hosts; the preferred one is down.
func mxMock() dnstest.Mock {
	return dnstest.Mock{
		MX: map[string][]dnsutil.MX{
			"dest.test":   {{Host: "mx1.dest.test", Pref: 10}, {Host: "mx2.dest.test", Pref: 20}},
			"nullmx.test": {{Host: ".", Pref: 0}},
		},
		Host: map[string][]netip.Addr{
			"mx1.dest.test": {netip.MustParseAddr("127.0.0.2")},
			"mx2.dest.test": {netip.MustParseAddr("127.0.0.1")},
			"implicit.test": {netip.MustParseAddr("127.0.0.1")},
		},
		Fail: map[string]dnsutil.Kind{"broken.test": dnsutil.Temporary},
	}
}

const mxZone = `
dest.test.      MX 10 mx1.dest.test.
dest.test.      MX 20 mx2.dest.test.
mx1.dest.test.  A  127.0.0.2
mx2.dest.test.  A  127.0.0.1
nullmx.test.    MX 0 .
implicit.test.  A  127.0.0.1
broken.test.    MX 10 mx.broken.test.
`

// resolvers gives the same DNS data as a Mock and over the wire.
var resolvers = map[string]func(t *testing.T) dnsutil.Resolver{
	"mock": func(*testing.T) dnsutil.Resolver { return mxMock() },
	"wire": func(t *testing.T) dnsutil.Resolver {
		srv := dnstest.NewServer(t, mxZone)
		srv.ServFail("broken.test")
		return dnsutil.New(srv.Addr(), 2*time.Second)
	},
}

func TestMXFallback(t *testing.T) {
	for name, mk := range resolvers {
		t.Run(name, func(t *testing.T) {
			// The live MX binds 127.0.0.1 first; its port is the MX port,
			// where nothing listens on 127.0.0.2.
			h := newHop(t, hopOptions{})
			e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
				o.Resolver = mk(t)
				o.MXPort = h.port
			})
			sp := newSpool(t)
			res := deliver(t, e, sp.put("sender@ours.test", []string{"user@dest.test", "other@Dest.Test"}, message))
			for i, r := range res {
				check(t, fmt.Sprint("recipient ", i), r, queue.Delivered, "2.0.0")
				if want := "mx2.dest.test[127.0.0.1]:" + h.port; r.Relay != want {
					t.Errorf("relay %q, want %q", r.Relay, want)
				}
			}
			if m := h.next(); len(m.To) != 2 || string(m.Data) != message {
				t.Errorf("MX got to %v", m.To)
			}

			res = deliver(t, e, sp.put("sender@ours.test", []string{"user@implicit.test"}, message))
			check(t, "implicit MX", res[0], queue.Delivered, "2.0.0")
			h.next()
		})
	}
}

// With Self set, the MX pruning resolves each MX host once and delivery
// reuses the answer: no A/AAAA question is asked twice per attempt; an
// MX whose address is ours is cut (with those after it) and delivery goes
// to the better one.
func TestMXSelfPruningAsksDNSOnce(t *testing.T) {
	h := newHop(t, hopOptions{})
	srv := dnstest.NewServer(t, mxZone+`
backup.test.    MX 10 mx2.dest.test.
backup.test.    MX 20 self.test.
self.test.      A  192.0.2.25
`)
	e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
		o.Resolver = dnsutil.New(srv.Addr(), 2*time.Second)
		o.MXPort = h.port
		o.Self = func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.25") }
	})
	sp := newSpool(t)
	for _, rc := range []string{"user@dest.test", "user@backup.test"} {
		check(t, rc, deliver(t, e, sp.put("sender@ours.test", []string{rc}, message))[0], queue.Delivered, "2.0.0")
		h.next()
	}
	asked := map[string]int{}
	for _, q := range srv.Queries() {
		if q.Type == "A" || q.Type == "AAAA" {
			asked[q.Name+" "+q.Type]++
		}
	}
	for k, n := range asked {
		// mx2.dest.test serves both domains: once per delivery.
		if want := 1 + btoi(strings.HasPrefix(k, "mx2.dest.test ")); n != want {
			t.Errorf("%s asked %d times, want %d", k, n, want)
		}
	}
	if asked["self.test A"] != 1 || asked["mx1.dest.test A"] != 1 {
		t.Errorf("questions %v: every MX host must be resolved for the pruning", asked)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestMXDNSFailures(t *testing.T) {
	for name, mk := range resolvers {
		t.Run(name, func(t *testing.T) {
			e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
				o.Resolver = mk(t)
				o.MXPort = "1" // never reached
			})
			sp := newSpool(t)
			res := deliver(t, e, sp.put("sender@ours.test",
				[]string{"a@nullmx.test", "b@nxdomain.test", "c@broken.test", "d@nullmx.test"}, message))
			check(t, "null MX", res[0], queue.PermFail, "5.1.10")
			check(t, "NXDOMAIN", res[1], queue.PermFail, "5.1.2")
			check(t, "SERVFAIL", res[2], queue.TempFail, "4.4.3")
			check(t, "null MX again", res[3], queue.PermFail, "5.1.10")
		})
	}
}

func TestSTARTTLSToNextHop(t *testing.T) {
	h := newHop(t, hopOptions{TLS: selfSigned(t)})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "STARTTLS", res[0], queue.Delivered, "2.0.0")
	if !strings.HasPrefix(res[0].TLS, "TLS1.") || !strings.Contains(res[0].TLS, "_") {
		t.Errorf("Result.TLS = %q, want version and cipher", res[0].TLS)
	}
	if m := h.next(); !m.TLS || string(m.Data) != message {
		t.Errorf("next hop: TLS %v, data %q", m.TLS, m.Data)
	}
}

func TestSTARTTLSOff(t *testing.T) {
	h := newHop(t, hopOptions{TLS: selfSigned(t)})
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) { o.StartTLS = false })
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "no STARTTLS", res[0], queue.Delivered, "2.0.0")
	if res[0].TLS != "" || h.next().TLS {
		t.Errorf("TLS used although StartTLS is off: %q", res[0].TLS)
	}
}

// Opportunistic TLS: a failed handshake falls back to clear text.
func TestSTARTTLSHandshakeFailureFallsBack(t *testing.T) {
	h := newHop(t, hopOptions{TLS: &tls.Config{}}) // offers STARTTLS, has no certificate
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "after failed handshake", res[0], queue.Delivered, "2.0.0")
	if res[0].TLS != "" {
		t.Errorf("Result.TLS = %q after a failed handshake", res[0].TLS)
	}
	if m := h.next(); m.TLS || string(m.Data) != message {
		t.Errorf("next hop: TLS %v, data %q", m.TLS, m.Data)
	}
	h.none()
	if n := h.Conns(); n != 2 {
		t.Errorf("%d connections, want 2 (TLS attempt, then clear text)", n)
	}
}

// Route credentials over sessions the route explicitly accepts (the
// verified case and the refusals are TestRouteAuthNeedsVerifiedHost's):
// auth.tls: encrypt takes an unverified certificate, allow_insecure_auth
// clear text; without it a clear-text session gets nothing.
func TestRouteAuth(t *testing.T) {
	users := map[string]string{"relay": "pw"}
	route := func(t *testing.T, h *hop, a outbound.RouteAuth) *outbound.Router {
		tg := target(t, "smtp://"+h.addr)
		tg.Auth = &a
		return &outbound.Router{Routes: []outbound.Route{{Match: "*", Target: tg}}}
	}
	t.Run("over TLS, auth.tls encrypt", func(t *testing.T) {
		h := newHop(t, hopOptions{TLS: selfSigned(t), Users: users})
		e := engine(t, route(t, h, outbound.RouteAuth{Username: "relay", Password: "pw", TLS: tlspolicy.Encrypt}), nil)
		res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
		check(t, "AUTH", res[0], queue.Delivered, "2.0.0")
		if m := h.next(); m.Auth != "relay" || !m.TLS {
			t.Errorf("next hop: auth %q, TLS %v", m.Auth, m.TLS)
		}
	})
	t.Run("no TLS", func(t *testing.T) {
		h := newHop(t, hopOptions{Users: users, AllowInsecureAuth: true})
		e := engine(t, route(t, h, outbound.RouteAuth{Username: "relay", Password: "pw", TLS: tlspolicy.Encrypt}), nil)
		res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
		check(t, "clear text, auth.tls encrypt", res[0], queue.TempFail, "4.7.10")
		if n := h.AuthTries(); n != 0 {
			t.Errorf("password sent in clear: %d AUTH commands", n)
		}
		h.none()
	})
	t.Run("no TLS, allow_insecure_auth", func(t *testing.T) {
		h := newHop(t, hopOptions{Users: users, AllowInsecureAuth: true})
		e := engine(t, route(t, h, outbound.RouteAuth{Username: "relay", Password: "pw", AllowInsecure: true}), nil)
		res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
		check(t, "clear text allowed", res[0], queue.Delivered, "2.0.0")
		if m := h.next(); m.Auth != "relay" || m.TLS {
			t.Errorf("next hop: auth %q, TLS %v", m.Auth, m.TLS)
		}
	})
}
