package smtp

import (
	"bufio"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// Client.StartTLS (a securerelay patch): an LMTP client keeps its own
// name in the LHLO after STARTTLS, the handshake is done when StartTLS
// returns, and the extensions are those offered inside TLS.
func TestClientStartTLSKeepsNameAndLHLO(t *testing.T) {
	ln := newLocalListener(t)
	defer ln.Close()
	seen := make(chan []string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			seen <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var lines []string
		send := func(l string) { smtpSender{c}.send(l) }
		send("220 lmtp.test LMTP ready")
		s := bufio.NewScanner(c)
		for s.Scan() {
			lines = append(lines, s.Text())
			switch s.Text() {
			case "LHLO relay.test":
				if _, ok := c.(*tls.Conn); ok {
					send("250-lmtp.test")
					send("250 REQUIRETLS")
					continue
				}
				send("250-lmtp.test")
				send("250 STARTTLS")
			case "STARTTLS":
				send("220 Go ahead")
				keypair, err := tls.X509KeyPair(localhostCert, localhostKey)
				if err != nil {
					t.Error(err)
					break
				}
				c = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{keypair}})
				s = bufio.NewScanner(c)
			case "QUIT":
				send("221 bye")
				seen <- lines
				return
			}
		}
		seen <- lines
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := NewClientLMTP(conn)
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not seen")
	}
	if err := c.StartTLS(&tls.Config{ServerName: "example.com"}); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if cs, ok := c.TLSConnectionState(); !ok || !cs.HandshakeComplete {
		t.Errorf("no finished handshake after StartTLS: %v %+v", ok, cs)
	}
	if ok, _ := c.Extension("REQUIRETLS"); !ok {
		t.Error("the extensions offered inside TLS are not reported")
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	want := []string{"LHLO relay.test", "STARTTLS", "LHLO relay.test", "QUIT"}
	got := <-seen
	if len(got) != len(want) {
		t.Fatalf("server saw %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("server saw %q, want %q", got, want)
		}
	}
}

// A failed handshake is StartTLS's error, not a later command's.
func TestClientStartTLSHandshakeError(t *testing.T) {
	ln := newLocalListener(t)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		send := smtpSender{c}.send
		send("220 lmtp.test LMTP ready")
		s := bufio.NewScanner(c)
		for s.Scan() {
			switch s.Text() {
			case "LHLO relay.test":
				send("250-lmtp.test")
				send("250 STARTTLS")
			case "STARTTLS":
				send("220 Go ahead")
				send("this is not a TLS server hello")
				return
			}
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(&tls.Config{ServerName: "example.com"}); err == nil {
		t.Fatal("StartTLS succeeded against a server that does not speak TLS")
	}
}
