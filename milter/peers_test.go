package milter

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The real milters: rspamd in milter mode (proxy worker, self_scan) and
// clamav-milter in front of clamd, each started by the tests as a private
// foreground instance with its own configuration and state directory in a
// temporary folder, on free loopback ports. Nothing is downloaded: rspamd
// runs with every module that needs the network disabled, and clamd gets
// two local signatures for the EICAR test file written here. The setup
// follows /work/shared/notes/milter-peers.md (Debian 12: rspamd 3.4,
// clamav 1.4.6).
//
// Both are started once for the package (they take seconds to come up)
// and stopped in TestMain.

// The EICAR anti-virus test file (68 bytes), and the two signatures that
// match it: a body pattern and the MD5 of the exact file.
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

var clamSignatures = map[string]string{
	"local-eicar.ndb": "Local.EICAR.Test.String:0:*:" + fmt.Sprintf("%x", eicar) + "\n",
	"local-eicar.hdb": "44d88612fea8a8f36de82e1278abb02f:68:Local.EICAR.Test.File.MD5\n",
}

// Messages are well formed (Date, Message-ID with an FQDN, MIME-Version),
// so that rspamd's score stays far from its thresholds (notes, pitfall 5).
func peerMessage(subject, body string, extraHeaders ...string) string {
	h := "Received: from mail.sender.example (mail.sender.example [192.0.2.7])\r\n" +
		"\tby mx1.example.net (securerelay) with ESMTPS id 4XyZ1abc\r\n" +
		"\tfor <bob@example.net>; Tue, 01 Dec 2026 10:00:00 +0000\r\n" +
		"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n" +
		"From: Alice Example <alice@sender.example>\r\n" +
		"To: Bob Example <bob@example.net>\r\n" +
		"Subject: " + subject + "\r\n" +
		"Message-ID: <20261201100000.1@check.sender.example>\r\n" +
		"MIME-Version: 1.0\r\n"
	for _, x := range extraHeaders {
		h += x + "\r\n"
	}
	return h + "\r\n" + body
}

func cleanMessage() string {
	return peerMessage("Quarterly report",
		"Hello Bob,\r\n\r\nplease find the figures for the last quarter below. Revenue grew\r\n"+
			"slightly, costs stayed flat, and the new office opens in March.\r\n\r\nRegards,\r\nAlice\r\n",
		"Content-Type: text/plain; charset=utf-8")
}

func gtubeMessage() string {
	return peerMessage("Test spam mail (GTUBE)",
		"This is the GTUBE, the\r\n\tGeneric\r\n\tTest for\r\n\tUnsolicited\r\n\tBulk\r\n\tEmail\r\n\r\n"+
			"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n\r\n"+
			"You should send this test mail from an account outside of your network.\r\n",
		"Content-Type: text/plain; charset=us-ascii")
}

func eicarMessage() string {
	b64 := base64.StdEncoding.EncodeToString([]byte(eicar))
	return peerMessage("Invoice",
		"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThe invoice is attached.\r\n\r\n"+
			"--b1\r\nContent-Type: application/octet-stream; name=\"invoice.com\"\r\n"+
			"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"invoice.com\"\r\n\r\n"+
			b64+"\r\n--b1--\r\n",
		`Content-Type: multipart/mixed; boundary="b1"`)
}

func TestClamavMilter(t *testing.T) {
	clam := peers.clamav(t)
	c := newTestChain(t, Config{Name: "clamav", Address: clam.addr, ReadTimeout: 60 * time.Second})
	env := testEnvelope()

	t.Run("eicar", func(t *testing.T) {
		res := check(t, c, env, eicarMessage())
		if res.Action != Reject || res.Code != 550 || res.Enhanced != "5.7.1" || res.Milter != "clamav" ||
			!strings.HasPrefix(res.Text, "Virus found: Local.EICAR.Test.") {
			t.Errorf("result %+v, want 550 5.7.1 Virus found: Local.EICAR.Test.…\n%s", res, clam.logs())
		}
	})
	t.Run("clean", func(t *testing.T) {
		msg := cleanMessage()
		res := check(t, c, env, msg)
		if res.Action != Accept {
			t.Fatalf("result %+v\n%s", res, clam.logs())
		}
		out := applied(t, res, msg)
		t.Logf("clamav-milter's changes applied:\n%s", out)
		for _, want := range []string{"\r\nX-Virus-Scanned: ", "\r\nX-Virus-Status: Clean\r\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q in\n%s\nmods %+v", want, out, res.Mods)
			}
		}
		if !strings.HasSuffix(out, msg[strings.Index(msg, "\r\n\r\n"):]) {
			t.Error("body changed")
		}
	})
	// An empty body goes as one empty line (an empty BODY packet made
	// libmilter drop the connection).
	t.Run("empty body", func(t *testing.T) {
		if res := check(t, c, env, peerMessage("empty", "")); res.Action != Accept {
			t.Errorf("result %+v\n%s", res, clam.logs())
		}
	})
}

