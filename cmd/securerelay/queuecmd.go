package main

// securerelay queue …: mailq/postqueue/postsuper/postcat for the spool.
// Reading commands (list, count, show) read the spool files; commands that
// change it go through the running relay's control socket, so that they
// act on the queue that is delivering (an attempt in progress is waited
// for), or, when no relay runs (the socket does not answer and the spool
// lock is free), on the spool directly.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"securerelay/config"
	"securerelay/internal/control"
	"securerelay/outbound"
	"securerelay/queue"
)

// queueArgs is a parsed queue command line.
type queueArgs struct {
	sub    string
	config string
	ids    []string
	// list filters; from/to also select what delete removes.
	held, quarantined bool
	from, to          string
	olderThan         time.Duration
	json              bool
	body              bool
	all               bool
	yes               bool
	heldOlder         time.Duration
	quarOlder         time.Duration
}

type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}
func (f durationFlag) Set(s string) error {
	d, err := config.ParseDuration(s)
	if err != nil {
		return err
	}
	*f.d = d
	return nil
}

var queueSubs = map[string]bool{"list": true, "count": true, "show": true, "hold": true, "release": true,
	"retry": true, "delete": true, "prune": true, "bounce": true}

// parseQueueArgs parses SUB [flags and IDs in any order].
func parseQueueArgs(args []string, stderr io.Writer) (*queueArgs, bool) {
	if len(args) == 0 || !queueSubs[args[0]] {
		fmt.Fprint(stderr, usage)
		return nil, false
	}
	a := &queueArgs{sub: args[0]}
	fs := flag.NewFlagSet("queue "+a.sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&a.config, "config", "", "configuration file (YAML)")
	switch a.sub {
	case "list":
		fs.BoolVar(&a.held, "held", false, "only messages in spool/hold")
		fs.BoolVar(&a.quarantined, "quarantined", false, "only files in spool/quarantine")
		fs.BoolVar(&a.json, "json", false, "one JSON array")
	case "show":
		fs.BoolVar(&a.body, "body", false, "print the message after the envelope")
	case "retry":
		fs.BoolVar(&a.all, "all", false, "every message waiting for its next attempt")
	case "delete":
		fs.BoolVar(&a.yes, "yes", false, "confirm deleting what --from/--to select")
	case "prune":
		fs.Var(durationFlag{&a.heldOlder}, "held-older-than", "delete messages held longer than this (e.g. 7d)")
		fs.Var(durationFlag{&a.quarOlder}, "quarantined-older-than", "delete files quarantined longer than this")
	}
	if a.sub == "list" || a.sub == "delete" {
		fs.StringVar(&a.from, "from", "", "sender address, @domain, or <>")
		fs.StringVar(&a.to, "to", "", "a recipient's address or @domain")
	}
	if a.sub == "list" {
		fs.Var(durationFlag{&a.olderThan}, "older-than", "arrived longer ago than this (e.g. 2h, 3d)")
	}
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return nil, false
		}
		if fs.NArg() == 0 {
			break
		}
		a.ids = append(a.ids, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if a.config == "" {
		fmt.Fprintf(stderr, "securerelay queue %s: --config FILE is required\n", a.sub)
		return nil, false
	}
	bad := func(msg string) (*queueArgs, bool) {
		fmt.Fprintf(stderr, "securerelay queue %s: %s\n", a.sub, msg)
		return nil, false
	}
	switch a.sub {
	case "list", "count":
		if len(a.ids) > 0 {
			return bad("takes no queue IDs")
		}
	case "show":
		if len(a.ids) != 1 {
			return bad("takes one queue ID")
		}
	case "hold", "release", "bounce":
		if len(a.ids) == 0 {
			return bad("takes one or more queue IDs")
		}
	case "retry":
		if (len(a.ids) == 0) == !a.all {
			return bad("takes queue IDs or --all")
		}
	case "delete":
		filtered := a.from != "" || a.to != ""
		if (len(a.ids) == 0) == !filtered {
			return bad("takes queue IDs, or --from ADDR and/or --to ADDR")
		}
	case "prune":
		if a.heldOlder <= 0 && a.quarOlder <= 0 {
			return bad("takes --held-older-than D and/or --quarantined-older-than D")
		}
	}
	return a, true
}

