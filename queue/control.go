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
			reply += "; last attempt: " + last.Code + " " + last.Reply
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
