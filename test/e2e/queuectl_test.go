package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
)

// queueRelay is an inbound relay whose downstream (LMTP, as Dovecot)
// answers each RCPT as the test says (rcptReply: 0 accepts, 450 or 550).
type queueRelay struct {
	*Relay
	cfg   string
	mx    string
	state string
	down  *testServer
}

var (
	noSuchUser  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here (e2e downstream)"}
	mailboxBusy = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy, try later (e2e downstream)"}
)

func startQueueRelay(t *testing.T, refuse func(to string) bool) *queueRelay {
	t.Helper()
	return startQueueRelayOpts(t, func(to string) error {
		if refuse(to) {
			return noSuchUser
		}
		return nil
	}, 0, "1s")
}

func startQueueRelayOpts(t *testing.T, rcpt func(to string) error, dataDelay time.Duration, retry string) *queueRelay {
	t.Helper()
	return startQueueRelayExtra(t, rcpt, dataDelay, retry, "")
}

// startQueueRelayExtra is startQueueRelayOpts with more keys of queue:
// (each line indented by two spaces).
func startQueueRelayExtra(t *testing.T, rcpt func(to string) error, dataDelay time.Duration, retry, queueKeys string) *queueRelay {
	t.Helper()
	down := startTestServer(t, listenLoopback(t), serverOptions{LMTP: true, RcptErr: rcpt, DataDelay: dataDelay})
	r := startQueueRelayTo(t, down.Addr, retry, queueKeys)
	r.down = down
	return r
}

