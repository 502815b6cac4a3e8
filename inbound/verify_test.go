package inbound_test

import (
	"io"
	"log"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/inbound"
	"securerelay/internal/loopback"
	"securerelay/smtpd"
)

// downstream is a go-smtp server that knows one user and counts RCPTs.
type downstream struct {
	rcpts atomic.Int32
}

func (d *downstream) NewSession(*smtp.Conn) (smtp.Session, error) { return &dsSession{d}, nil }

type dsSession struct{ d *downstream }

func (s *dsSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *dsSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.d.rcpts.Add(1)
	if to != "bob@ours.test" {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
func (s *dsSession) Data(io.Reader) error { return nil }
func (s *dsSession) Reset()               {}
func (s *dsSession) Logout() error        { return nil }

func startDownstream(t *testing.T, lmtp bool) (*downstream, string) {
	d := &downstream{}
	srv := smtp.NewServer(d)
	srv.Domain = "downstream.test"
	srv.LMTP = lmtp
	srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return d, ln.Addr().String()
}

// Recipients verified against the downstream system: an existing one is
// accepted, an unknown one refused with 550 5.1.1, both answers cached;
// a downstream that is down gives 450 4.1.1, never an accept.
func TestRecipientVerification(t *testing.T) {
	for _, kind := range []string{"smtp", "lmtp"} {
		t.Run(kind, func(t *testing.T) {
			d, addr := startDownstream(t, kind == "lmtp")
			v := &inbound.Verifier{Kind: kind, Addr: addr, Helo: "mx.ours.test", Timeout: 5 * time.Second,
				PositiveTTL: time.Hour, NegativeTTL: time.Hour}
			r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Verifiers: map[string]*inbound.Verifier{"ours.test": v}})
			rcpt := func(to string) (int, smtp.EnhancedCode) {
				_, err := r.Rcpt(&smtpd.State{}, to, nil)
				return code(err)
			}
			for i := 0; i < 3; i++ {
				if c, _ := rcpt("bob@ours.test"); c != 250 {
					t.Fatalf("bob: %d", c)
				}
				if c, e := rcpt("mallory@ours.test"); c != 550 || e != (smtp.EnhancedCode{5, 1, 1}) {
					t.Fatalf("mallory: %d %v", c, e)
				}
			}
			if n := d.rcpts.Load(); n != 2 {
				t.Errorf("%d probes for 6 RCPTs, want 2 (answers cached)", n)
			}
		})
	}
	dead := loopback.Addr(t)
	v := &inbound.Verifier{Kind: "smtp", Addr: dead, Helo: "mx.ours.test", Timeout: time.Second, PositiveTTL: time.Hour, NegativeTTL: time.Hour}
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Verifiers: map[string]*inbound.Verifier{"ours.test": v}})
	_, err := r.Rcpt(&smtpd.State{}, "bob@ours.test", nil)
	if c, e := code(err); c != 450 || e != (smtp.EnhancedCode{4, 1, 1}) {
		t.Errorf("downstream down: %d %v (%v), want 450 4.1.1", c, e, err)
	}
}
