package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
)

// queueRelay is an inbound relay whose downstream (LMTP, as Dovecot)
// refuses the recipients refuse names with 550 5.1.1.
type queueRelay struct {
	*Relay
	cfg   string
	mx    string
	state string
	down  *testServer
}

func startQueueRelay(t *testing.T, refuse func(to string) bool) *queueRelay {
	t.Helper()
	dns := dnstest.NewServer(t, "")
	noSuchUser := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here (e2e downstream)"}
	down := startTestServer(t, listenLoopback(t), serverOptions{LMTP: true, RcptErr: func(to string) error {
		if refuse(to) {
			return noSuchUser
		}
		return nil
	}})
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(state, dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test:
    deliver_to: "lmtp://%s"
outbound:
%squeue:
  retry: [1s]
`, mx, down.Addr, outboundTimeouts))
	return &queueRelay{Relay: startRelay(t, cfg, mx), cfg: cfg, mx: mx, state: state, down: down}
}

// Issue 14: a message for three recipients of which the downstream
// refused one went to spool/hold, and queue list showed "3 of 3 pending"
// although two had been delivered, and the log said status=bounced for
// mail that was held. Now the held entry records who got it and who is
// still owed it (and why), queue list shows that, and the log says held.
func TestHeldMessageKeepsRecipientState(t *testing.T) {
	requireTool(t, "swaks")
	r := startQueueRelay(t, func(to string) bool { return strings.HasPrefix(to, "carol@") })
	mark := r.Mark()
	id := mustSend(t, "--server", r.mx, "--from", "sender@example.org",
		"--to", "alice@example.test,bob@example.test,carol@example.test").QueueID()
	r.WaitLog(mark, 10*time.Second, "held:", "queue_id="+id)
	for _, who := range []string{"alice", "bob"} {
		if l := r.LogLines("queue_id="+id, "to="+who+"@example.test", "status=sent"); len(l) != 1 {
			t.Errorf("log lines for %s sent: %d, want 1", who, len(l))
		}
	}
	if l := r.LogLines("msg=held", "queue_id="+id, "to=carol@example.test", "status=held", "dsn=5.1.1"); len(l) != 1 {
		t.Errorf("log lines for carol held: %d, want 1", len(l))
	}
	if l := r.LogLines("queue_id="+id, "status=bounced"); len(l) != 0 {
		t.Errorf("held mail logged as bounced:\n%s", strings.Join(l, "\n"))
	}
	if m := r.down.Messages(); len(m) != 1 || strings.Join(m[0].To, " ") != "alice@example.test bob@example.test" {
		t.Fatalf("downstream got %+v, want one copy for alice and bob", m)
	}

	out, errOut, code := runRelayCmd(t, "queue", "list", "--config", r.cfg)
	if code != 0 {
		t.Fatalf("queue list: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, id) || !strings.Contains(out, "1 of 3 held, 2 done") ||
		!strings.Contains(out, "[held] carol@example.test: 5.1.1 ") || strings.Contains(out, "alice@example.test:") {
		t.Errorf("queue list does not show 1 of 3 held, 2 done, carol held with 5.1.1:\n%s", out)
	}
}