func TestRspamd(t *testing.T) {
	rs := peers.rspamd(t)
	c := newTestChain(t, Config{Name: "rspamd", Address: rs.addr, ReadTimeout: 60 * time.Second})
	env := testEnvelope()

	t.Run("gtube", func(t *testing.T) {
		res := check(t, c, env, gtubeMessage())
		want := Result{Action: Reject, Code: 554, Enhanced: "5.7.1", Text: "Gtube pattern", Milter: "rspamd"}
		if res.Action != want.Action || res.Code != want.Code || res.Enhanced != want.Enhanced || res.Text != want.Text || res.Milter != want.Milter {
			t.Errorf("result %+v, want %+v\n%s", res, want, rs.logs())
		}
	})
	t.Run("clean", func(t *testing.T) {
		msg := cleanMessage()
		res := check(t, c, env, msg)
		if res.Action != Accept {
			t.Fatalf("result %+v\n%s", res, rs.logs())
		}
		got := map[string]Modification{}
		for _, m := range res.Mods {
			got[m.Name] = m
		}
		// rspamd's queue id header carries our macro i: the macros arrive.
		if m := got["X-Rspamd-Queue-Id"]; m.Kind != AddHeader || m.Value != env.QueueID {
			t.Errorf("X-Rspamd-Queue-Id %+v, want %q", m, env.QueueID)
		}
		if m := got["X-Spamd-Result"]; m.Kind != AddHeader || !strings.HasPrefix(m.Value, "default: False [") {
			t.Errorf("X-Spamd-Result %+v", m)
		}
		// Its authserv-id is our {daemon_name}.
		if m := got["Authentication-Results"]; m.Kind != InsertHeader || m.Index != 1 || !strings.HasPrefix(m.Value, env.DaemonName+";") {
			t.Errorf("Authentication-Results %+v", m)
		}
		out := applied(t, res, msg)
		t.Logf("rspamd's changes applied:\n%s", out)
		// Authentication-Results goes below the first field (our
		// Received), X-Spamd-Result is appended with its folding turned
		// into CRLF.
		lines := strings.Split(out, "\r\n")
		if !strings.HasPrefix(lines[3], "Authentication-Results: ") {
			t.Errorf("Authentication-Results not after the Received field:\n%s", out)
		}
		if !strings.Contains(out, "\r\nX-Spamd-Result: default: False [") || strings.Contains(strings.ReplaceAll(out, "\r\n", ""), "\n") {
			t.Errorf("X-Spamd-Result missing or bare LF left:\n%q", out)
		}
	})
	t.Run("empty body", func(t *testing.T) {
		if res := check(t, c, env, peerMessage("empty", "")); res.Action != Accept {
			t.Errorf("result %+v\n%s", res, rs.logs())
		}
	})
}