// queueMain runs securerelay queue ….
func queueMain(args []string, stdout, stderr io.Writer) int {
	a, ok := parseQueueArgs(args, stderr)
	if !ok {
		return 2
	}
	cfg, code := load(a.config, stderr)
	if cfg == nil {
		return code
	}
	// A member of queue.control_group may not read the spool (its files
	// are the relay's, mode 0600): the relay reads it for them, through
	// the socket. Root and the relay's user read it directly, so that
	// list and show work with the relay stopped too.
	readable := !errors.Is(syscall.Access(spoolDir(cfg), 0o5), syscall.EACCES)
	switch a.sub {
	case "list", "count":
		if readable {
			return queueList(a, spoolDir(cfg), stdout, stderr)
		}
	case "show":
		if readable {
			return queueShow(a, spoolDir(cfg), stdout, stderr)
		}
	}
	if a.sub == "delete" && len(a.ids) == 0 && !a.yes && readable {
		// Say what it would do, change nothing.
		return deletePreview(a, spoolDir(cfg), stderr)
	}
	sock := filepath.Join(cfg.StateDir, control.SocketName)
	o, e, code, err := control.Call(sock, args, ClaimTimeout())
	if err == nil {
		io.WriteString(stdout, o)
		io.WriteString(stderr, e)
		return code
	}
	if !errors.Is(err, control.ErrNotRunning) {
		fmt.Fprintf(stderr, "securerelay queue %s: %v\n", a.sub, err)
		return 1
	}
	if !readable {
		fmt.Fprintf(stderr, "securerelay queue %s: the relay is not running (%s does not answer), and the spool %s is not readable for you; run this as root or the relay's user\n", a.sub, sock, spoolDir(cfg))
		return 1
	}
	if a.sub == "retry" {
		fmt.Fprintf(stderr, "securerelay queue retry: the relay is not running (%s does not answer); it tries every message when it starts\n", sock)
		return 1
	}
	// No relay: work on the spool, under its lock, so that a relay
	// starting meanwhile waits for us (and we refuse if one holds it).
	op := localOperator()
	if err := becomeSpoolOwner(cfg.StateDir); err != nil {
		fmt.Fprintf(stderr, "securerelay queue %s: %v\n", a.sub, err)
		return 1
	}
	unlock, err := lockSpool(cfg, 0)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay queue %s: %v\n", a.sub, err)
		return 1
	}
	defer unlock()
	var q *queue.Queue
	q, err = queue.Open(queue.Options{
		Dir: spoolDir(cfg),
		// bounce: the DSN is spooled here, and sent when the relay starts.
		Bouncer: outbound.NewBouncer(func() *queue.Queue { return q }, bouncerOptions(cfg)),
		// Warnings only: the changes (logged as warnings, with the
		// operator) and trouble, not a line per message recovered.
		Logger:           slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		HoldMaxAge:       cfg.Queue.HoldMaxAge.D(),
		HoldMaxSize:      int64(cfg.Queue.HoldMaxSize),
		QuarantineMaxAge: cfg.Queue.QuarantineMaxAge.D(),
	})
	if err != nil {
		fmt.Fprintf(stderr, "securerelay queue %s: %v\n", a.sub, err)
		return 1
	}
	defer q.Close()
	return queueControl(q, a, op, stdout, stderr)
}

// bouncerOptions are the relay's DSN settings (wire.go), also for a
// bounce on the spool of a stopped relay.
func bouncerOptions(cfg *config.Config) outbound.BouncerOptions {
	return outbound.BouncerOptions{Hostname: cfg.Hostname, Postmaster: cfg.Postmaster, MaxReturnSize: int64(cfg.Queue.DSNReturnMaxSize)}
}

// ClaimTimeout bounds a command through the socket: it may wait for
// attempts in progress, one message after the other.
func ClaimTimeout() time.Duration { return 10 * time.Minute }

// localOperator is the user running the command (the direct path).
func localOperator() queue.Operator {
	uid := os.Getuid()
	op := queue.Operator{UID: uid, User: "uid " + strconv.Itoa(uid), Via: "spool"}
	if u, err := user.Current(); err == nil {
		op.User = u.Username
	}
	return op
}

