package outbound_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"securerelay/outbound"
	"securerelay/queue"
)

// stalledHop accepts a whole message and then never answers the final
// dot, like a next hop whose content filter hangs. gotDot fires when the
// message is in. A raw socket rather than testutil.Peer: the test needs
// the hop to hold the reply to the dot forever, which go-smtp never does
// on its own, and a few lines show exactly what the hop does.
func stalledHop(t *testing.T) (addr string, gotDot chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gotDot = make(chan struct{}, 1)
	quit := make(chan struct{})
	t.Cleanup(func() { close(quit); ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * testTimeout))
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "220 stalled.test ESMTP\r\n")
		inData := false
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.TrimRight(line, "\r\n"))
			switch {
			case inData && cmd == ".":
				gotDot <- struct{}{}
				<-quit // never answer
				return
			case inData:
			case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "LHLO"):
				fmt.Fprintf(c, "250-stalled.test\r\n250 ENHANCEDSTATUSCODES\r\n")
			case strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RCPT"), cmd == "RSET", cmd == "NOOP":
				fmt.Fprintf(c, "250 2.0.0 ok\r\n")
			case cmd == "DATA":
				fmt.Fprintf(c, "354 go ahead\r\n")
				inData = true
			case cmd == "QUIT":
				fmt.Fprintf(c, "221 2.0.0 bye\r\n")
				return
			default:
				fmt.Fprintf(c, "502 5.5.1 unknown\r\n")
			}
		}
	}()
	return ln.Addr().String(), gotDot
}

// queue.Deliverer: "When ctx is cancelled (shutdown) it should return
// promptly with TempFail results" — also while waiting for a next hop's
// reply, which over SMTP may take 10 minutes and over LMTP has no bound.
func TestDeliverReturnsOnCancel(t *testing.T) {
	for _, kind := range []string{"smtp", "lmtp"} {
		t.Run(kind, func(t *testing.T) {
			addr, gotDot := stalledHop(t)
			e := engine(t, everything(t, kind+"://"+addr), func(o *outbound.EngineOptions) { o.IdleTimeout = time.Minute })
			d := newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan []queue.Result, 1)
			go func() { done <- e.Deliver(ctx, d) }()
			select {
			case <-gotDot:
			case <-time.After(testTimeout):
				t.Fatal("the message never reached the next hop")
			}
			cancel()
			select {
			case res := <-done:
				if len(res) != 1 || res[0].Status != queue.TempFail {
					t.Errorf("after cancel: %+v, want TempFail", res)
				}
			case <-time.After(testTimeout):
				t.Fatal("Deliver did not return after its context was cancelled")
			}
		})
	}
}

// The same seen from the queue: Stop with a deadline returns even though
// an attempt hangs at the next hop, and the message stays spooled.
func TestQueueStopWithHangingNextHop(t *testing.T) {
	addr, gotDot := stalledHop(t)
	e := engine(t, everything(t, "smtp://"+addr), nil)
	q, err := queue.Open(queue.Options{Dir: t.TempDir(), Retry: []time.Duration{time.Hour}, Logger: discard, Deliverer: e})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	if _, err := q.Put(queue.Envelope{From: "s@ours.test", To: []string{"a@remote.test"}, Origin: queue.OriginOutbound}, strings.NewReader(message)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gotDot:
	case <-time.After(testTimeout):
		t.Fatal("the message never reached the next hop")
	}
	stopped := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		q.Stop(ctx)
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(testTimeout):
		t.Fatal("queue.Stop hangs on a delivery that ignores its context")
	}
	if n := q.Len(); n != 1 {
		t.Errorf("queue.Len() = %d after an interrupted attempt, want 1", n)
	}
}
