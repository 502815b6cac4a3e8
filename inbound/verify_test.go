package inbound_test

import (
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/inbound"
	"securerelay/internal/loopback"
	"securerelay/internal/testutil"
	"securerelay/smtpd"
)

// startDownstream is the shared recording peer as a downstream system
// that knows one user; its Rcpts count the probes.
func startDownstream(t *testing.T, lmtp bool) (*testutil.Peer, string) {
	d := testutil.StartPeer(t, testutil.PeerOptions{Domain: "downstream.test", LMTP: lmtp,
		Rcpt: func(to string) error {
			if to != "bob@ours.test" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}})
	return d, d.Addr
}

// Recipients verified against the downstream system: an existing one is
// accepted, an unknown one refused with 550 5.1.1, both answers cached;
// a downstream that is down gives 450 4.1.1, never an accept.
func TestRecipientVerification(t *testing.T) {
	for _, kind := range []string{"smtp", "lmtp"} {
		t.Run(kind, func(t *testing.T) {
			d, addr := startDownstream(t, kind == "lmtp")
			v := &inbound.Verifier{LMTP: kind == "lmtp", Addr: addr, Helo: "mx.ours.test", Timeout: 5 * time.Second,
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
			if n := len(d.Rcpts()); n != 2 {
				t.Errorf("%d probes for 6 RCPTs, want 2 (answers cached)", n)
			}
		})
	}
	dead := loopback.Addr(t)
	v := &inbound.Verifier{Addr: dead, Helo: "mx.ours.test", Timeout: time.Second, PositiveTTL: time.Hour, NegativeTTL: time.Hour}
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Verifiers: map[string]*inbound.Verifier{"ours.test": v}})
	_, err := r.Rcpt(&smtpd.State{}, "bob@ours.test", nil)
	if c, e := code(err); c != 450 || e != (smtp.EnhancedCode{4, 1, 1}) {
		t.Errorf("downstream down: %d %v (%v), want 450 4.1.1", c, e, err)
	}
}