// rspamd, then clamav-milter, as in Postfix: the EICAR message passes
// rspamd (its score stays below reject) and clamav-milter refuses it; a
// clean one collects both milters' headers.
func TestRealChain(t *testing.T) {
	rs, clam := peers.rspamd(t), peers.clamav(t)
	c := newTestChain(t,
		Config{Name: "rspamd", Address: rs.addr, ReadTimeout: 60 * time.Second},
		Config{Name: "clamav", Address: clam.addr, ReadTimeout: 60 * time.Second})
	env := testEnvelope()
	res := check(t, c, env, eicarMessage())
	if res.Action != Reject || res.Milter != "clamav" || !strings.HasPrefix(res.Text, "Virus found: ") {
		t.Errorf("eicar through both: %+v", res)
	}
	res = check(t, c, env, gtubeMessage())
	if res.Action != Reject || res.Milter != "rspamd" || res.Code != 554 {
		t.Errorf("gtube through both: %+v", res)
	}
	msg := cleanMessage()
	res = check(t, c, env, msg)
	if res.Action != Accept {
		t.Fatalf("clean through both: %+v", res)
	}
	out := applied(t, res, msg)
	for _, want := range []string{"\r\nX-Spamd-Result: ", "\r\nX-Virus-Status: Clean\r\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}

// With clamd gone, clamav-milter answers TEMPFAIL itself (OnFail Defer).
// Runs last among the clamav tests: it stops this package's clamd.
func TestZClamdDown(t *testing.T) {
	clam := peers.clamav(t)
	clam.procs[0].stop() // clamd; clamav-milter stays up
	c := newTestChain(t, Config{Name: "clamav", Address: clam.addr, ReadTimeout: 60 * time.Second})
	res := check(t, c, testEnvelope(), cleanMessage())
	want := Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1",
		Text: "Message deferred by content scanner clamav, try again later", Milter: "clamav"}
	if res.Action != want.Action || res.Code != want.Code || res.Text != want.Text {
		t.Errorf("got %+v, want %+v\n%s", res, want, clam.logs())
	}
	peers.mu.Lock()
	peers.clam = nil // the next user would need a new one
	peers.clamErr = errors.New("clamd was stopped by TestZClamdDown")
	peers.mu.Unlock()
	clam.stop()
}

// ---------------------------------------------------------------------
// Starting and stopping the daemons.

type peerSet struct {
	mu               sync.Mutex
	rs, clam         *instance
	rsErr, clamErr   error
	rsDone, clamDone bool
	started          []*instance
}

var peers peerSet

type instance struct {
	addr  string // milter address in Postfix form
	dir   string
	procs []*daemon
}

func (in *instance) logs() string {
	var b strings.Builder
	for _, d := range in.procs {
		b.WriteString(d.logs())
	}
	return b.String()
}

func (in *instance) stop() {
	for i := len(in.procs) - 1; i >= 0; i-- {
		in.procs[i].stop()
	}
}

func (p *peerSet) rspamd(t *testing.T) *instance {
	t.Helper()
	bin := requirePeer(t, "rspamd")
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.rsDone {
		p.rsDone = true
		p.rs, p.rsErr = startRspamd(bin)
		if p.rs != nil {
			p.started = append(p.started, p.rs)
		}
	}
	if p.rsErr != nil {
		t.Fatalf("starting rspamd: %v", p.rsErr)
	}
	return p.rs
}

func (p *peerSet) clamav(t *testing.T) *instance {
	t.Helper()
	clamd, milter := requirePeer(t, "clamd"), requirePeer(t, "clamav-milter")
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.clamDone {
		p.clamDone = true
		p.clam, p.clamErr = startClamav(clamd, milter)
		if p.clam != nil {
			p.started = append(p.started, p.clam)
		}
	}
	if p.clamErr != nil {
		t.Fatalf("starting clamav: %v", p.clamErr)
	}
	return p.clam
}

func (p *peerSet) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, in := range p.started {
		in.stop()
		os.RemoveAll(in.dir)
	}
}

// requirePeer finds a daemon; Debian puts them in sbin. Under CI=true a
// missing one fails the test.
func requirePeer(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name)
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (required in CI; see test.sh)", name)
	}
	t.Skipf("%s not installed; skipping (apt-get install rspamd clamav-daemon clamav-milter)", name)
	return ""
}

// daemon is one foreground process in its own process group (rspamd forks
// workers; the group is signalled as a whole).
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	once    sync.Once
}

