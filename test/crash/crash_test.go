// Package crash kills the real relay with SIGKILL, again and again, while
// several clients send through it, and checks the one promise that matters
// most: every message that got a 250 is delivered after the restarts.
package crash

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/loopback"
	"securerelay/internal/testutil"
)

var relayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "securerelay-crash-")
	if err != nil {
		panic(err)
	}
	relayBin = filepath.Join(dir, "securerelay")
	out, err := exec.Command("go", "build", "-o", relayBin, "securerelay/cmd/securerelay").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build failed: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sink is the downstream system: it counts each Message-Id it receives.
type sink struct {
	mu   sync.Mutex
	seen map[string]int
	ar   int // messages that arrived with an Authentication-Results field
}

var (
	msgIDRe = regexp.MustCompile(`(?mi)^Message-Id: <([^>]+)>`)
	arRe    = regexp.MustCompile(`(?mi)^Authentication-Results: relay\.crash\.test;`)
)

// data is the downstream's Data hook: a message without a Message-Id is
// refused, as the test cannot account for it.
func (s *sink) data(b []byte) error {
	m := msgIDRe.FindSubmatch(b)
	if m == nil {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 6, 0}, Message: "no Message-Id"}
	}
	s.mu.Lock()
	s.seen[string(m[1])]++
	if arRe.Match(b) {
		s.ar++
	}
	s.mu.Unlock()
	return nil
}

func freePort(t *testing.T) string {
	return loopback.Addr(t)
}

func start(t *testing.T, conf, addr string, logs *lockedBuffer) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(relayBin, "serve", "--config", conf)
	cmd.Stdout = logs
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return cmd
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("relay did not start listening on %s; log:\n%s", addr, logs.String())
	return nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// send submits one message; it reports acked only on a 250 after DATA.
func send(addr, id string) (acked bool) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		conn.Close()
		return false
	}
	defer c.Close()
	if c.Hello("client.test") != nil || c.Mail("sender@client.test") != nil || c.Rcpt("rcpt@example.test") != nil {
		return false
	}
	w, err := c.Data()
	if err != nil {
		return false
	}
	fmt.Fprintf(w, "From: sender@client.test\r\nTo: rcpt@example.test\r\nMessage-Id: <%s>\r\nSubject: crash test\r\n\r\n%s\r\n", id, strings.Repeat("crash test body line\r\n", 100))
	if w.Close() != nil {
		return false
	}
	c.Quit()
	return true
}

// TestKill9WhileSending kills the relay again and again while clients
// send; every message that got its 250 must arrive. "amended": with
// SPF/DKIM/DMARC on, every message gets its Authentication-Results field
// through queue.Writer.Amend (the SRQ2 spool record), so a kill can land
// in the middle of writing that record too.
func TestKill9WhileSending(t *testing.T) {
	t.Run("plain", func(t *testing.T) { kill9(t, "", false) })
	t.Run("amended", func(t *testing.T) { kill9(t, "auth: {enabled: true}, ", true) })
}

func kill9(t *testing.T, inboundExtra string, wantAR bool) {
	kills := 10
	senders := 8
	if testing.Short() {
		kills = 2
	}
	state := t.TempDir()
	sk := &sink{seen: map[string]int{}}
	// The shared recording peer (which ignores the resets of a relay
	// killed mid-session); no idle limit the relay's pool could run into
	// during the test, as go-smtp's default had none.
	down := testutil.StartPeer(t, testutil.PeerOptions{Domain: "downstream.test", Data: sk.data, Timeout: 10 * time.Minute})

	// An empty zone: SPF and DMARC find no record (none), never a
	// temporary failure that would refuse every message.
	dns := dnstest.NewServer(t, "")
	addr := freePort(t)
	conf := filepath.Join(state, "relay.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf(`hostname: relay.crash.test
state_dir: %s
dns: {resolver: "%s"}
listeners:
  - {name: mx, address: "%s", role: inbound}
domains:
  example.test: {deliver_to: "smtp://%s"}
queue: {retry: [1s]}
inbound: {%schecks: {sender_domain: "off"}}
`, filepath.Join(state, "var"), dns.Addr(), addr, down.Addr, inboundExtra)), 0o600)

	logs := &lockedBuffer{}
	cmd := start(t, conf, addr, logs)
	defer func() {
		if cmd != nil && cmd.Process != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	var sent, ackedN atomic.Int64
	var ackedMu sync.Mutex
	acked := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("%d.%d@crash.test", s, n)
				sent.Add(1)
				if send(addr, id) {
					ackedN.Add(1)
					ackedMu.Lock()
					acked[id] = true
					ackedMu.Unlock()
				} else {
					time.Sleep(10 * time.Millisecond)
				}
			}
		}(s)
	}

	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(300+rand.IntN(500)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		cmd = start(t, conf, addr, logs)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Everything acknowledged must arrive, after at most a few retries.
	deadline := time.Now().Add(60 * time.Second)
	var missing []string
	for {
		missing = missing[:0]
		sk.mu.Lock()
		ackedMu.Lock()
		for id := range acked {
			if sk.seen[id] == 0 {
				missing = append(missing, id)
			}
		}
		ackedMu.Unlock()
		sk.mu.Unlock()
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	sk.mu.Lock()
	delivered, dups, unacked := 0, 0, 0
	for id, n := range sk.seen {
		delivered++
		dups += n - 1
		if !acked[id] {
			unacked++ // the client lost the 250 (killed after fsync): fine
		}
	}
	sk.mu.Unlock()
	quarantined, _ := filepath.Glob(filepath.Join(state, "var", "spool", "quarantine", "*"))
	t.Logf("kills=%d sent=%d acknowledged=%d delivered=%d (of which never acknowledged to the client: %d) duplicated=%d quarantined-incomplete=%d lost=%d",
		kills, sent.Load(), ackedN.Load(), delivered, unacked, dups, len(quarantined), len(missing))
	if ackedN.Load() == 0 {
		t.Fatalf("no message was acknowledged; log:\n%s", tail(logs.String()))
	}
	sk.mu.Lock()
	ar, total := sk.ar, 0
	for _, n := range sk.seen {
		total += n
	}
	sk.mu.Unlock()
	if wantAR && ar != total {
		t.Errorf("%d of %d deliveries carried our Authentication-Results field: the amend path was not exercised throughout", ar, total)
	}
	if len(missing) > 0 {
		t.Fatalf("LOST %d acknowledged messages, e.g. %v; log tail:\n%s", len(missing), missing[:min(5, len(missing))], tail(logs.String()))
	}
	// Every quarantined file must be one that was never acknowledged.
	for _, q := range quarantined {
		if strings.HasSuffix(q, ".st") {
			continue
		}
		b, _ := os.ReadFile(q)
		if m := msgIDRe.FindSubmatch(b); m != nil && acked[string(m[1])] && sk.seen[string(m[1])] == 0 {
			t.Errorf("acknowledged message %s was quarantined", m[1])
		}
	}
}

func tail(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
