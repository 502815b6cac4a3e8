package control

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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