// becomeSpoolOwner makes the direct path write as the relay would: files
// root created in state_dir (a sidecar, the lock) would be unreadable to a
// relay running as its own user, which would then deliver a message again
// to recipients that had it, or not start. So root takes the owner's
// uid and gid; another user is refused.
func becomeSpoolOwner(stateDir string) error {
	fi, err := os.Stat(stateDir)
	if err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) == os.Geteuid() {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("state_dir %s belongs to uid %d: run this as that user (or root)", stateDir, st.Uid)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("becoming the owner of %s: %w", stateDir, err)
	}
	if err := syscall.Setgid(int(st.Gid)); err != nil {
		return fmt.Errorf("becoming the owner of %s (gid %d): %w", stateDir, st.Gid, err)
	}
	if err := syscall.Setuid(int(st.Uid)); err != nil {
		return fmt.Errorf("becoming the owner of %s (uid %d): %w", stateDir, st.Uid, err)
	}
	return nil
}

// lockSpool takes the spool lock (state_dir/spool.lock) that a running
// relay holds for its lifetime, and a queue command working on the spool
// for its own (a second or so): wait is how long to wait for it.
func lockSpool(cfg *config.Config, wait time.Duration) (func(), error) {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	p := filepath.Join(cfg.StateDir, "spool.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool lock: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("spool lock %s: %w", p, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("the spool in %s is in use by another process (%s is locked: a running relay, whose control socket is %s, or a queue command)", cfg.StateDir, p, filepath.Join(cfg.StateDir, control.SocketName))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return func() { f.Close() }, nil
}

// queueControl runs a changing command on q (the relay's, or one opened
// for the command) for op.
func queueControl(q *queue.Queue, a *queueArgs, op queue.Operator, stdout, stderr io.Writer) int {
	ctx := context.Background()
	failed := 0
	each := func(verb string, f func(context.Context, string, queue.Operator) error) {
		for _, id := range a.ids {
			if err := f(ctx, id, op); err != nil {
				fmt.Fprintf(stderr, "securerelay queue %s: %v\n", a.sub, err)
				failed++
				continue
			}
			fmt.Fprintf(stdout, "%s: %s\n", id, verb)
		}
	}
	switch a.sub {
	case "hold":
		each("held", q.Hold)
	case "release":
		each("released", q.Release)
	case "bounce":
		each("returned to its sender", q.Bounce)
	case "retry":
		if a.all {
			fmt.Fprintf(stdout, "%d messages due now\n", q.RetryAll(op))
			return 0
		}
		each("due now", q.Retry)
	case "delete":
		ids := a.ids
		if len(ids) == 0 && !a.yes {
			return deletePreview(a, q.Dir(), stderr)
		}
		if len(ids) == 0 {
			items, err := queue.Scan(q.Dir())
			if err != nil {
				fmt.Fprintf(stderr, "securerelay queue: %v\n", err)
				return 1
			}
			for _, in := range filterInfos(a, items, time.Now()) {
				ids = append(ids, in.ID)
			}
		}
		n := 0
		for _, id := range ids {
			if err := q.Delete(ctx, id, op); err != nil {
				fmt.Fprintf(stderr, "securerelay queue delete: %v\n", err)
				failed++
				continue
			}
			n++
		}
		fmt.Fprintf(stdout, "deleted %d messages\n", n)
	case "prune":
		h, qn, err := q.PruneOlder(a.heldOlder, a.quarOlder, op)
		fmt.Fprintf(stdout, "deleted %d held messages, %d quarantined files\n", h, qn)
		if err != nil {
			fmt.Fprintf(stderr, "securerelay queue prune: %v\n", err)
			return 1
		}
	default:
		fmt.Fprintf(stderr, "securerelay queue: %s is not a command of the control socket\n", a.sub)
		return 2
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// deletePreview says what delete --from/--to would delete, and changes
// nothing.
func deletePreview(a *queueArgs, dir string, stderr io.Writer) int {
	items, err := queue.Scan(dir)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay queue: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "securerelay queue delete: %d messages match; add --yes to delete them\n", len(filterInfos(a, items, time.Now())))
	return 2
}

// listenControl opens the control socket. With queue.control_group its
// members may use it: the socket is 0660 with that group, and state_dir
// gets the group and g+x, so that they reach the socket by its name
// without listing state_dir or reading anything in it (the relay's files
// there are 0600).
func listenControl(cfg *config.Config, h control.Handler) (*control.Server, error) {
	path := filepath.Join(cfg.StateDir, control.SocketName)
	name := cfg.Queue.ControlGroup
	if name == "" {
		return control.Listen(path, h)
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return nil, fmt.Errorf("queue.control_group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return nil, fmt.Errorf("queue.control_group: %s: gid %q: %w", name, g.Gid, err)
	}
	fi, err := os.Stat(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state_dir: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Gid) != gid {
		if err := os.Chown(cfg.StateDir, -1, gid); err != nil {
			return nil, fmt.Errorf("queue.control_group: giving state_dir %s to group %s (the relay's user must be root or a member of it): %w", cfg.StateDir, name, err)
		}
	}
	if fi.Mode().Perm()&0o010 == 0 {
		if err := os.Chmod(cfg.StateDir, fi.Mode().Perm()|0o010); err != nil {
			return nil, fmt.Errorf("queue.control_group: letting group %s search state_dir %s: %w", name, cfg.StateDir, err)
		}
	}
	return control.ListenWith(path, h, control.Options{Group: name, GID: gid})
}

// controlHandler serves the control socket of the running relay: the
// commands that change the queue, and list, count and show for members
// of queue.control_group, who cannot read the spool themselves.
func (r *relay) controlHandler(peer control.Peer, args []string, stdout, stderr io.Writer) int {
	a, ok := parseQueueArgs(args, stderr)
	if !ok {
		return 2
	}
	switch a.sub {
	case "list", "count":
		return queueList(a, r.q.Dir(), stdout, stderr)
	case "show":
		return queueShow(a, r.q.Dir(), stdout, stderr)
	}
	return queueControl(r.q, a, queue.Operator{User: peer.User, UID: peer.UID, Via: "socket"}, stdout, stderr)
}

// addrMatches: pattern is an address (case-insensitive), "@domain", or
// "<>" for the null sender.
func addrMatches(pattern, addr string) bool {
	switch {
	case pattern == "<>":
		return addr == ""
	case strings.HasPrefix(pattern, "@"):
		return strings.HasSuffix(strings.ToLower(addr), strings.ToLower(pattern))
	}
	return strings.EqualFold(pattern, addr)
}

// filterInfos applies list's (and delete's) filters.
func filterInfos(a *queueArgs, items []queue.Info, now time.Time) []queue.Info {
	var out []queue.Info
	for _, in := range items {
		if (a.held || a.quarantined) && !(a.held && in.Held || a.quarantined && in.Quarantined) {
			continue
		}
		if in.Err != nil && (a.from != "" || a.to != "" || a.olderThan > 0) {
			continue // nothing known to match
		}
		if a.from != "" && !addrMatches(a.from, in.Envelope.From) {
			continue
		}
		if a.to != "" {
			hit := false
			for _, r := range in.Envelope.To {
				hit = hit || addrMatches(a.to, r)
			}
			if !hit {
				continue
			}
		}
		if a.olderThan > 0 && now.Sub(in.Envelope.Received) < a.olderThan {
			continue
		}
		out = append(out, in)
	}
	return out
}

// messageState is one word for where a message stands.
func messageState(in *queue.Info) string {
	switch {
	case in.Quarantined:
		return "quarantined"
	case in.Held:
		return "held"
	case in.Attempts > 0:
		return "deferred"
	}
	return "queued"
}

type jsonRcpt struct {
	Address string    `json:"address"`
	State   string    `json:"state"`
	Code    string    `json:"code,omitempty"`
	Reply   string    `json:"reply,omitempty"`
	At      time.Time `json:"at,omitempty"`
}

type jsonMessage struct {
	ID         string     `json:"id"`
	State      string     `json:"state"`
	Size       int64      `json:"size"`
	Received   time.Time  `json:"received,omitempty"`
	Attempts   int        `json:"attempts"`
	Next       *time.Time `json:"next,omitempty"`
	From       string     `json:"from"`
	Origin     string     `json:"origin,omitempty"`
	TLSPolicy  string     `json:"tls_policy,omitempty"`
	Recipients []jsonRcpt `json:"recipients"`
	Error      string     `json:"error,omitempty"`
}

func toJSON(in *queue.Info) jsonMessage {
	m := jsonMessage{ID: in.ID, State: messageState(in), Size: in.Size, Received: in.Envelope.Received,
		Attempts: in.Attempts, From: in.Envelope.From, Origin: in.Envelope.Origin, TLSPolicy: in.TLSPolicy, Recipients: []jsonRcpt{}}
	if !in.Next.IsZero() && !in.Held && !in.Quarantined {
		n := in.Next
		m.Next = &n
	}
	if in.Err != nil {
		m.Error = in.Err.Error()
	}
	for _, r := range in.Rcpts {
		m.Recipients = append(m.Recipients, jsonRcpt{Address: r.Addr, State: r.State, Code: r.Code, Reply: r.Reply, At: r.At})
	}
	return m
}

func queueList(a *queueArgs, dir string, stdout, stderr io.Writer) int {
	items, err := queue.Scan(dir)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay queue: %v\n", err)
		return 1
	}
	if a.sub == "count" {
		// Messages still being delivered; held and quarantined ones wait
		// for the admin.
		n := 0
		for _, it := range items {
			if !it.Held && !it.Quarantined {
				n++
			}
		}
		fmt.Fprintln(stdout, n)
		return 0
	}
	items = filterInfos(a, items, time.Now())
	sort.SliceStable(items, func(i, j int) bool { return items[i].ID < items[j].ID })
	if a.json {
		out := []jsonMessage{}
		for i := range items {
			out = append(out, toJSON(&items[i]))
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "securerelay queue: %v\n", err)
			return 1
		}
		return 0
	}
	return printList(items, stdout)
}

func queueShow(a *queueArgs, dir string, stdout, stderr io.Writer) int {
	id := a.ids[0]
	if _, err := queue.Locate(dir, id); err != nil {
		fmt.Fprintf(stderr, "securerelay queue show: %v\n", err)
		return 1
	}
	items, err := queue.Scan(dir)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay queue: %v\n", err)
		return 1
	}
	var in *queue.Info
	for i := range items {
		if items[i].ID == id {
			in = &items[i]
		}
	}
	if in == nil {
		fmt.Fprintf(stderr, "securerelay queue show: %s: %v\n", id, queue.ErrNotFound)
		return 1
	}
	w := bufio.NewWriter(stdout)
	defer w.Flush()
	fmt.Fprintf(w, "queue_id: %s\nstate: %s\n", in.ID, messageState(in))
	if in.Err != nil {
		fmt.Fprintf(w, "error: %v\n", in.Err)
		return 1
	}
	e := &in.Envelope
	from := e.From
	if from == "" {
		from = "<>"
	}
	fmt.Fprintf(w, "from: %s\nreceived: %s\nsize: %d\norigin: %s\n", from, e.Received.Format(time.RFC3339), in.Size, e.Origin)
	for _, kv := range [][2]string{{"listener", e.Listener}, {"client", e.Client}, {"auth_user", e.AuthUser}, {"envid", e.EnvID}, {"ret", e.Ret}, {"body", e.Body}, {"tls", in.TLSPolicy}} {
		if kv[1] != "" {
			fmt.Fprintf(w, "%s: %s\n", kv[0], kv[1])
		}
	}
	if e.RequireTLS {
		fmt.Fprintln(w, "requiretls: yes")
	}
	fmt.Fprintf(w, "attempts: %d\n", in.Attempts)
	if !in.Next.IsZero() && !in.Held && !in.Quarantined {
		fmt.Fprintf(w, "next: %s\n", in.Next.Format(time.RFC3339))
	}
	fmt.Fprintln(w, "recipients:")
	for _, r := range in.Rcpts {
		fmt.Fprintf(w, "  %s: %s", r.Addr, r.State)
		if r.Code != "" || r.Reply != "" {
			fmt.Fprintf(w, " %s %s", r.Code, r.Reply)
		}
		if !r.At.IsZero() {
			fmt.Fprintf(w, " (%s)", r.At.Format(time.RFC3339))
		}
		fmt.Fprintln(w)
	}
	if hist, err := queue.History(dir, id); err == nil && len(hist) > 0 {
		fmt.Fprintln(w, "history:")
		for _, h := range hist {
			if h.Addr == "" {
				fmt.Fprintf(w, "  %s released by an operator\n", h.At.Format(time.RFC3339))
				continue
			}
			fmt.Fprintf(w, "  %s %s: %s %s %s\n", h.At.Format(time.RFC3339), h.Addr, h.State, h.Code, h.Reply)
		}
	}
	rc, err := queue.OpenData(dir, id)
	if err != nil {
		fmt.Fprintf(stderr, "securerelay queue show: %v\n", err)
		return 1
	}
	defer rc.Close()
	br := bufio.NewReader(rc)
	if a.body {
		fmt.Fprintln(w, "message:")
		if _, err := io.Copy(w, br); err != nil {
			fmt.Fprintf(stderr, "securerelay queue show: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(w, "header:")
	for {
		line, err := br.ReadString('\n')
		if strings.TrimRight(line, "\r\n") == "" {
			break
		}
		fmt.Fprint(w, "  "+line)
		if err != nil {
			break
		}
	}
	return 0
}
