// Package control is the relay's control socket: a Unix socket in
// state_dir (mode 0600, or 0660 with a configured group; no network port)
// through which the queue commands reach a running relay, so that they
// act on the queue that is delivering instead of racing it on the spool.
// Each connection carries one command line (JSON) and gets back what the
// command printed and its exit code; the peer's Unix user comes from the
// kernel (SO_PEERCRED), for the log.
package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SocketName is the socket's file name in state_dir.
const SocketName = "control.sock"

// Peer is who connected.
type Peer struct {
	UID  int
	User string // user name, or "uid N" when it has none
}

// Handler runs one command line for peer and returns its exit code.
type Handler func(peer Peer, args []string, stdout, stderr io.Writer) int

type request struct {
	Args []string `json:"args"`
}

type response struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Code   int    `json:"code"`
}

// Server serves the control socket.
type Server struct {
	ln   net.Listener
	path string
	h    Handler
	o    Options
	wg   sync.WaitGroup
}

// Options configure the socket.
type Options struct {
	// Group, when not "", is the group (name, for messages) whose members
	// may use the socket besides root and the relay's user: the socket is
	// then mode 0660 with group GID. The directory it is in must let them
	// search it (the caller's business).
	Group string
	GID   int
}

// Listen creates the socket at path (replacing a stale one left by a
// crash: the caller holds the spool lock, so no other relay serves it)
// with mode 0600, and serves h on it until Close.
func Listen(path string, h Handler) (*Server, error) {
	return ListenWith(path, h, Options{})
}

// ListenWith is Listen with options: with o.Group the socket is mode 0660
// and belongs to that group.
func ListenWith(path string, h Handler, o Options) (*Server, error) {
	os.Remove(path)
	// Between the bind and the chmod the socket has the umask's mode;
	// state_dir is 0700, so nobody else can reach it meanwhile (no
	// process-wide umask change, which would race other goroutines).
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mode := os.FileMode(0o600)
	if o.Group != "" {
		// Group first, mode second: the socket is never 0660 with a group
		// it should not have. Changing the group takes root or a relay
		// user that is a member of it.
		if err := os.Chown(path, -1, o.GID); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: giving it to group %s (queue.control_group; the relay's user must be root or a member of it): %w", o.Group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{ln: ln, path: path, h: h, o: o}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.handle(c.(*net.UnixConn)) }()
	}
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	peer, cred, err := peerOf(c)
	// The request is read before any refusal too: closing a Unix socket
	// with unread data resets the connection, and the peer would lose
	// the answer that says why it was refused.
	var req request
	derr := json.NewDecoder(io.LimitReader(c, 1<<20)).Decode(&req)
	var resp response
	switch {
	case err != nil:
		resp = response{Stderr: "control socket: " + err.Error() + "\n", Code: 1}
	case peer.UID != 0 && peer.UID != os.Geteuid() && !s.member(cred):
		// The socket's mode already keeps others out; this holds should
		// its mode or directory ever be loosened.
		who := fmt.Sprintf("only root and uid %d", os.Geteuid())
		if s.o.Group != "" {
			who = fmt.Sprintf("only root, uid %d and members of group %s", os.Geteuid(), s.o.Group)
		}
		resp = response{Stderr: fmt.Sprintf("control socket: %s may not control this relay (%s)\n", peer.User, who), Code: 1}
	case derr != nil:
		resp = response{Stderr: "control socket: bad request: " + derr.Error() + "\n", Code: 2}
	default:
		c.SetReadDeadline(time.Time{})
		var o, e bytes.Buffer
		resp.Code = s.h(peer, req.Args, &o, &e)
		resp.Stdout, resp.Stderr = o.String(), e.String()
	}
	json.NewEncoder(c).Encode(&resp)
}

// Close stops serving, waits for commands in progress and removes the socket.
func (s *Server) Close() {
	s.ln.Close()
	s.wg.Wait()
	os.Remove(s.path)
}

// member reports whether the peer is in the configured group: its gid
// (SO_PEERCRED gives the effective gid at connect) or one of its
// supplementary groups, which SO_PEERCRED does not give. Those are read
// from /proc/PID/status ("Groups:"), the process's own credentials, which
// are what the kernel checked against the socket's mode at connect; the
// group database (/etc/group) would accept a process that has dropped
// the group. The peer waits for our answer, so its PID is still its own;
// if it is gone, it is refused.
func (s *Server) member(cred *syscall.Ucred) bool {
	if s.o.Group == "" || cred == nil {
		return false
	}
	if int(cred.Gid) == s.o.GID {
		return true
	}
	return inGroups(fmt.Sprintf("/proc/%d/status", cred.Pid), s.o.GID)
}

// inGroups reads the Groups: line of a /proc status file.
func inGroups(path string, gid int) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Groups:")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			if n, err := strconv.Atoi(f); err == nil && n == gid {
				return true
			}
		}
		return false
	}
	return false
}

func peerOf(c *net.UnixConn) (Peer, *syscall.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Peer{}, nil, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return Peer{}, nil, err
	}
	if cerr != nil {
		return Peer{}, nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return PeerOf(int(cred.Uid)), cred, nil
}

// PeerOf names uid.
func PeerOf(uid int) Peer {
	p := Peer{UID: uid, User: "uid " + strconv.Itoa(uid)}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		p.User = u.Username
	}
	return p
}

// ErrNotRunning: nobody serves the socket (no file, or connection
// refused): the relay is not running.
var ErrNotRunning = errors.New("relay not running (no control socket)")

// Call sends args to the relay serving path and returns what the command
// printed and its exit code. timeout bounds the whole exchange.
func Call(path string, args []string, timeout time.Duration) (stdout, stderr string, code int, err error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return "", "", 0, ErrNotRunning
		}
		return "", "", 0, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(&request{Args: args}); err != nil {
		return "", "", 0, fmt.Errorf("control socket %s: %w", path, err)
	}
	var resp response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return "", "", 0, fmt.Errorf("control socket %s: no answer: %w", path, err)
	}
	return resp.Stdout, resp.Stderr, resp.Code, nil
}
