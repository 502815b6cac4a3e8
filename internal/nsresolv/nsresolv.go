// Package nsresolv runs a command with its own /etc/resolv.conf, for tests
// that must point a real program (dkimverify, opendkim-testmsg), which
// reads only /etc/resolv.conf, at a test DNS server on loopback. The
// command runs in a private mount namespace (unshare), so the host's
// resolv.conf is never touched. It needs root, as CI has.
package nsresolv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// ErrNoNamespace says this host cannot run a private mount namespace (not
// root, or unshare forbidden).
var ErrNoNamespace = errors.New("cannot run in a private mount namespace")

var (
	once  sync.Once
	nsErr error
)

// Run runs script (sh) with /etc/resolv.conf naming nameserver; dir holds
// the temporary resolv.conf and script. It returns the combined output.
func Run(dir, nameserver, script string) ([]byte, error) {
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+nameserver+"\noptions timeout:2 attempts:2\n"), 0o644); err != nil {
		return nil, err
	}
	once.Do(func() {
		out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$0" /etc/resolv.conf`, resolv).CombinedOutput()
		if err != nil {
			nsErr = fmt.Errorf("%w: %v: %s", ErrNoNamespace, err, out)
		}
	})
	if nsErr != nil {
		return nil, nsErr
	}
	sf := filepath.Join(dir, "run.sh")
	if err := os.WriteFile(sf, []byte(script), 0o755); err != nil {
		return nil, err
	}
	// --propagation private keeps the bind mount from leaking to the host
	// namespace even where / is a shared mount.
	return exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /etc/resolv.conf && exec sh "$1"`, resolv, sf).CombinedOutput()
}