func startDaemon(name, logPath string, argv ...string) (*daemon, error) {
	out, err := os.OpenFile(logPath+".out", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() { cmd.Wait(); out.Close(); close(d.exited) }()
	return d, nil
}

func (d *daemon) stop() {
	d.once.Do(func() {
		pgid := d.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		// clamav-milter takes 5 s to leave after SIGTERM; nothing of
		// these private instances needs a clean shutdown.
		select {
		case <-d.exited:
		case <-time.After(2 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-d.exited
		}
	})
}

func (d *daemon) logs() string {
	var b strings.Builder
	for _, p := range []string{d.logPath, d.logPath + ".out"} {
		if data, err := os.ReadFile(p); err == nil {
			if len(data) > 4000 {
				data = data[len(data)-4000:]
			}
			fmt.Fprintf(&b, "--- %s (%s), last part:\n%s\n", d.name, p, data)
		}
	}
	return b.String()
}

// waitReady polls ready every 100 ms until it holds, the daemon exits, or
// the time-out passes.
func waitReady(d *daemon, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("%s exited during start-up\n%s", d.name, d.logs())
		default:
		}
		if ready() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v\n%s", d.name, timeout, d.logs())
}

func dialable(network, addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
}

// stateDir makes a private state folder that the daemon's service user can
// use: when the tests run as root, the daemons drop privileges to it.
func stateDir(prefix, serviceUser string) (dir string, uid, gid int, err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", 0, 0, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", 0, 0, err
	}
	uid, gid = os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 && serviceUser != "" {
		u, err := user.Lookup(serviceUser)
		if err != nil {
			return dir, 0, 0, nil // stay root; the caller sees uid 0
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	return dir, uid, gid, nil
}

// mkdirs creates folders owned by uid:gid.
func mkdirs(uid, gid int, dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startClamav(clamdBin, milterBin string) (in *instance, err error) {
	dir, uid, gid, err := stateDir("milter-clamav-", "clamav")
	if err != nil {
		return nil, err
	}
	in = &instance{dir: dir}
	defer func() {
		if err != nil {
			in.stop()
			os.RemoveAll(dir)
			in = nil
		}
	}()
	db, tmp := filepath.Join(dir, "db"), filepath.Join(dir, "tmp")
	if err := mkdirs(uid, gid, db, tmp); err != nil {
		return in, err
	}
	for name, sig := range clamSignatures {
		if err := os.WriteFile(filepath.Join(db, name), []byte(sig), 0o644); err != nil {
			return in, err
		}
	}
	userLine := ""
	if os.Geteuid() == 0 && uid != 0 {
		userLine = "User clamav\n"
	}
	sock := filepath.Join(tmp, "clamd.sock")
	clamdConf := filepath.Join(dir, "clamd.conf")
	conf := userLine + "LocalSocket " + sock + "\nFixStaleSocket yes\nForeground yes\n" +
		"DatabaseDirectory " + db + "\nTemporaryDirectory " + tmp + "\n" +
		"LogFile " + filepath.Join(tmp, "clamd.log") + "\nLogTime yes\nLogVerbose yes\nLogClean yes\n" +
		"Bytecode no\nScanMail yes\nScanArchive yes\nExtendedDetectionInfo yes\n" +
		"StreamMaxLength 25M\nMaxFileSize 25M\n"
	if err := os.WriteFile(clamdConf, []byte(conf), 0o644); err != nil {
		return in, err
	}
	clamd, err := startDaemon("clamd", filepath.Join(tmp, "clamd.log"), clamdBin, "--config-file="+clamdConf)
	if err != nil {
		return in, err
	}
	in.procs = append(in.procs, clamd)
	if err := waitReady(clamd, 60*time.Second, dialable("unix", sock)); err != nil {
		return in, err
	}

	port, err := freeLoopbackPort()
	if err != nil {
		return in, err
	}
	milterConf := filepath.Join(dir, "clamav-milter.conf")
	conf = userLine + "MilterSocket inet:" + strconv.Itoa(port) + "@127.0.0.1\nForeground yes\n" +
		"ClamdSocket unix:" + sock + "\nTemporaryDirectory " + tmp + "\n" +
		"LogFile " + filepath.Join(tmp, "milter.log") + "\nLogTime yes\nLogVerbose yes\n" +
		"OnClean Accept\nOnInfected Reject\nOnFail Defer\nRejectMsg \"Virus found: %v\"\n" +
		"AddHeader Replace\nLogInfected Full\nLogClean Full\nMaxFileSize 25M\nReadTimeout 120\n"
	if err := os.WriteFile(milterConf, []byte(conf), 0o644); err != nil {
		return in, err
	}
	m, err := startDaemon("clamav-milter", filepath.Join(tmp, "milter.log"), milterBin, "--config-file="+milterConf)
	if err != nil {
		return in, err
	}
	in.procs = append(in.procs, m)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitReady(m, 60*time.Second, dialable("tcp", addr)); err != nil {
		return in, err
	}
	in.addr = "inet:" + addr
	return in, nil
}

// rspamd modules that need Redis, DNS, HTTP maps or other services.
var rspamdOffline = []string{
	"fuzzy_check", "rbl", "surbl", "spf", "dkim", "dmarc", "arc", "asn", "hfilter", "emails",
	"phishing", "multimap", "mid", "whitelist", "rspamd_update", "reputation", "dcc",
	"url_redirector", "replies", "neural", "ratelimit", "greylist", "history_redis", "mx_check",
	"external_services", "antivirus", "metadata_exporter", "clickhouse", "elastic", "p0f", "bimi",
	"dkim_signing", "external_relay", "spamassassin", "maillist", "once_received", "metric_exporter",
	"aws_s3", "trie", "spamtrap",
}

func startRspamd(bin string) (in *instance, err error) {
	dir, uid, gid, err := stateDir("milter-rspamd-", "_rspamd")
	if err != nil {
		return nil, err
	}
	in = &instance{dir: dir}
	defer func() {
		if err != nil {
			in.stop()
			os.RemoveAll(dir)
			in = nil
		}
	}()
	local := filepath.Join(dir, "conf")
	dbdir, rundir, logdir := filepath.Join(dir, "db"), filepath.Join(dir, "run"), filepath.Join(dir, "log")
	if err := mkdirs(uid, gid, dbdir, rundir, logdir); err != nil {
		return in, err
	}
	for _, d := range []string{filepath.Join(local, "local.d"), filepath.Join(local, "override.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return in, err
		}
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return in, err
	}
	// Nothing listens there: a lookup that is still attempted fails at
	// once instead of leaving the machine.
	deadDNS, err := freeLoopbackPort()
	if err != nil {
		return in, err
	}
	files := map[string]string{
		"rspamd.conf": `.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:` + strconv.Itoa(port) + `";
    milter = yes;
    timeout = 120s;
    count = 1;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
    upstream "local" { default = yes; self_scan = yes; }
}
`,
		"conf/local.d/options.inc": `filters = "chartable,regexp";
dns { nameserver = ["127.0.0.1:` + strconv.Itoa(deadDNS) + `"]; timeout = 0.5s; retransmits = 1; }
`,
		"conf/override.d/mime_types.conf": `file = ["${CONFDIR}/maps.d/mime_types.inc"];` + "\n",
		"conf/local.d/milter_headers.conf": `use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-level", "x-spam-status", "authentication-results"];
skip_local = false;
skip_authenticated = false;
`,
		"conf/local.d/redis.conf": "servers = \"\";\n",
	}
	for _, m := range rspamdOffline {
		files["conf/local.d/"+m+".conf"] = "enabled = false;\n"
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return in, err
		}
	}
	argv := []string{bin, "-f", "-c", filepath.Join(dir, "rspamd.conf"),
		"--var=CONFDIR=/etc/rspamd", "--var=LOCAL_CONFDIR=" + local,
		"--var=DBDIR=" + dbdir, "--var=RUNDIR=" + rundir, "--var=LOGDIR=" + logdir}
	if os.Geteuid() == 0 {
		if uid != 0 {
			argv = append(argv, "-u", "_rspamd", "-g", "_rspamd")
		} else {
			argv = append(argv, "-i") // no service user: run the workers as root
		}
	}
	d, err := startDaemon("rspamd", filepath.Join(logdir, "rspamd.log"), argv...)
	if err != nil {
		return in, err
	}
	in.procs = append(in.procs, d)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitReady(d, 60*time.Second, dialable("tcp", addr)); err != nil {
		return in, err
	}
	in.addr = "inet:" + addr
	return in, nil
}
