package outbound_test

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"securerelay/queue"
)

// A next hop that accepts the first RCPT and drops the connection on the
// second: the first recipient never got its DATA and must be retried, not
// taken for delivered (found in review: it was the zero Result).
// These hops are raw sockets, not testutil.Peer: go-smtp cannot drop a
// connection in the middle of the RCPTs or between LMTP replies, which is
// the misbehaviour under test.
func TestConnectionLostAtRcptDefersAcceptedRecipients(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				c.Write([]byte("220 hop ESMTP\r\n"))
				rcpts := 0
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					u := strings.ToUpper(l)
					switch {
					case strings.HasPrefix(u, "EHLO"):
						c.Write([]byte("250-hop\r\n250 8BITMIME\r\n"))
					case strings.HasPrefix(u, "MAIL"):
						c.Write([]byte("250 2.1.0 ok\r\n"))
					case strings.HasPrefix(u, "RCPT"):
						rcpts++
						if rcpts == 2 {
							return // connection lost
						}
						c.Write([]byte("250 2.1.5 ok\r\n"))
					default:
						c.Write([]byte("250 ok\r\n"))
					}
				}
			}(c)
		}
	}()
	sp := newSpool(t)
	d := sp.put("sender@ours.test", []string{"a@dest.test", "b@dest.test"}, "Subject: x\r\n\r\nbody\r\n")
	e := engine(t, everything(t, "smtp://"+ln.Addr().String()), nil)
	res := deliver(t, e, d)
	for i, r := range res {
		t.Logf("rcpt %d: status=%s code=%q reply=%q", i, statusName(r.Status), r.Code, r.Reply)
	}
	for i, r := range res {
		if r.Status != queue.TempFail {
			t.Errorf("recipient %d: %s, want TempFail (DATA was never sent)", i, statusName(r.Status))
		}
	}
}

// LMTP next hop: answers the first recipient 452 after the dot, then drops
// the connection before the other recipients' replies. Those recipients
// were never confirmed and must be retried (found in review: go-smtp joins
// the per-recipient errors with the I/O error).
func TestLMTPConnectionLostAfterPartialReplies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		c.Write([]byte("220 lmtp ready\r\n"))
		inData := false
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if inData {
				if l == ".\r\n" {
					c.Write([]byte("452 4.2.2 a: mailbox full\r\n"))
					return // connection lost before b's and c's replies
				}
				continue
			}
			u := strings.ToUpper(l)
			switch {
			case strings.HasPrefix(u, "LHLO"):
				c.Write([]byte("250-lmtp\r\n250 PIPELINING\r\n"))
			case strings.HasPrefix(u, "DATA"):
				inData = true
				c.Write([]byte("354 go\r\n"))
			default:
				c.Write([]byte("250 2.0.0 ok\r\n"))
			}
		}
	}()
	sp := newSpool(t)
	d := sp.put("sender@ours.test", []string{"a@dest.test", "b@dest.test", "c@dest.test"}, "Subject: x\r\n\r\nbody\r\n")
	e := engine(t, everything(t, "lmtp://"+ln.Addr().String()), nil)
	res := deliver(t, e, d)
	for i, r := range res {
		t.Logf("rcpt %d: status=%s code=%q reply=%q", i, statusName(r.Status), r.Code, r.Reply)
		if r.Status != queue.TempFail {
			t.Errorf("recipient %d: %s, want TempFail (no reply confirmed it)", i, statusName(r.Status))
		}
	}
}
