package milterpeers

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds the wait for one daemon to accept connections. The
// slowest, rspamd, listens after 7 s on an idle 2-core machine and after
// 20-30 s when other test binaries load it.
const startTimeout = 120 * time.Second

// lookPath finds a daemon; Debian puts clamd and clamav-milter in sbin,
// which is not on every user's PATH.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/sbin", name)
}

// require finds a daemon or ends the test: skipped locally, failed under
// CI=true, where test.sh has installed every scanner.
func require(t testing.TB, name string) string {
	t.Helper()
	p, err := lookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v: required under CI=true (test.sh installs rspamd, clamav-daemon, clamav-milter)", err)
	}
	t.Skipf("%v; install rspamd, clamav-daemon and clamav-milter to run this test", err)
	return ""
}

// daemon is one foreground process in its own process group.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string // the daemon's own log file; its stdout/stderr go to logPath+".out"
	exited  chan struct{}
	once    sync.Once
}

func startDaemon(name, logPath string, argv ...string) (*daemon, error) {
	out, err := os.OpenFile(logPath+".out", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own group, so that rspamd's workers are signalled with it; and
	// killed with the test process, so that an aborted run leaves no
	// scanner behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait() //nolint:errcheck // a stopped daemon's exit status means nothing
		out.Close()
		close(d.exited)
	}()
	return d, nil
}

// stop ends the process group: SIGTERM, then SIGKILL after 2 s (clamav-
// milter takes about 5 s to leave on its own).
func (d *daemon) stop() {
	d.once.Do(func() {
		pgid := d.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM) //nolint:errcheck // it may be gone already
		select {
		case <-d.exited:
		case <-time.After(2 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
			<-d.exited
		}
		// Workers that outlived the leader (rspamd) go too.
		syscall.Kill(-pgid, syscall.SIGKILL) //nolint:errcheck
	})
}

// logs is the end of the daemon's log and output, for failure messages.
func (d *daemon) logs() string {
	var s string
	for _, p := range []string{d.logPath, d.logPath + ".out"} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		s += fmt.Sprintf("--- %s (%s), last part:\n%s\n", d.name, p, data)
	}
	return s
}

// waitReady polls ready every 50 ms until it holds, the daemon exits, or
// the time-out passes.
func waitReady(d *daemon, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("%s exited during start-up\n%s", d.name, d.logs())
		default:
		}
		if ready() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v\n%s", d.name, timeout, d.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
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

// stateDir makes a private state folder outside t.TempDir (whose parents
// are mode 0700, closed to a daemon that dropped privileges) and returns
// the uid and gid the daemon will run as: serviceUser's when the tests
// run as root and that user exists, else our own.
func stateDir(prefix, serviceUser string) (dir string, uid, gid int, err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", 0, 0, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", 0, 0, err
	}
	uid, gid = os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 && serviceUser != "" {
		if u, err := user.Lookup(serviceUser); err == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
		}
	}
	return dir, uid, gid, nil
}

// launch makes an instance's private folder (see stateDir) and runs setup
// in it, which starts the daemons and sets Addr; if setup fails, what it
// started is stopped and the folder removed.
func launch(prefix, serviceUser string, setup func(in *Instance, uid, gid int) error) (*Instance, error) {
	began := time.Now()
	dir, uid, gid, err := stateDir(prefix, serviceUser)
	if err != nil {
		return nil, err
	}
	in := &Instance{Dir: dir}
	if err := setup(in, uid, gid); err != nil {
		in.Stop()
		return nil, err
	}
	in.Startup = time.Since(began)
	return in, nil
}

// mkdirs creates folders owned by uid:gid, where the daemon writes.
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

func writeFiles(dir string, files map[string]string) error {
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// run starts one daemon of the instance and waits until ready says it
// serves; the instance stops it with the others.
func (in *Instance) run(name, logPath string, ready func() bool, argv ...string) error {
	d, err := startDaemon(name, logPath, argv...)
	if err != nil {
		return err
	}
	in.procs = append(in.procs, d)
	return waitReady(d, startTimeout, ready)
}
