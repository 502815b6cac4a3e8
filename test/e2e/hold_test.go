package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
)

// TestHoldSpoolBounded is finding 6 of issue 11: a domain without a
// recipient list accepts every local part; its downstream refuses made-up
// ones after our 250; inbound mail is never bounced, so each such message
// goes to spool/hold. Before the fix hold/ grew by every message an
// outsider sent. Now it stays under queue.hold_max_size: the oldest held
// messages are deleted first, each with a "hold spool: removed" log line,
// queue list shows exactly what is left, and check-config warns about the
// domain.
func TestHoldSpoolBounded(t *testing.T) {
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	noSuchUser := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here (e2e downstream)"}
	down := startTestServer(t, listenLoopback(t), serverOptions{RcptErr: func(string) error { return noSuchUser }})

	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	const limit = 3_000_000
	writeFile(t, cfg, configHead(state, dns.Addr())+fmt.Sprintf(`limits:
  max_message_size: 1MB
listeners:
  - name: mx
    address: %q
    role: inbound
domains:
  example.test:
    deliver_to: "smtp://%s"
outbound:
%squeue:
  hold_max_size: 3MB
`, mx, down.Addr, outboundTimeouts))

	_, errOut, code := runRelayCmd(t, "check-config", "--config", cfg)
	if code != 0 || !strings.Contains(errOut, "warning: "+cfg+":") ||
		!strings.Contains(errOut, "domains.example.test: example.test accepts every local part (it has no recipients list, file or verify)") {
		t.Errorf("check-config: exit %d, want 0 and a warning about example.test:\n%s", code, errOut)
	}

	r := startRelay(t, cfg, mx)
	// 900 kB of body: under max_message_size, three fit in hold/.
	body := filepath.Join(dir, "big.eml")
	line := strings.Repeat("0123456789", 9) + "\r\n"
	writeFile(t, body, "Subject: made-up recipient\r\n\r\n"+strings.Repeat(line, 900_000/len(line)))

	hold := filepath.Join(state, "spool", "hold")
	var ids []string
	for i := 0; i < 8; i++ {
		mark := r.Mark()
		res := mustSend(t, "--server", mx, "--from", fmt.Sprintf("outsider%d@example.org", i),
			"--to", fmt.Sprintf("made-up-%d@example.test", i), "--data", "@"+body)
		id := res.QueueID()
		ids = append(ids, id)
		r.WaitLog(mark, 10*time.Second, "held:", "queue_id="+id)
		if i >= 3 {
			// The removal comes right after the hold that made it necessary.
			r.WaitLog(mark, 10*time.Second, `msg="hold spool: removed"`, "queue_id="+ids[i-3])
		}
		files, size := dirUsage(t, hold)
		t.Logf("after message %d: hold/ has %d files, %d bytes", i+1, files, size)
		if want := min(i+1, 3); files != want || size > limit {
			t.Fatalf("after message %d: hold/ has %d files, %d bytes; want %d files, at most %d bytes", i+1, files, size, want, limit)
		}
	}
	if n := len(down.Rcpts()); n != 8 {
		t.Errorf("downstream saw %d RCPTs, want 8 (one per message)", n)
	}

	removed := r.LogLines(`msg="hold spool: removed"`)
	if len(removed) != 5 {
		t.Fatalf("%d removal lines, want 5:\n%s", len(removed), strings.Join(removed, "\n"))
	}
	for i, l := range removed {
		for _, want := range []string{
			"queue_id=" + ids[i], fmt.Sprintf("from=outsider%d@example.org", i), fmt.Sprintf("to=made-up-%d@example.test", i),
			"age=", "size=", "reason=max_size", "setting=queue.hold_max_size", fmt.Sprintf("limit=%d", limit), fmt.Sprintf("count=%d", i+1),
		} {
			if !strings.Contains(l, want) {
				t.Errorf("removal %d lacks %q:\n%s", i, want, l)
			}
		}
	}

	// queue list: the three newest, held; nothing of the removed ones.
	out, errOut, code := runRelayCmd(t, "queue", "list", "--config", cfg)
	if code != 0 {
		t.Fatalf("queue list: exit %d: %s", code, errOut)
	}
	for i, id := range ids {
		listed := strings.Contains(out, id)
		if i < 5 && listed {
			t.Errorf("queue list shows removed %s:\n%s", id, out)
		}
		if i >= 5 && (!listed || !strings.Contains(out, id+"  ")) {
			t.Errorf("queue list lacks held %s:\n%s", id, out)
		}
	}
	if got := strings.Count(out, " held "); got != 3 {
		t.Errorf("queue list shows %d held messages, want 3:\n%s", got, out)
	}
}

// dirUsage counts the messages in dir and the bytes of all its files.
func dirUsage(t *testing.T, dir string) (files int, size int64) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(e.Name(), ".st") {
			files++ // a message; its sidecar (recipient states) counts in size
		}
		size += fi.Size()
	}
	return files, size
}
