package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCallThroughSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	if _, _, _, err := Call(path, []string{"list"}, time.Second); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Call without a server: %v, want ErrNotRunning", err)
	}
	// A socket file left by a crash is replaced.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Listen(path, func(p Peer, args []string, stdout, stderr io.Writer) int {
		fmt.Fprintf(stdout, "%d %s %s\n", p.UID, p.User, strings.Join(args, ","))
		fmt.Fprintln(stderr, "a warning")
		return 3
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, mode %v; want a socket with mode 0600", err, fi.Mode())
	}
	out, errOut, code, err := Call(path, []string{"hold", "ID"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	me := PeerOf(os.Getuid())
	if want := fmt.Sprintf("%d %s hold,ID\n", os.Getuid(), me.User); out != want || errOut != "a warning\n" || code != 3 {
		t.Fatalf("Call = %q, %q, %d; want %q, the warning, 3", out, errOut, code, want)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	if _, _, _, err := Call(path, nil, time.Second); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Call after Close: %v, want ErrNotRunning", err)
	}
}

// asUser runs a Python client of the socket at path as uid 65534 with
// the setpriv credential flags given, and returns what it printed: the
// response's JSON, or "connect: " and the error.
func asUser(t *testing.T, path string, cred ...string) string {
	t.Helper()
	// The system's Python: one under root's home (pyenv) is not another
	// user's to run.
	for _, tool := range []string{"setpriv", "/usr/bin/python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	const client = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect: %s" % e.strerror)
    sys.exit(0)
s.sendall(json.dumps({"args": ["list"]}).encode() + b"\n")
out = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    out += b
print(out.decode().strip())
`
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{"--reuid", "65534"}, cred...)
	out, err := exec.CommandContext(ctx, "setpriv", append(args, "/usr/bin/python3", "-c", client, path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("setpriv %v: %v\n%s", cred, err, out)
	}
	return strings.TrimSpace(string(out))
}

// With a group the socket is 0660 and that group's; a member (by its
// gid, or by a supplementary group, which SO_PEERCRED does not give) may
// use it; another user cannot connect, and, should the socket's mode be
// loosened, the relay refuses it itself.
func TestGroupMembers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test acts as other users")
	}
	dir, err := os.MkdirTemp("", "control-group-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	const gid = 4242 // no group of the host: nobody is a member but by the test's say
	path := filepath.Join(dir, SocketName)
	s, err := ListenWith(path, func(p Peer, args []string, stdout, stderr io.Writer) int {
		fmt.Fprintf(stdout, "ran for %s", p.User)
		return 0
	}, Options{Group: "ops", GID: gid})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != gid {
		t.Fatalf("socket: %v, mode %v; want 0660 with gid %d", err, fi.Mode(), gid)
	}
	ran := `"stdout":"ran for ` + PeerOf(65534).User + `"`
	if out := asUser(t, path, "--regid", "65534", "--groups", strconv.Itoa(gid)); !strings.Contains(out, ran) {
		t.Errorf("member by a supplementary group: %s", out)
	}
	if out := asUser(t, path, "--regid", strconv.Itoa(gid), "--clear-groups"); !strings.Contains(out, ran) {
		t.Errorf("member by its gid: %s", out)
	}
	if out := asUser(t, path, "--regid", "65534", "--clear-groups"); out != "connect: Permission denied" {
		t.Errorf("another user: %s; want the connect refused", out)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if out := asUser(t, path, "--regid", "65534", "--clear-groups"); !strings.Contains(out, "may not control this relay (only root, uid 0 and members of group ops)") || strings.Contains(out, "ran for") {
		t.Errorf("another user, socket loosened: %s; want refused by the relay", out)
	}
}