// startQueueRelayTo is an inbound relay for example.test delivering by
// LMTP to downAddr (a real Dovecot, say); its down is nil.
func startQueueRelayTo(t *testing.T, downAddr, retry, queueKeys string) *queueRelay {
	t.Helper()
	dns := dnstest.NewServer(t, "")
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
  retry: [%s]
%s`, mx, downAddr, outboundTimeouts, retry, queueKeys))
	return &queueRelay{Relay: startRelay(t, cfg, mx), cfg: cfg, mx: mx, state: state}
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

// Issue 14's scenario with the downstream it was found with: a real
// Dovecot LMTP server that knows alice and bob and refuses carol
// ("550 5.1.1 ... User doesn't exist"). The message is held with two
// copies delivered, the tools say 1 of 3 is owed and why, the log says
// held; once Dovecot knows carol, release delivers to her alone.
func TestHeldMessageWithDovecot(t *testing.T) {
	requireTool(t, "swaks")
	alice, bob, carol := "alice@example.test", "bob@example.test", "carol@example.test"
	dc := startDovecot(t, alice, bob)
	// No retry of its own within the test: a second copy could only come
	// from the release.
	r := startQueueRelayTo(t, dc.Addr, "1h", "")
	mark := r.Mark()
	id := mustSend(t, "--server", r.mx, "--from", "sender@example.org", "--to", alice+","+bob+","+carol,
		"--header", "Subject: issue 14 with Dovecot").QueueID()
	r.WaitLog(mark, 20*time.Second, "held:", "queue_id="+id)

	oneCopy := func(who string) {
		t.Helper()
		m := dc.Mailbox(t, who)
		if len(m) != 1 || !strings.Contains(m[0], "Subject: issue 14 with Dovecot") {
			t.Errorf("%s's maildir has %d messages, want exactly one copy of the test message:\n%s",
				who, len(m), strings.Join(m, "\n----\n"))
		}
	}
	oneCopy(alice)
	oneCopy(bob)
	if m := dc.Mailbox(t, carol); len(m) != 0 {
		t.Errorf("carol, unknown to Dovecot, has %d messages", len(m))
	}
	if _, err := os.Stat(filepath.Join(r.state, "spool", "hold", id)); err != nil {
		t.Errorf("message not in spool/hold: %v", err)
	}
	for _, who := range []string{alice, bob} {
		if l := r.LogLines("queue_id="+id, "to="+who, "status=sent"); len(l) != 1 {
			t.Errorf("log lines for %s sent: %d, want 1", who, len(l))
		}
	}
	if l := r.LogLines("msg=held", "queue_id="+id, "to="+carol, "status=held", "dsn=5.1.1"); len(l) != 1 {
		t.Errorf("log lines for carol held: %d, want 1:\n%s", len(l), r.log.String())
	}
	if l := r.LogLines("queue_id="+id, "status=bounced"); len(l) != 0 {
		t.Errorf("held mail logged as bounced:\n%s", strings.Join(l, "\n"))
	}

	out := r.queueCmd(t, "list", "--held")
	if !strings.Contains(out, id) || !strings.Contains(out, "1 of 3 held, 2 done") ||
		!strings.Contains(out, "[held] "+carol+": 5.1.1 ") || strings.Contains(out, alice+":") {
		t.Errorf("queue list --held does not show 1 of 3 held, 2 done, carol held with 5.1.1:\n%s", out)
	}
	l := r.queueJSON(t, "--held")
	if len(l) != 1 || l[0].ID != id || l[0].State != "held" ||
		l[0].rcptStates() != alice+"=sent "+bob+"=sent "+carol+"=held" {
		t.Fatalf("queue list --held --json: %+v", l)
	}
	if c := l[0].Recipients[2]; c.Code != "5.1.1" || !strings.Contains(c.Reply, "550") || !strings.Contains(c.Reply, "User doesn't exist") {
		t.Errorf("carol's entry does not carry Dovecot's 550 5.1.1 reply: %+v", c)
	}

	// Dovecot reads its passwd-file again when it changes: carol exists
	// now, and the release reaches her alone.
	dc.AddUser(t, carol)
	mark = r.Mark()
	if out := r.queueCmd(t, "release", id); !strings.Contains(out, id+": released") {
		t.Errorf("release: %s", out)
	}
	r.WaitLog(mark, 20*time.Second, "queue_id="+id, "to="+carol, "status=sent")
	r.WaitLog(mark, 20*time.Second, "removed", "queue_id="+id)
	oneCopy(carol)
	oneCopy(alice)
	oneCopy(bob)
	for _, who := range []string{alice, bob} {
		if l := r.LogLines("queue_id="+id, "to="+who, "status=sent"); len(l) != 1 {
			t.Errorf("log lines for %s sent after the release: %d, want 1", who, len(l))
		}
	}
	if l := r.queueJSON(t); len(l) != 0 {
		t.Errorf("spool not empty after the release: %+v", l)
	}
}

// rcptPolicy is the downstream's answer per recipient, changed by a test
// while the relay runs.
type rcptPolicy struct {
	mu  sync.Mutex
	err map[string]error
}

func (p *rcptPolicy) set(to string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = map[string]error{}
	}
	p.err[to] = err
}

func (p *rcptPolicy) rcpt(to string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err[to]
}

// queueJSON runs queue list --json with extra filters.
func (r *queueRelay) queueJSON(t *testing.T, args ...string) []queueEntry {
	t.Helper()
	out, errOut, code := runRelayCmd(t, append([]string{"queue", "list", "--json", "--config", r.cfg}, args...)...)
	if code != 0 {
		t.Fatalf("queue list --json %v: exit %d: %s", args, code, errOut)
	}
	var l []queueEntry
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("queue list --json: %v\n%s", err, out)
	}
	return l
}

type queueEntry struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	From       string `json:"from"`
	Attempts   int    `json:"attempts"`
	Recipients []struct {
		Address string `json:"address"`
		State   string `json:"state"`
		Code    string `json:"code"`
		Reply   string `json:"reply"`
	} `json:"recipients"`
}

func (e queueEntry) rcptStates() string {
	var s []string
	for _, r := range e.Recipients {
		s = append(s, r.Address+"="+r.State)
	}
	return strings.Join(s, " ")
}

// queueCmd runs a queue command that must succeed and returns its output.
func (r *queueRelay) queueCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runRelayCmd(t, append([]string{"queue"}, append(args, "--config", r.cfg)...)...)
	if code != 0 {
		t.Fatalf("queue %v: exit %d:\n%s%s", args, code, out, errOut)
	}
	return out
}

// Issue 14: queue show, hold, release, retry, delete and prune against a
// running relay with messages queued, deferred and held; releasing a held
// message reaches only the recipients still owed; every change is logged
// with the operator's Unix user; the control socket is private.
func TestQueueCommands(t *testing.T) {
	requireTool(t, "swaks")
	pol := &rcptPolicy{}
	pol.set("carol@example.test", noSuchUser)
	pol.set("dave@example.test", mailboxBusy)
	pol.set("erin@example.test", mailboxBusy)
	pol.set("frank@example.test", mailboxBusy)
	// No retry of its own within the test: what is delivered again is
	// what a command asked for.
	r := startQueueRelayOpts(t, pol.rcpt, 0, "1h")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(r.state, "control.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("control socket %s: %v, mode %v; want a socket with mode 0600", sock, err, fi.Mode())
	}

	send := func(to, subject string) string {
		mark := r.Mark()
		id := mustSend(t, "--server", r.mx, "--from", "sender@example.org", "--to", to,
			"--header", "Subject: "+subject).QueueID()
		r.WaitLog(mark, 10*time.Second, "queue_id="+id, "status=")
		return id
	}
	held := send("alice@example.test,bob@example.test,carol@example.test", "three recipients")
	r.WaitLog(0, 10*time.Second, "held:", "queue_id="+held)
	deferred := send("dave@example.test", "for dave")
	erin := send("erin@example.test", "for erin")
	frank := send("frank@example.test", "for frank")

	// list and its filters.
	if l := r.queueJSON(t, "--held"); len(l) != 1 || l[0].ID != held || l[0].State != "held" ||
		l[0].rcptStates() != "alice@example.test=sent bob@example.test=sent carol@example.test=held" {
		t.Fatalf("list --held: %+v", l)
	}
	if l := r.queueJSON(t, "--to", "dave@example.test"); len(l) != 1 || l[0].ID != deferred || l[0].State != "deferred" ||
		l[0].Recipients[0].Code != "4.2.0" {
		t.Fatalf("list --to dave: %+v", l)
	}
	if l := r.queueJSON(t, "--from", "@example.org"); len(l) != 4 {
		t.Fatalf("list --from @example.org: %d messages, want 4", len(l))
	}
	if l := r.queueJSON(t, "--older-than", "1h"); len(l) != 0 {
		t.Fatalf("list --older-than 1h: %+v", l)
	}

	// show, with and without the body.
	out := r.queueCmd(t, "show", held)
	for _, want := range []string{"queue_id: " + held, "state: held", "from: sender@example.org", "alice@example.test: sent",
		"carol@example.test: held 5.1.1", "history:", "header:", "Subject: three recipients"} {
		if !strings.Contains(out, want) {
			t.Errorf("queue show lacks %q:\n%s", want, out)
		}
	}
	if out := r.queueCmd(t, "show", held, "--body"); !strings.Contains(out, "message:\nReceived: ") || !strings.Contains(out, "This is a test mailing") {
		t.Errorf("queue show --body does not print the message:\n%s", out)
	}

	// release: only carol, the recipient still owed, gets it.
	pol.set("carol@example.test", nil)
	mark := r.Mark()
	if out := r.queueCmd(t, "release", held); !strings.Contains(out, held+": released") {
		t.Errorf("release: %s", out)
	}
	r.WaitLog(mark, 10*time.Second, "queue_id="+held, "to=carol@example.test", "status=sent")
	r.WaitLog(mark, 10*time.Second, "removed", "queue_id="+held)
	msgs := r.down.Messages()
	if len(msgs) != 2 || strings.Join(msgs[1].To, " ") != "carol@example.test" {
		t.Fatalf("downstream after release: %+v; want the second copy for carol only", msgs)
	}
	if l := r.LogLines(`msg="queue control: released"`, "queue_id="+held, "operator="+me.Username, "uid="+me.Uid, "via=socket"); len(l) != 1 {
		t.Errorf("release not logged with the operator %s:\n%s", me.Username, r.log.String())
	}

	// retry: dave's message, deferred for an hour, goes now.
	pol.set("dave@example.test", nil)
	mark = r.Mark()
	if out := r.queueCmd(t, "retry", deferred); !strings.Contains(out, deferred+": due now") {
		t.Errorf("retry: %s", out)
	}
	r.WaitLog(mark, 10*time.Second, "queue_id="+deferred, "to=dave@example.test", "status=sent")

	// hold a deferred message; release brings it back; hold again.
	if out := r.queueCmd(t, "hold", erin); !strings.Contains(out, erin+": held") {
		t.Errorf("hold: %s", out)
	}
	if l := r.queueJSON(t, "--held"); len(l) != 1 || l[0].ID != erin || l[0].rcptStates() != "erin@example.test=held" {
		t.Fatalf("list --held after hold: %+v", l)
	}
	if out := r.queueCmd(t, "show", erin); !strings.Contains(out, "erin@example.test: deferred 4.2.0") ||
		!strings.Contains(out, "erin@example.test: held  held by operator "+me.Username+"; last attempt: 4.2.0") {
		t.Errorf("queue show of a message held by the operator lacks its history:\n%s", out)
	}
	if l := r.LogLines(`msg="queue control: held"`, "queue_id="+erin, "operator="+me.Username); len(l) != 1 {
		t.Errorf("hold not logged with the operator")
	}
	if _, errOut, code := runRelayCmd(t, "queue", "hold", erin, "--config", r.cfg); code != 1 || !strings.Contains(errOut, "already held") {
		t.Errorf("hold of a held message: exit %d, %s", code, errOut)
	}

	// delete with a filter asks for --yes, then prints the count.
	if _, errOut, code := runRelayCmd(t, "queue", "delete", "--to", "erin@example.test", "--config", r.cfg); code != 2 || !strings.Contains(errOut, "1 messages match; add --yes") {
		t.Errorf("delete --to without --yes: exit %d, %s", code, errOut)
	}
	if l := r.queueJSON(t, "--to", "erin@example.test"); len(l) != 1 {
		t.Fatalf("delete without --yes deleted something")
	}
	if out := r.queueCmd(t, "delete", "--to", "erin@example.test", "--yes"); !strings.Contains(out, "deleted 1 messages") {
		t.Errorf("delete --to --yes: %s", out)
	}
	// delete by ID, of an active (deferred) message.
	if out := r.queueCmd(t, "delete", frank); !strings.Contains(out, "deleted 1 messages") {
		t.Errorf("delete ID: %s", out)
	}
	if l := r.LogLines(`msg="queue control: deleted"`, "operator="+me.Username, "via=socket"); len(l) != 2 {
		t.Errorf("%d deletions logged, want 2", len(l))
	}
	if l := r.queueJSON(t); len(l) != 0 {
		t.Fatalf("spool after deleting everything left: %+v", l)
	}

	// prune by age: a message held two days ago goes, a fresh one stays.
	pol.set("gina@example.test", noSuchUser)
	pol.set("hugo@example.test", noSuchUser)
	old := send("gina@example.test", "old")
	young := send("hugo@example.test", "young")
	r.WaitLog(0, 10*time.Second, "held:", "queue_id="+young)
	twoDays := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(filepath.Join(r.state, "spool", "hold", old), twoDays, twoDays); err != nil {
		t.Fatal(err)
	}
	if out := r.queueCmd(t, "prune", "--held-older-than", "1d"); !strings.Contains(out, "deleted 1 held messages, 0 quarantined files") {
		t.Errorf("prune: %s", out)
	}
	if l := r.queueJSON(t, "--held"); len(l) != 1 || l[0].ID != young {
		t.Fatalf("after prune: %+v, want %s only", l, young)
	}

	// With the relay stopped, the same commands work on the spool (the
	// operator logged on the command's stderr), retry says why it cannot.
	r.Stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("control socket left behind after the relay stopped: %v", err)
	}
	// A relay that runs as its own user owns state_dir: root's command
	// writes as that user, or the relay could not read the sidecar (and
	// would deliver to every recipient again) nor take the lock.
	// The release creates the sidecar: the message was held by an older
	// version, which kept none in hold/.
	if err := os.Remove(filepath.Join(r.state, "spool", "hold", young+".st")); err != nil {
		t.Fatal(err)
	}
	owner := -1
	if os.Geteuid() == 0 {
		owner = 65534
		chownTree(t, r.state, owner)
	}
	out, errOut, code := runRelayCmd(t, "queue", "release", young, "--config", r.cfg)
	if code != 0 || !strings.Contains(out, young+": released") ||
		!strings.Contains(errOut, "queue control: released") || !strings.Contains(errOut, "operator="+me.Username) || !strings.Contains(errOut, "via=spool") {
		t.Fatalf("release with the relay stopped: exit %d\n%s%s", code, out, errOut)
	}
	if owner >= 0 {
		for _, f := range []string{"spool.lock", filepath.Join("spool", young[len(young)-1:], young+".st")} {
			fi, err := os.Stat(filepath.Join(r.state, f))
			if err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != owner {
				t.Errorf("%s after root's release: %v, want owned by uid %d (state_dir's owner)", f, err, owner)
			}
		}
	}
	if l := r.queueJSON(t); len(l) != 1 || l[0].ID != young || l[0].State != "queued" || l[0].rcptStates() != "hugo@example.test=pending" {
		t.Errorf("after release on the spool: %+v", l)
	}
	if _, errOut, code := runRelayCmd(t, "queue", "retry", "--all", "--config", r.cfg); code != 1 || !strings.Contains(errOut, "not running") {
		t.Errorf("retry with the relay stopped: exit %d, %s", code, errOut)
	}
	if out := r.queueCmd(t, "delete", young); !strings.Contains(out, "deleted 1 messages") {
		t.Errorf("delete on the spool: %s", out)
	}

	// A quarantined file (what start found incomplete): listed, shown
	// with why, pruned by age.
	damaged := "0123456789ABCDE0"
	qf := filepath.Join(r.state, "spool", "quarantine", damaged)
	writeFile(t, qf, "SRQ1 99\n{\"from\":")
	if err := os.Chtimes(qf, twoDays, twoDays); err != nil {
		t.Fatal(err)
	}
	if l := r.queueJSON(t, "--quarantined"); len(l) != 1 || l[0].ID != damaged || l[0].State != "quarantined" {
		t.Errorf("list --quarantined: %+v", l)
	}
	if out, _, code := runRelayCmd(t, "queue", "show", damaged, "--config", r.cfg); code != 1 || !strings.Contains(out, "state: quarantined") || !strings.Contains(out, "error: incomplete or damaged spool file") {
		t.Errorf("show of a quarantined file: exit %d\n%s", code, out)
	}
	if out := r.queueCmd(t, "prune", "--quarantined-older-than", "1d"); !strings.Contains(out, "deleted 0 held messages, 1 quarantined files") {
		t.Errorf("prune --quarantined-older-than: %s", out)
	}
	if l := r.queueJSON(t); len(l) != 0 {
		t.Errorf("spool not empty: %+v", l)
	}
}

// Issue 14: queue commands racing deliveries in progress never lose nor
// duplicate a message. Each message has two recipients; the downstream
// takes a while over each DATA and defers every b-recipient once, so
// messages are queued, in delivery, deferred with one recipient done,
// while another goroutine holds, releases and retries whatever it
// finds. At the end every recipient got its copy exactly once.
func TestQueueCommandsDuringDeliveries(t *testing.T) {
	requireTool(t, "swaks")
	var mu sync.Mutex
	seen := map[string]int{}
	r := startQueueRelayOpts(t, func(to string) error {
		mu.Lock()
		defer mu.Unlock()
		seen[to]++
		if strings.HasPrefix(to, "b-") && seen[to] == 1 {
			return mailboxBusy
		}
		return nil
	}, 300*time.Millisecond, "1s")

	const n = 12
	stop := make(chan struct{})
	type result struct {
		args []string
		out  string
		code int
	}
	results := make(chan result, 10000)
	var holding atomic.Int32
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		// The operator: no t.Fatal here (another goroutine), results are
		// checked below. Bounded: at most 300 commands.
		defer wg.Done()
		run := func(args ...string) (string, int) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, relayBin, append([]string{"queue"}, append(args, "--config", r.cfg)...)...)
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				code = -1
			}
			if code == 0 && args[0] == "hold" {
				holding.Add(1)
			}
			results <- result{args, o.String() + e.String(), code}
			return o.String(), code
		}
		for i := 0; i < 300; i++ {
			select {
			case <-stop:
				return
			default:
			}
			out, code := run("list", "--json")
			var l []queueEntry
			if code != 0 || json.Unmarshal([]byte(out), &l) != nil {
				continue
			}
			for _, e := range l {
				switch e.State {
				case "queued", "deferred":
					run("hold", e.ID)
				case "held":
					run("release", e.ID)
				}
			}
			run("retry", "--all")
		}
	}()

	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, mustSend(t, "--server", r.mx, "--from", "sender@example.org",
			"--to", fmt.Sprintf("a-%d@example.test,b-%d@example.test", i, i),
			"--header", fmt.Sprintf("Subject: message %d", i)).QueueID())
	}
	// Let the commands and the retries interleave a while: until the
	// operator held a few messages (bounded).
	waits := func() int {
		return len(r.LogLines(`msg="queue control: waiting for the delivery attempt in progress"`))
	}
	for end := time.Now().Add(20 * time.Second); (holding.Load() < 2 || waits() < 1) && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(results)
	holds, releases := 0, 0
	for res := range results {
		switch {
		case res.code == 0:
			if res.args[0] == "hold" {
				holds++
			}
			if res.args[0] == "release" {
				releases++
			}
		case res.code == 1 && (strings.Contains(res.out, "no such message") || strings.Contains(res.out, "not held") || strings.Contains(res.out, "already held")):
			// The message moved on between list and the command: said
			// clearly, nothing changed.
		default:
			t.Errorf("queue %v: exit %d:\n%s", res.args, res.code, res.out)
		}
	}
	t.Logf("%d holds and %d releases succeeded while delivering; %d commands waited for an attempt in progress",
		holds, releases, waits())
	if holds == 0 {
		t.Errorf("no hold succeeded; the test did not race anything")
	}

	// Release what the operator left held; everything is delivered.
	for _, e := range r.queueJSON(t, "--held") {
		r.queueCmd(t, "release", e.ID)
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(r.queueJSON(t)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spool not empty after 60s: %+v", r.queueJSON(t))
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := map[string]int{}
	for _, m := range r.down.Messages() {
		for _, to := range m.To {
			got[to]++
		}
	}
	for i := 0; i < n; i++ {
		for _, p := range []string{"a", "b"} {
			to := fmt.Sprintf("%s-%d@example.test", p, i)
			if got[to] != 1 {
				t.Errorf("%s (message %s) received %d copies, want exactly 1", to, ids[i], got[to])
			}
		}
	}
}

// chownTree gives dir and everything under it to uid (and its parents
// search permission), as a relay running as its own user would have it.
func chownTree(t *testing.T, dir string, uid int) {
	t.Helper()
	searchableParents(t, dir)
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// searchableParents lets other users search the directories above path, as
// far as the temporary directory: a relay running as its own user, or an
// operator, reaches the test's files.
func searchableParents(t *testing.T, path string) {
	t.Helper()
	// Only the test's own directories, below the temporary directory,
	// and only those others cannot search yet (never /tmp itself).
	top := filepath.Clean(os.TempDir())
	for p := filepath.Dir(path); strings.HasPrefix(p, top+"/"); p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 != 0 {
			continue
		}
		if err := os.Chmod(p, fi.Mode()&(os.ModePerm|os.ModeSticky)|0o011); err != nil {
			t.Fatal(err)
		}
	}
}
