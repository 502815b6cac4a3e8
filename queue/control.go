package queue

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Operator control of the spool (securerelay queue hold|release|delete|
// retry|prune). Each operation works on the queue that owns the spool: the
// running relay's (through its control socket) or, with the relay stopped,
// one opened for the command and never started. An operation never races
// a delivery: a message being delivered right now is claimed only once its
// attempt has ended (ClaimWait), or the operation fails with ErrBusy; the
// claimed message is out of the schedule until the operation is done.

// Operator names who asked for a change, for the log.
type Operator struct {
	User string // Unix user name, or "uid N" when it has none
	UID  int
	Via  string // "socket" (running relay) or "spool" (relay stopped)
}

func (o Operator) logArgs() []any {
	return []any{"operator", o.User, "uid", o.UID, "via", o.Via}
}

// ErrNotFound: no message with that ID in the spool, hold/ or quarantine/.
var ErrNotFound = errors.New("no such message")

// ErrBusy: the message was being delivered for longer than the operation
// waits; nothing was changed.
var ErrBusy = errors.New("message is being delivered right now; nothing changed, try again when the attempt has ended")

// ClaimWait is how long an operation waits for an attempt in progress.
var ClaimWait = 30 * time.Second

// Where a message is.
const (
	WhereActive     = "active"
	WhereHold       = "hold"
	WhereQuarantine = "quarantine"
)

func validName(id string) bool { return isQueueID(id) }

// Locate says where message id is: active, hold or quarantine.
func (q *Queue) Locate(id string) (string, error) {
	return Locate(q.store.dir, id)
}

// Locate finds message id in the spool dir.
func Locate(dir, id string) (string, error) {
	if !validName(id) {
		return "", fmt.Errorf("%q: not a queue ID (16 hex digits)", id)
	}
	for _, w := range []struct{ where, p string }{
		{WhereActive, filepath.Join(dir, shardOf(id), id)},
		{WhereHold, filepath.Join(dir, holdDir, id)},
		{WhereQuarantine, filepath.Join(dir, brokenDir, id)},
	} {
		if _, err := os.Lstat(w.p); err == nil {
			return w.where, nil
		}
	}
	return "", fmt.Errorf("%s: %w", id, ErrNotFound)
}

// claim takes an active message out of the schedule, waiting while it is
// being delivered. The caller must either finish with it (remove or move
// it) or give it back with unclaim.
func (q *Queue) claim(ctx context.Context, id string) (*item, error) {
	deadline := time.Now().Add(ClaimWait)
	waited := false
	for {
		q.mu.Lock()
		it := q.items[id]
		if it == nil {
			q.mu.Unlock()
			if waited {
				return nil, fmt.Errorf("%s: %w (its delivery attempt, which we waited for, finished it: delivered, held or bounced; nothing changed)", id, ErrNotFound)
			}
			return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		if !it.busy {
			if it.index >= 0 {
				heap.Remove(&q.waiting, it.index)
			}
			it.busy = true
			q.mu.Unlock()
			return it, nil
		}
		q.mu.Unlock()
		if !waited {
			q.log.Info("queue control: waiting for the delivery attempt in progress", "queue_id", id, "max_wait", ClaimWait.String())
		}
		waited = true
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", id, ErrBusy)
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (q *Queue) unclaim(it *item) {
	q.mu.Lock()
	it.busy = false
	heap.Push(&q.waiting, it)
	q.mu.Unlock()
	q.poke()
}

func (q *Queue) forget(it *item) {
	q.mu.Lock()
	delete(q.items, it.id)
	q.mu.Unlock()
}

func (it *item) doneList() []int {
	var out []int
	for i := range it.done {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// Hold moves an active message to hold/: it is not tried again until
// released; the recipients not yet done stay owed (and a release
// delivers to them only). It survives restarts (it is a file in hold/).
func (q *Queue) Hold(ctx context.Context, id string, op Operator) error {
	it, err := q.claim(ctx, id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			if w, lerr := q.Locate(id); lerr == nil && w == WhereHold {
				return fmt.Errorf("%s: already held", id)
			}
		}
		return err
	}
	now := q.opts.Now()
	var notes []rcptNote
	for i := range it.st.env.To {
		if it.done[i] || it.isHeld(i) {
			continue
		}
		reply := "held by operator " + op.User
		if last := it.notes[i]; last.Reply != "" {
			reply += lastAttempt + last.Code + " " + last.Reply
		}
		n := rcptNote{I: i, State: RcptHeld, Reply: reply, At: now}
		notes = append(notes, n)
	}
	if err := q.store.appendStatus(id, status{Done: it.doneList(), Attempts: it.attempts, Held: true, Rcpts: notes}); err != nil {
		q.unclaim(it)
		return fmt.Errorf("%s: recording the hold: %w", id, err)
	}
	for _, n := range notes {
		it.notes[n.I] = n
	}
	if err := q.moveToHold(id); err != nil {
		q.unclaim(it)
		return fmt.Errorf("%s: moving to hold/: %w", id, err)
	}
	q.forget(it)
	q.log.Warn("queue control: held", append([]any{"queue_id", id, "from", it.st.env.From, "nrcpt", len(notes)}, op.logArgs()...)...)
	return nil
}

// Release puts a held message back into the active spool, due now, for
// the recipients it still owes (those not delivered).
func (q *Queue) Release(ctx context.Context, id string, op Operator) error {
	if !validName(id) {
		return fmt.Errorf("%q: not a queue ID (16 hex digits)", id)
	}
	h := &q.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	src := filepath.Join(q.store.dir, holdDir, id)
	st, err := readStored(src)
	if errors.Is(err, os.ErrNotExist) {
		if w, lerr := q.Locate(id); lerr == nil {
			return fmt.Errorf("%s: not held (it is in %s)", id, w)
		}
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("%s: cannot be released: %w", id, err)
	}
	ps := readStatus(src+statusExt, id)
	owed := 0
	for i := range st.env.To {
		if !ps.done[i] {
			owed++
		}
	}
	if owed == 0 {
		return fmt.Errorf("%s: every recipient is recorded as done (held before per-recipient states were kept?); nothing to release — delete it or deliver it by hand", id)
	}
	now := q.opts.Now()
	var done []int
	for i := range ps.done {
		done = append(done, i)
	}
	sort.Ints(done)
	line := status{ID: id, Done: done, Attempts: ps.attempts, Next: now, Released: true}
	if err := appendStatusAt(src+statusExt, line); err != nil {
		return fmt.Errorf("%s: recording the release: %w", id, err)
	}
	dst := q.store.path(id)
	if err := os.Rename(src+statusExt, dst+statusExt); err != nil {
		return fmt.Errorf("%s: moving back to the spool: %w", id, err)
	}
	if err := os.Rename(src, dst); err != nil {
		os.Rename(dst+statusExt, src+statusExt)
		return fmt.Errorf("%s: moving back to the spool: %w", id, err)
	}
	q.store.syncer(id).sync()
	syncDir(filepath.Join(q.store.dir, holdDir))
	if f := h.byID[id]; f != nil {
		heap.Remove(&h.files, f.index)
		delete(h.byID, id)
		h.size -= f.size
	}
	ps = readStatus(dst+statusExt, id)
	it := &item{id: id, st: st, done: ps.done, attempts: ps.attempts, next: now, index: -1, sidecar: true, warned: ps.warned, notes: ps.notes}
	q.mu.Lock()
	q.items[id] = it
	heap.Push(&q.waiting, it)
	q.mu.Unlock()
	q.poke()
	q.log.Warn("queue control: released", append([]any{"queue_id", id, "from", st.env.From, "nrcpt", owed}, op.logArgs()...)...)
	return nil
}

// Retry makes an active message due now (a held one is released).
func (q *Queue) Retry(ctx context.Context, id string, op Operator) error {
	if w, err := q.Locate(id); err != nil {
		return err
	} else if w == WhereHold {
		return q.Release(ctx, id, op)
	} else if w == WhereQuarantine {
		return fmt.Errorf("%s: quarantined (a damaged file): it cannot be delivered; look at it with queue show, then delete it", id)
	}
	q.mu.Lock()
	it := q.items[id]
	if it == nil {
		q.mu.Unlock()
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	busy := it.busy
	if !busy && it.index >= 0 {
		it.next = q.opts.Now()
		heap.Fix(&q.waiting, it.index)
	}
	q.mu.Unlock()
	q.poke()
	q.log.Info("queue control: retry", append([]any{"queue_id", id, "in_progress", busy}, op.logArgs()...)...)
	return nil
}

// RetryAll makes every waiting message due now and returns how many.
func (q *Queue) RetryAll(op Operator) int {
	now := q.opts.Now()
	q.mu.Lock()
	n := len(q.waiting)
	for _, it := range q.waiting {
		it.next = now
	}
	heap.Init(&q.waiting)
	q.mu.Unlock()
	q.poke()
	q.log.Info("queue control: retry all", append([]any{"messages", n}, op.logArgs()...)...)
	return n
}

// Delete removes a message from the spool, hold/ or quarantine/, for
// good. An active message being delivered is waited for (ClaimWait).
func (q *Queue) Delete(ctx context.Context, id string, op Operator) error {
	where, err := q.Locate(id)
	if err != nil {
		return err
	}
	var env *Envelope
	switch where {
	case WhereActive:
		it, err := q.claim(ctx, id)
		if err != nil {
			return err
		}
		if err := q.store.remove(id, true); err != nil && !errors.Is(err, os.ErrNotExist) {
			q.unclaim(it)
			return fmt.Errorf("%s: %w", id, err)
		}
		q.store.syncer(id).sync()
		q.forget(it)
		env = &it.st.env
	case WhereHold:
		h := &q.hold
		h.mu.Lock()
		p := filepath.Join(q.store.dir, holdDir, id)
		env, _ = readEnvelope(p)
		err := os.Remove(p)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			os.Remove(p + statusExt)
			if f := h.byID[id]; f != nil {
				heap.Remove(&h.files, f.index)
				delete(h.byID, id)
				h.size -= f.size
			}
		}
		h.mu.Unlock()
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		syncDir(filepath.Dir(p))
	case WhereQuarantine:
		p := filepath.Join(q.store.dir, brokenDir, id)
		env, _ = readEnvelope(p)
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		os.Remove(p + statusExt)
		syncDir(filepath.Dir(p))
	}
	args := []any{"queue_id", id, "where", where}
	args = append(args, envelopeLog(env, errors.New("damaged"))...)
	q.log.Warn("queue control: deleted", append(args, op.logArgs()...)...)
	return nil
}

// PruneOlder removes held messages held longer than heldAge and files
// quarantined longer than quarAge (0: that directory is left alone), and
// returns how many of each.
func (q *Queue) PruneOlder(heldAge, quarAge time.Duration, op Operator) (held, quarantined int, err error) {
	now := q.opts.Now()
	for _, d := range []struct {
		dir string
		age time.Duration
		n   *int
	}{{holdDir, heldAge, &held}, {brokenDir, quarAge, &quarantined}} {
		if d.age <= 0 {
			continue
		}
		ents, rerr := os.ReadDir(filepath.Join(q.store.dir, d.dir))
		if rerr != nil {
			return held, quarantined, rerr
		}
		for _, e := range ents {
			if !isQueueID(e.Name()) || !e.Type().IsRegular() {
				continue
			}
			fi, ierr := e.Info()
			if ierr != nil || now.Sub(fi.ModTime()) < d.age {
				continue
			}
			if derr := q.Delete(context.Background(), e.Name(), op); derr != nil {
				if errors.Is(derr, ErrNotFound) {
					continue
				}
				return held, quarantined, derr
			}
			*d.n++
		}
	}
	return held, quarantined, nil
}

// appendStatusAt appends a sidecar line to path.
func appendStatusAt(path string, st status) error {
	b, err := jsonLine(st)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// OpenData returns the data of message id in the spool dir (active, hold
// or quarantine), for queue show --body.
func OpenData(dir, id string) (io.ReadCloser, error) {
	where, err := Locate(dir, id)
	if err != nil {
		return nil, err
	}
	p := map[string]string{
		WhereActive: filepath.Join(dir, shardOf(id), id), WhereHold: filepath.Join(dir, holdDir, id),
		WhereQuarantine: filepath.Join(dir, brokenDir, id)}[where]
	st, err := readStored(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{st.reader(f), f}, nil
}

// Busy lists the messages being delivered right now.
func (q *Queue) Busy() map[string]bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := map[string]bool{}
	for id, it := range q.items {
		if it.busy {
			out[id] = true
		}
	}
	return out
}

// Dir is the spool directory.
func (q *Queue) Dir() string { return q.store.dir }

// History returns what the sidecar of message id in the spool dir
// recorded, oldest first: each recipient's result per attempt, the
// operator's holds, and releases (Addr "", State RcptReleased).
func History(dir, id string) ([]RcptInfo, error) {
	where, err := Locate(dir, id)
	if err != nil {
		return nil, err
	}
	p := map[string]string{
		WhereActive: filepath.Join(dir, shardOf(id), id), WhereHold: filepath.Join(dir, holdDir, id),
		WhereQuarantine: filepath.Join(dir, brokenDir, id)}[where]
	env, err := readEnvelope(p)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p + statusExt)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []RcptInfo
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		var st status
		if len(line) == 0 || json.Unmarshal(line, &st) != nil || st.ID != id {
			continue
		}
		if st.Released {
			out = append(out, RcptInfo{State: RcptReleased, At: st.Next})
		}
		for _, n := range st.Rcpts {
			if n.I < 0 || n.I >= len(env.To) {
				continue
			}
			out = append(out, RcptInfo{Addr: env.To[n.I], State: n.State, Code: n.Code, Reply: n.Reply, At: n.At})
		}
	}
	return out, nil
}

// BounceCode is the status of a recipient an operator bounced: RFC 3463
// X.0.0, "other undefined status". None of the specific subjects fits (it
// is neither the address, the mailbox, the destination system, the
// network, the protocol, the content nor security: an operator decided),
// and the DSN's explanation says what happened in words.
const BounceCode = "5.0.0"

// ErrNoBounce: the message may not be returned to its sender (the null
// sender, or inbound mail); nothing was changed.
var ErrNoBounce = errors.New("not returned to its sender")

// bounceable says why a message may not be bounced, or nil.
func bounceable(id string, env *Envelope) error {
	switch {
	case env.From == "":
		// RFC 5321 §6.1 / RFC 3461 §6.2: nothing is ever sent to <>, and
		// a DSN about a DSN could loop. Deleting is the operator's
		// explicit choice, with the command that says so.
		return fmt.Errorf("%s: %w: its sender is the null sender <> (a DSN or other notification), which never gets a DSN; nothing changed — delete it with queue delete %s", id, ErrNoBounce, id)
	case env.Origin == OriginInbound:
		// DESIGN.md: inbound mail is refused in the dialog, never
		// bounced; a sender from the internet may be forged (backscatter).
		return fmt.Errorf("%s: %w: it is inbound mail (accepted as MX, its sender may be forged), which the relay never bounces; nothing changed — release it when the downstream takes it, or delete it with queue delete %s", id, ErrNoBounce, id)
	}
	return nil
}

// Bounce returns a queued, deferred or held message to its sender with a
// failure DSN (through the queue's Bouncer, as for a permanent failure)
// for the recipients still owed it, then removes it. A message being
// delivered right now is waited for (ClaimWait). The null sender and
// inbound mail are refused (ErrNoBounce), nothing changed. The DSN is
// spooled before the message is removed: a crash in between may leave
// both, never neither.
func (q *Queue) Bounce(ctx context.Context, id string, op Operator) error {
	where, err := q.Locate(id)
	if err != nil {
		return err
	}
	if q.opts.Bouncer == nil {
		return fmt.Errorf("%s: no DSN can be sent from here (no bouncer); nothing changed", id)
	}
	switch where {
	case WhereQuarantine:
		return fmt.Errorf("%s: quarantined (a damaged file): it cannot be returned; look at it with queue show, then delete it", id)
	case WhereHold:
		h := &q.hold
		h.mu.Lock()
		defer h.mu.Unlock()
		p := filepath.Join(q.store.dir, holdDir, id)
		st, err := readStored(p)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w (released or deleted meanwhile; nothing changed)", id, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("%s: cannot be returned: %w", id, err)
		}
		if err := bounceable(id, &st.env); err != nil {
			return err
		}
		ps := readStatus(p+statusExt, id)
		it := &item{id: id, st: st, done: ps.done, attempts: ps.attempts, notes: ps.notes}
		if err := q.bounceItem(it, p, op, func(s status) error { s.ID = id; return appendStatusAt(p+statusExt, s) }); err != nil {
			return err
		}
		os.Remove(p + statusExt)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: returned to its sender, but not removed from hold/ (every recipient is recorded as done): %w", id, err)
		}
		if f := h.byID[id]; f != nil {
			heap.Remove(&h.files, f.index)
			delete(h.byID, id)
			h.size -= f.size
		}
		syncDir(filepath.Dir(p))
	default:
		it, err := q.claim(ctx, id)
		if err != nil {
			return err
		}
		if err := bounceable(id, &it.st.env); err != nil {
			q.unclaim(it)
			return err
		}
		if err := q.bounceItem(it, q.store.path(id), op, func(s status) error { return q.store.appendStatus(id, s) }); err != nil {
			q.unclaim(it)
			return err
		}
		if err := q.store.remove(id, true); err != nil && !errors.Is(err, os.ErrNotExist) {
			// Every recipient is recorded as done: if it comes back at a
			// restart, nobody gets it a second time.
			q.forget(it)
			return fmt.Errorf("%s: returned to its sender, but not removed from the spool: %w", id, err)
		}
		q.store.syncer(id).sync()
		q.forget(it)
	}
	return nil
}

// lastAttempt introduces, in an operator's hold note, the attempt before
// the hold.
const lastAttempt = "; last attempt: "

// lastResult is what the last delivery attempt to a recipient said, from
// its note: for one an operator held, the attempt quoted in the note (the
// operator's name is for our log, not for the sender's DSN).
func lastResult(n rcptNote) string {
	if n.State == RcptHeld && n.Code == "" {
		_, after, _ := strings.Cut(n.Reply, lastAttempt)
		return strings.TrimSpace(after)
	}
	return strings.TrimSpace(n.Code + " " + n.Reply)
}

// bounceItem reports the recipients of it still owed to its sender as failed,
// logs each (status=bounced), and records them done with record.
func (q *Queue) bounceItem(it *item, path string, op Operator, record func(status) error) error {
	env := &it.st.env
	now := q.opts.Now()
	d := &Delivery{ID: it.id, Envelope: env, Attempt: it.attempts, Size: it.st.size(), Content: it.st.content,
		path: path, ext: it.st.extent}
	var reports []Bounce
	var notes []rcptNote
	for i, rcpt := range env.To {
		if it.done[i] {
			continue
		}
		reason := "returned to the sender by the postmaster"
		r := Result{Status: PermFail, Code: BounceCode, Reply: reason + " (operator " + op.User + ")", Relay: "none",
			Explanation: "The postmaster returned this message to you before it could be delivered to this recipient."}
		if last := lastResult(it.notes[i]); last != "" {
			r.Reply += lastAttempt + last
			r.Explanation += " The last delivery attempt failed with: " + last
		}
		d.Rcpts = append(d.Rcpts, rcpt)
		d.idx = append(d.idx, i)
		notes = append(notes, rcptNote{I: i, State: RcptBounced, Code: r.Code, Reply: r.Reply, At: now})
		dsn := env.DSN(i)
		if !dsn.Wants(NotifyFailure) {
			q.log.Info("no DSN: the sender asked for none", "queue_id", it.id, "to", rcpt, "notify", dsn.Notify)
			continue
		}
		// No Diagnostic-Code: it is for a remote reply, and this is none.
		rep := r
		rep.Reply, rep.Relay = "", ""
		reports = append(reports, Bounce{Rcpt: rcpt, Result: rep, Action: ActionFailed, DSN: dsn})
	}
	if len(notes) == 0 {
		return fmt.Errorf("%s: every recipient is done already; nothing to return — delete it", it.id)
	}
	if len(reports) > 0 {
		if err := q.opts.Bouncer(d, reports); err != nil {
			return fmt.Errorf("%s: could not queue the DSN; nothing changed: %w", it.id, err)
		}
	}
	done := it.doneList()
	for _, n := range notes {
		done = append(done, n.I)
	}
	sort.Ints(done)
	if err := record(status{Done: done, Attempts: it.attempts, Rcpts: notes}); err != nil {
		q.log.Warn("could not record the bounce before removing the message", "queue_id", it.id, "error", err)
	}
	for _, n := range notes {
		q.logResult(it, env.To[n.I], Result{Status: PermFail, Code: n.Code, Reply: n.Reply, Relay: "none"}, RcptBounced, now.Sub(env.Received), 0)
	}
	q.log.Warn("queue control: bounced", append([]any{"queue_id", it.id, "from", env.From, "nrcpt", len(notes), "dsn_rcpts", len(reports)}, op.logArgs()...)...)
	return nil
}
