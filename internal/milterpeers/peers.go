package milterpeers

import (
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// Instance is one running scanner: a milter and, for ClamAV, the daemon
// behind it.
type Instance struct {
	// Addr is the milter's address in Postfix's form, "unix:/path/milter.sock"
	// (a socket in Dir), as securerelay's configuration and package milter
	// take it.
	Addr string
	// Dir is the private state folder (configuration, logs, databases),
	// removed by Stop.
	Dir string
	// Startup is how long the start took, until every daemon listened.
	Startup time.Duration

	procs []*daemon
	once  sync.Once
}

// Logs returns the end of every daemon's log and output, for failure
// messages.
func (in *Instance) Logs() string {
	var b strings.Builder
	for _, d := range in.procs {
		b.WriteString(d.logs())
	}
	return b.String()
}

// StopDaemon stops one of the instance's processes by name ("clamd",
// "clamav-milter", "rspamd") and leaves the others running, e.g. to see
// how clamav-milter answers when clamd is gone. It reports whether there
// was such a process.
func (in *Instance) StopDaemon(name string) bool {
	for _, d := range in.procs {
		if d.name == name {
			d.stop()
			return true
		}
	}
	return false
}

// Stop ends every process of the instance (last started first) and
// removes its state folder. It is safe to call more than once.
func (in *Instance) Stop() {
	in.once.Do(func() {
		for i := len(in.procs) - 1; i >= 0; i-- {
			in.procs[i].stop()
		}
		if in.Dir != "" {
			os.RemoveAll(in.Dir)
		}
	})
}

// StartRspamd starts a private rspamd in milter mode for the test t and
// stops it when t ends. A missing rspamd skips t (fails it under CI=true);
// a failed start fails t with rspamd's log.
func StartRspamd(t testing.TB) *Instance {
	t.Helper()
	bin := require(t, "rspamd")
	return started(t, "rspamd", func() (*Instance, error) { return startRspamd(bin) })
}

// StartClamav starts a private clamd and clamav-milter for the test t and
// stops them when t ends; like StartRspamd otherwise.
func StartClamav(t testing.TB) *Instance {
	t.Helper()
	clamd, milter := require(t, "clamd"), require(t, "clamav-milter")
	return started(t, "clamav", func() (*Instance, error) { return startClamav(clamd, milter) })
}

// Rspamd is StartRspamd's milter address.
func Rspamd(t testing.TB) string {
	t.Helper()
	return StartRspamd(t).Addr
}

// Clamav is StartClamav's milter address.
func Clamav(t testing.TB) string {
	t.Helper()
	return StartClamav(t).Addr
}

func started(t testing.TB, kind string, start func() (*Instance, error)) *Instance {
	t.Helper()
	in, err := start()
	if err != nil {
		t.Fatalf("starting %s: %v", kind, err)
	}
	t.Logf("%s listening on %s after %v", kind, in.Addr, in.Startup.Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s logs:\n%s", kind, in.Logs())
		}
		in.Stop()
	})
	return in
}

// Pool shares one instance of each scanner among the tests of a package:
// each is started on first use and stopped by Close, which TestMain calls
// after m.Run. A start that failed is not retried; every later test that
// asks fails with the same error. The zero Pool is ready to use.
type Pool struct {
	mu     sync.Mutex
	slots  map[string]*poolSlot
	closed bool
}

type poolSlot struct {
	once sync.Once
	in   *Instance
	err  error
}

// Rspamd returns the pool's rspamd, starting it if needed.
func (p *Pool) Rspamd(t testing.TB) *Instance {
	t.Helper()
	bin := require(t, "rspamd")
	return p.get(t, "rspamd", func() (*Instance, error) { return startRspamd(bin) })
}

// Clamav returns the pool's clamd and clamav-milter, starting them if
// needed.
func (p *Pool) Clamav(t testing.TB) *Instance {
	t.Helper()
	clamd, milter := require(t, "clamd"), require(t, "clamav-milter")
	return p.get(t, "clamav", func() (*Instance, error) { return startClamav(clamd, milter) })
}

// Forget drops the pool's instance of kind ("rspamd" or "clamav") after
// stopping it, for a test that broke it on purpose (StopDaemon); the next
// test that asks gets a new one.
func (p *Pool) Forget(kind string) {
	p.mu.Lock()
	s := p.slots[kind]
	delete(p.slots, kind)
	p.mu.Unlock()
	if s != nil {
		s.once.Do(func() { s.err = errors.New("forgotten") })
		if s.in != nil {
			s.in.Stop()
		}
	}
}

// Close stops every instance the pool started. Tests that ask afterwards
// fail.
func (p *Pool) Close() {
	p.mu.Lock()
	slots := p.slots
	p.slots, p.closed = nil, true
	p.mu.Unlock()
	for _, s := range slots {
		s.once.Do(func() { s.err = errors.New("pool closed") })
		if s.in != nil {
			s.in.Stop()
		}
	}
}

func (p *Pool) get(t testing.TB, kind string, start func() (*Instance, error)) *Instance {
	t.Helper()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		t.Fatalf("milterpeers: %s asked of a closed Pool", kind)
	}
	if p.slots == nil {
		p.slots = map[string]*poolSlot{}
	}
	s := p.slots[kind]
	if s == nil {
		s = &poolSlot{}
		p.slots[kind] = s
	}
	p.mu.Unlock()
	// Each kind starts under its own Once, so that tests waiting for
	// rspamd do not hold up those that need ClamAV.
	s.once.Do(func() {
		s.in, s.err = start()
		if s.err == nil {
			t.Logf("%s listening on %s after %v (shared)", kind, s.in.Addr, s.in.Startup.Round(time.Millisecond))
		}
	})
	if s.err != nil {
		t.Fatalf("starting %s: %v", kind, s.err)
	}
	return s.in
}
