// Package queue is securerelay's durable spool: a message is acknowledged
// only after its file and directory entry are fsync'd, everything still
// spooled is picked up again at start, and deliveries are at-least-once (a
// crash between the next hop's 250 and our bookkeeping may duplicate a
// message, never lose it).
//
// The queue schedules attempts and keeps per-recipient state; it does not
// know SMTP. The delivery engine (package outbound) implements Deliverer,
// and a Bouncer turns permanent failures into DSNs.
package queue

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Status is the outcome of one delivery attempt for one recipient.
type Status int

// Outcomes of an attempt. The zero value is deliberately none of them: a
// Result a Deliverer forgot to fill in must never read as Delivered; the
// queue treats it as a temporary failure.
const (
	Delivered Status = iota + 1
	TempFail
	PermFail
)

// Result reports one recipient's attempt.
type Result struct {
	Status Status
	// Code is the enhanced status code (RFC 3463), e.g. "5.1.1".
	Code string
	// Reply is what the next hop said, or our own explanation
	// ("connect to mx.example.org[192.0.2.1]:25: connection refused").
	Reply string
	// Relay names the next hop ("mx.example.org[192.0.2.1]:25", "maildir").
	Relay string
	// TLS describes the connection ("TLS1.3 TLS_AES_128_GCM_SHA256"), or "".
	TLS string
	// TLSPolicy records the TLS decision for this attempt: the level
	// required and where it came from, and what was achieved or why not
	// ("required secure (policy rule 1); achieved none: no STARTTLS").
	TLSPolicy string
	// Encryption records the OpenPGP encryption of this attempt: the
	// recipient's key and where it came from ("openpgp key=… key_source=
	// wkd (https://…)"), or why there was none; "" when not encrypted.
	Encryption string
	// Explanation, for a DSN, says in an end user's words why delivery
	// failed when the reply alone would not ("the partner's server did not
	// offer the encryption your organisation requires for bank.example").
	Explanation string
	// Success, for a Delivered recipient, is what a success DSN reports
	// if the sender asked for one (NOTIFY=SUCCESS): ActionDelivered
	// (final delivery: LMTP, maildir) or ActionRelayed (to a next hop
	// without DSN). "" when the next hop offers DSN and was handed the
	// request: the notice is then its to send (RFC 3461 §5.2.2).
	Success string
}

// DSN actions (RFC 3464 §2.3.3).
const (
	ActionFailed    = "failed"
	ActionDelayed   = "delayed"
	ActionDelivered = "delivered"
	ActionRelayed   = "relayed"
)

// Delivery is one attempt to deliver a message to some of its recipients.
type Delivery struct {
	ID       string
	Envelope *Envelope
	// Rcpts are the recipients to attempt now (those not done yet).
	Rcpts []string
	// Attempt counts from 1.
	Attempt int
	// Size is the length of the message data (as amended, see
	// Writer.Amend).
	Size int64
	// Content is what is known of the data's octets (8-bit or not).
	Content Content

	path string
	ext  extent
	idx  []int // Rcpts[k] is Envelope.To[idx[k]]
}

// DSN returns the DSN parameters of a recipient of this attempt (of its
// first occurrence, should it be listed twice).
func (d *Delivery) DSN(rcpt string) RcptDSN {
	for k, r := range d.Rcpts {
		if r == rcpt && k < len(d.idx) {
			return d.Envelope.DSN(d.idx[k])
		}
	}
	return RcptDSN{}
}

// Open returns the message data (CRLF lines, including our Received:).
func (d *Delivery) Open() (io.ReadCloser, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{d.ext.reader(f), f}, nil
}

// Deliverer delivers messages; implemented by the outbound delivery engine.
// Deliver must return one Result per d.Rcpts, in order. When ctx is
// cancelled (shutdown) it should return promptly with TempFail results.
type Deliverer interface {
	Deliver(ctx context.Context, d *Delivery) []Result
}

// Bounce is one recipient's outcome the Bouncer must report.
type Bounce struct {
	Rcpt   string
	Result Result
	// Action is ActionFailed ("" too), ActionDelayed (a delay warning),
	// ActionDelivered or ActionRelayed (a success notice).
	Action string
	// DSN are the recipient's DSN parameters (ORCPT for the report).
	DSN RcptDSN
}

// Bouncer builds and enqueues DSNs. It is called only for messages whose
// origin allows it (not inbound, not the null sender), and only for what
// each recipient asked for (NOTIFY). It is called with the permanent
// failures of an attempt, and separately with its notices (delays,
// successes). When it returns an error for failures they stay pending and
// are retried, so a failure DSN is never lost either; a notice that cannot
// be spooled is logged and not tried again, since its recipient is done.
type Bouncer func(d *Delivery, reports []Bounce) error

// Options configure a Queue.
type Options struct {
	Dir     string
	Retry   []time.Duration
	MaxAge  time.Duration
	Workers int
	Logger  *slog.Logger
	// Now is the clock; tests move it. Default time.Now.
	Now       func() time.Time
	Deliverer Deliverer
	Bouncer   Bouncer
	// Preallocate keeps this many empty spool files ready (see pool.go);
	// 0 disables it.
	Preallocate int
	// HoldMaxAge: a message in hold/ is removed this long after it was
	// held; HoldMaxSize: past this many bytes in hold/ the oldest held
	// messages are removed (see hold.go). QuarantineMaxAge does the same
	// for quarantine/. PruneInterval: how often hold/ and quarantine/ are
	// listed again. 0 means the Default* value.
	HoldMaxAge       time.Duration
	HoldMaxSize      int64
	QuarantineMaxAge time.Duration
	PruneInterval    time.Duration
	// DelayWarning: a recipient still pending this long after the
	// message arrived gets its sender one delay warning (Postfix's
	// delay_warning_time), if it asked for one (NOTIFY=DELAY, or no
	// NOTIFY). 0: none.
	DelayWarning time.Duration
	// Observe, if set, is told of every recipient's attempt where it is
	// logged (logResult), so that a metric and the log never disagree.
	// It runs on the delivery goroutine: it must be quick.
	Observe func(Outcome)
}

// Outcome is one recipient's attempt, as logged.
type Outcome struct {
	Origin string // the message's (Envelope.Origin)
	// State is the recipient's after the attempt: RcptSent,
	// RcptDeferred, RcptBounced or RcptHeld.
	State  string
	Result Result
	// Delay is the time since the message arrived; Attempt the
	// attempt's duration.
	Delay, Attempt time.Duration
}

// Queue is the spool plus its scheduler.
type Queue struct {
	opts  Options
	store *store
	log   *slog.Logger

	mu      sync.Mutex
	items   map[string]*item
	waiting waitHeap
	wake    chan struct{}

	sem     chan struct{}
	running sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
	loop    chan struct{}
	// runDone is closed when run has returned: after that no attempt starts.
	runDone chan struct{}
	stopped bool

	hold holdIndex
	// pruneDone is closed when the periodic pruner has returned.
	pruneDone chan struct{}
}

type item struct {
	id       string
	st       *stored
	done     map[int]bool
	attempts int
	next     time.Time
	index    int // in waiting heap; -1 when not waiting
	busy     bool
	// sidecar is set once a .st file may exist, so that the common case
	// (delivered at the first attempt) costs no extra unlink.
	sidecar bool
	// held: a recipient failed permanently without a DSN; the message
	// ends in hold/ rather than being removed.
	held bool
	// warned: recipient indexes whose sender got a delay warning.
	warned map[int]bool
	// notes: the last result of each recipient tried; those in state
	// RcptHeld (and not done) are owed a delivery that waits for an
	// operator, and are not attempted.
	notes map[int]rcptNote
}

// isHeld reports whether recipient i waits in hold: owed, not attempted.
func (it *item) isHeld(i int) bool {
	return !it.done[i] && it.notes[i].State == RcptHeld
}

// finished reports whether no recipient is left to attempt.
func (it *item) finished() bool {
	for i := range it.st.env.To {
		if !it.done[i] && !it.isHeld(i) {
			return false
		}
	}
	return true
}

// Open opens (creating if needed) the spool in opts.Dir and loads every
// message still in it. Nothing is delivered until Start.
func Open(opts Options) (*Queue, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Workers <= 0 {
		opts.Workers = 100
	}
	if len(opts.Retry) == 0 {
		opts.Retry = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 4 * time.Hour}
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 5 * 24 * time.Hour
	}
	if opts.HoldMaxAge <= 0 {
		opts.HoldMaxAge = DefaultHoldMaxAge
	}
	if opts.HoldMaxSize <= 0 {
		opts.HoldMaxSize = DefaultHoldMaxSize
	}
	if opts.QuarantineMaxAge <= 0 {
		opts.QuarantineMaxAge = DefaultQuarantineMaxAge
	}
	if opts.PruneInterval <= 0 {
		opts.PruneInterval = DefaultPruneInterval
	}
	st, err := openStore(opts.Dir)
	if err != nil {
		return nil, err
	}
	q := &Queue{
		opts:  opts,
		store: st,
		log:   opts.Logger,
		items: map[string]*item{},
		wake:  make(chan struct{}, 1),
		sem:   make(chan struct{}, opts.Workers),
	}
	if err := q.recover(); err != nil {
		st.close()
		return nil, err
	}
	// Before anything is delivered, so that a hold/ that filled up while
	// the relay was down (or under a smaller limit) is brought back under
	// the limits at once.
	if err := q.scanHold(); err != nil {
		st.close()
		return nil, err
	}
	q.pruneHold()
	q.pruneQuarantine()
	if opts.Preallocate > 0 {
		st.pool = newPool(st, opts.Preallocate, opts.Now, opts.Logger)
	}
	return q, nil
}

// recover loads the spool: valid files are scheduled now, incomplete ones
// (never acknowledged) are moved to quarantine/ with a log line, so that an
// admin can look at them and nothing disappears silently.
func (q *Queue) recover() error {
	now := q.opts.Now()
	for i := 0; i < shards; i++ {
		dir := filepath.Join(q.store.dir, fmt.Sprintf("%X", i))
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		for _, e := range ents {
			name := e.Name()
			if strings.HasSuffix(name, statusExt) {
				if _, err := os.Stat(filepath.Join(dir, strings.TrimSuffix(name, statusExt))); errors.Is(err, os.ErrNotExist) {
					os.Remove(filepath.Join(dir, name))
				}
				continue
			}
			if fi, err := e.Info(); err == nil && fi.Size() == 0 {
				// An unused pre-created file, or a create that crashed
				// before its header: never acknowledged, nothing to keep.
				os.Remove(filepath.Join(dir, name))
				continue
			}
			st, err := readStored(filepath.Join(dir, name))
			if err == nil && !validID(name, i) {
				// Not ours (an admin's copy, an editor's backup): the
				// queue finds a message only under spool/<shardOf(id)>/<id>.
				err = fmt.Errorf("%q is not a queue ID of shard %X", name, i)
			}
			if err != nil && !errors.Is(err, errIncomplete) && validID(name, i) {
				// Not a verdict on the file (permissions, I/O, too many
				// open files): quarantining it would strand a message
				// that may well have been acknowledged. Refuse to start
				// instead, so the admin sees it and fixes the cause.
				return fmt.Errorf("spool: cannot read %s: %w (fix the cause and start again; the file is left in place)", filepath.Join(dir, name), err)
			}
			if err != nil {
				q.log.Warn("spool file not loadable, moved to quarantine (it was never acknowledged with 250 if incomplete)",
					"queue_id", name, "error", err)
				if qerr := q.store.quarantine(dir, name, now); qerr != nil {
					q.log.Error("quarantine failed", "queue_id", name, "error", qerr)
				}
				continue
			}
			ps := readStatus(filepath.Join(dir, name+statusExt), name)
			done, attempts, next, held := ps.done, ps.attempts, ps.next, ps.held
			for k := range done {
				// Only a damaged sidecar names recipients the message does
				// not have; counted, they would end it with some pending.
				if k < 0 || k >= len(st.env.To) {
					delete(done, k)
				}
			}
			for k := range ps.notes {
				if k < 0 || k >= len(st.env.To) {
					delete(ps.notes, k)
				}
			}
			it := &item{id: name, st: st, done: done, attempts: attempts, next: next, index: -1, sidecar: true, held: held, warned: ps.warned, notes: ps.notes}
			// A next time beyond the longest backoff (with its up to 10%
			// jitter) means the clock was set back: do not trust it.
			last := q.opts.Retry[len(q.opts.Retry)-1]
			if it.next.IsZero() || it.next.After(now.Add(last+last/10)) {
				it.next = now
			}
			q.items[name] = it
			heap.Push(&q.waiting, it)
			q.log.Info("recovered from spool", "queue_id", name, "from", st.env.From,
				"nrcpt", len(st.env.To)-len(done), "attempts", attempts)
		}
	}
	return nil
}

// Oldest returns the number of messages in the spool (as Len) and when
// the oldest of them arrived (zero when there is none), for a metrics
// endpoint; it looks at every message, so call it at scrape time only.
func (q *Queue) Oldest() (n int, oldest time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, it := range q.items {
		if r := it.st.env.Received; oldest.IsZero() || r.Before(oldest) {
			oldest = r
		}
	}
	return len(q.items), oldest
}

// Len is the number of messages in the spool.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// NewWriter starts a message. The caller writes the data, then calls Commit
// (durable, scheduled) or Abort.
func (q *Queue) NewWriter(env Envelope) (*Writer, error) {
	if len(env.To) == 0 {
		return nil, errors.New("queue: message without recipients")
	}
	if env.Received.IsZero() {
		env.Received = q.opts.Now()
	}
	if q.store.pool != nil {
		if f := q.store.pool.take(); f != nil {
			ej, err := json.Marshal(&env)
			if err != nil {
				discard([]*os.File{f})
				return nil, err
			}
			bw, off := startFile(f, ej)
			w := &Writer{q: q, id: filepath.Base(f.Name()), env: env, f: f, bw: bw, off: off, pooled: true, crc: crc32.New(castagnoli)}
			w.crc.Write(ej)
			return w, nil
		}
	}
	var lastErr error
	for try := 0; try < 3; try++ {
		id := newID(q.opts.Now())
		f, bw, off, ej, err := q.store.create(id, &env)
		if errors.Is(err, os.ErrExist) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		w := &Writer{q: q, id: id, env: env, f: f, bw: bw, off: off, crc: crc32.New(castagnoli)}
		w.crc.Write(ej)
		return w, nil
	}
	return nil, fmt.Errorf("spool: %w", lastErr)
}

// Commit makes the message durable and schedules its delivery. Only when
// Commit returns nil may the client be told 250.
func (w *Writer) Commit() error {
	if w.closed {
		return errors.New("queue: writer already closed")
	}
	if err := w.finish(); err != nil {
		w.Abort()
		return err
	}
	w.closed = true
	w.releaseBuf()
	st := &stored{env: w.env, extent: w.extent(), content: w.contentNow()}
	it := &item{id: w.id, st: st, done: map[int]bool{}, warned: map[int]bool{}, notes: map[int]rcptNote{}, next: w.q.opts.Now(), index: -1}
	w.q.mu.Lock()
	w.q.items[w.id] = it
	heap.Push(&w.q.waiting, it)
	w.q.mu.Unlock()
	w.q.poke()
	return nil
}

// Put is NewWriter + copy + Commit for callers that have the data at hand
// (DSNs, tests).
func (q *Queue) Put(env Envelope, data io.Reader) (string, error) {
	w, err := q.NewWriter(env)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, data); err != nil {
		w.Abort()
		return "", err
	}
	if err := w.Commit(); err != nil {
		return "", err
	}
	return w.id, nil
}

func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Start runs the scheduler until Stop.
func (q *Queue) Start() {
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.loop = make(chan struct{})
	q.runDone = make(chan struct{})
	go func() {
		defer close(q.runDone)
		q.run()
	}()
	q.pruneDone = make(chan struct{})
	go q.pruner(q.loop, q.pruneDone)
}

// Kick makes every waiting message due now (tests; `queue flush`).
func (q *Queue) Kick() {
	now := q.opts.Now()
	q.mu.Lock()
	for _, it := range q.waiting {
		it.next = now
	}
	heap.Init(&q.waiting)
	q.mu.Unlock()
	q.poke()
}

// Stop stops scheduling new attempts and waits for attempts in flight until
// ctx is done; then it cancels them (they end as temporary failures and the
// messages stay spooled). Nothing is lost either way.
func (q *Queue) Stop(ctx context.Context) {
	if q.cancel == nil || q.stopped {
		return
	}
	q.stopped = true
	close(q.loop)
	// Wait for the scheduler first: until it has returned it may still
	// start an attempt (running.Add), which must not race running.Wait.
	<-q.runDone
	<-q.pruneDone
	done := make(chan struct{})
	go func() { q.running.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		q.cancel()
		<-done
	}
	q.cancel()
}

func (q *Queue) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := q.opts.Now()
		var due []*item
		wait := time.Hour
		q.mu.Lock()
		for q.waiting.Len() > 0 {
			it := q.waiting[0]
			if it.next.After(now) {
				wait = it.next.Sub(now)
				break
			}
			heap.Pop(&q.waiting)
			it.busy = true
			due = append(due, it)
		}
		q.mu.Unlock()
		for i, it := range due {
			select {
			case <-q.loop: // stopping wins over a free worker
				q.requeue(due[i:])
				return
			default:
			}
			select {
			case q.sem <- struct{}{}:
			case <-q.loop:
				q.requeue(due[i:])
				return
			}
			q.running.Add(1)
			go q.attempt(it)
		}
		if len(due) > 0 {
			continue
		}
		timer.Reset(wait)
		select {
		case <-q.loop:
			return
		case <-q.wake:
		case <-timer.C:
		}
	}
}

func (q *Queue) requeue(its []*item) {
	q.mu.Lock()
	for _, it := range its {
		it.busy = false
		heap.Push(&q.waiting, it)
	}
	q.mu.Unlock()
}

func (q *Queue) attempt(it *item) {
	defer func() {
		<-q.sem
		q.running.Done()
	}()
	env := &it.st.env
	d := &Delivery{
		ID: it.id, Envelope: env, Attempt: it.attempts + 1, Size: it.st.size(), Content: it.st.content,
		path: q.store.path(it.id), ext: it.st.extent,
	}
	var idx []int
	for i, r := range env.To {
		if !it.done[i] && !it.isHeld(i) {
			d.Rcpts = append(d.Rcpts, r)
			idx = append(idx, i)
		}
	}
	d.idx = idx
	start := q.opts.Now()
	results := q.opts.Deliverer.Deliver(q.ctx, d)
	now := q.opts.Now()
	it.attempts++
	// An attempt cut short by shutdown says nothing about the next hop: it
	// must not turn into an expiry.
	expired := now.Sub(env.Received) >= q.opts.MaxAge && q.ctx.Err() == nil

	// Reports go to the sender only for outbound (and local) mail with a
	// sender: inbound mail was refused in the dialog instead of bounced,
	// and <> must never get one (RFC 5321 §6.1).
	reportable := env.Origin != OriginInbound && env.From != "" && q.opts.Bouncer != nil
	// Where no DSN is possible a permanent failure is held, not bounced:
	// the recipient stays owed (see the end of this function).
	holds := env.Origin == OriginInbound || env.From == "" || q.opts.Bouncer == nil
	if it.notes == nil {
		it.notes = map[int]rcptNote{}
	}
	var notes []rcptNote
	var bounces, notices []Bounce
	var bounceIdx []int
	newlyWarned := false
	lastTLS := ""
	newlyDone := []int{}
	pending := 0
	for k, i := range idx {
		r := Result{Status: TempFail, Code: "4.0.0", Reply: "delivery engine returned no result"}
		if k < len(results) {
			r = results[k]
		}
		if r.Status == TempFail && expired {
			// RFC 3463 X.4.7: delivery time expired; permanent now, so
			// that the DSN's status matches its action (failed) and says
			// why in words, with the last error as the detail.
			r.Status = PermFail
			r.Code = "5.4.7"
			r.Reply = fmt.Sprintf("message expired after %s in queue; last error: %s", q.opts.MaxAge, r.Reply)
		}
		state := map[Status]string{Delivered: RcptSent, PermFail: RcptBounced}[r.Status]
		if state == "" {
			state = RcptDeferred
		}
		if r.Status == PermFail && holds {
			state = RcptHeld
		}
		q.logResult(it, env.To[i], r, state, now.Sub(env.Received), now.Sub(start))
		n := rcptNote{I: i, State: state, Code: r.Code, Reply: r.Reply, At: now}
		notes = append(notes, n)
		it.notes[i] = n
		if r.Status != Delivered && r.TLSPolicy != "" {
			lastTLS = r.TLSPolicy
		}
		dsn := env.DSN(i)
		switch r.Status {
		case Delivered:
			newlyDone = append(newlyDone, i)
			if reportable && r.Success != "" && dsn.Wants(NotifySuccess) {
				notices = append(notices, Bounce{Rcpt: env.To[i], Result: r, Action: r.Success, DSN: dsn})
			}
		case PermFail:
			if reportable && !dsn.Wants(NotifyFailure) {
				// The sender asked for no failure notice (NOTIFY=NEVER,
				// or only SUCCESS or DELAY): done, logged above.
				q.log.Info("no DSN: the sender asked for none", "queue_id", it.id, "to", env.To[i], "notify", dsn.Notify)
				newlyDone = append(newlyDone, i)
				continue
			}
			bounces = append(bounces, Bounce{Rcpt: env.To[i], Result: r, Action: ActionFailed, DSN: dsn})
			bounceIdx = append(bounceIdx, i)
		default:
			pending++
			if reportable && q.opts.DelayWarning > 0 && !it.warned[i] && now.Sub(env.Received) >= q.opts.DelayWarning && dsn.Wants(NotifyDelay) {
				if it.warned == nil {
					it.warned = map[int]bool{}
				}
				it.warned[i], newlyWarned = true, true
				notices = append(notices, Bounce{Rcpt: env.To[i], Result: r, Action: ActionDelayed, DSN: dsn})
			}
		}
	}
	if len(notices) > 0 {
		if err := q.opts.Bouncer(d, notices); err != nil {
			q.log.Error("could not queue a delay or success notice; it is not sent", "queue_id", it.id, "error", err)
		}
	}
	if len(bounces) > 0 {
		switch {
		// Held recipients are not done: they stay owed (their note says
		// why), so that a release delivers to them, and only to them.
		case env.Origin == OriginInbound:
			q.log.Warn("permanent failure of accepted inbound mail: no DSN is sent for inbound mail; the message will be kept in spool/hold; check the downstream system",
				"queue_id", it.id, "from", env.From, "nrcpt", len(bounces))
			it.held = true
		case env.From == "":
			q.log.Warn("no DSN for the null sender; the message will be kept in spool/hold", "queue_id", it.id, "nrcpt", len(bounces))
			it.held = true
		case q.opts.Bouncer == nil:
			it.held = true
		default:
			if err := q.opts.Bouncer(d, bounces); err != nil {
				q.log.Error("could not queue DSN, will try again", "queue_id", it.id, "error", err)
				pending += len(bounces)
				for _, i := range bounceIdx {
					n := it.notes[i]
					n.State = RcptDeferred
					it.notes[i] = n
				}
			} else {
				newlyDone = append(newlyDone, bounceIdx...)
			}
		}
	}
	for _, i := range newlyDone {
		it.done[i] = true
	}
	var doneList, warnedList []int
	for i := range it.done {
		doneList = append(doneList, i)
	}
	if newlyWarned {
		for i := range it.warned {
			warnedList = append(warnedList, i)
		}
	}
	for k, n := range notes {
		notes[k] = it.notes[n.I] // a DSN that failed turned bounced into deferred
	}
	if it.finished() {
		q.mu.Lock()
		delete(q.items, it.id)
		q.mu.Unlock()
		if it.held {
			// The sidecar goes to hold/ with the message: which
			// recipients were served and which are still owed, and why.
			it.sidecar = true
			if err := q.store.appendStatus(it.id, status{Done: doneList, Attempts: it.attempts, Held: true, TLSPolicy: lastTLS, Warned: warnedList, Rcpts: notes}); err != nil {
				q.log.Warn("could not record delivery status of a held message; a release would deliver to every recipient", "queue_id", it.id, "error", err)
			}
			// Not deleted now: whoever accepted it must deliver it, and
			// nobody can be told it failed. An admin looks at hold/,
			// which keeps it for queue.hold_max_age within
			// queue.hold_max_size (see hold.go).
			if err := q.moveToHold(it.id); err != nil {
				q.log.Error("could not move undeliverable message to spool/hold; it stays in the spool and may be tried again", "queue_id", it.id, "error", err)
			} else {
				q.log.Warn("held: message could not be delivered to every recipient and no DSN was possible; kept in spool/hold",
					"queue_id", it.id, "from", env.From, "size", it.st.size())
				q.pruneHold()
			}
			return
		}
		if err := q.store.remove(it.id, it.sidecar); err != nil {
			q.log.Error("could not remove delivered message from spool; it may be delivered again", "queue_id", it.id, "error", err)
		} else {
			q.log.Info("removed", "queue_id", it.id)
		}
		return
	}
	it.next = now.Add(q.backoff(it.attempts))
	if q.ctx.Err() != nil {
		// Shutting down: the attempt was cut short, not really failed.
		it.next = now
	}
	it.sidecar = true
	if err := q.store.appendStatus(it.id, status{Done: doneList, Attempts: it.attempts, Next: it.next, Held: it.held, TLSPolicy: lastTLS, Warned: warnedList, Rcpts: notes}); err != nil {
		q.log.Warn("could not record delivery status; recipients may be retried", "queue_id", it.id, "error", err)
	}
	q.mu.Lock()
	it.busy = false
	heap.Push(&q.waiting, it)
	q.mu.Unlock()
	q.poke()
}

// backoff is the delay after the n-th attempt, with up to 10% jitter so that
// messages deferred together (a next hop that was down) do not all come
// back in the same second.
func (q *Queue) backoff(n int) time.Duration {
	r := q.opts.Retry
	d := r[len(r)-1]
	if n-1 < len(r) {
		d = r[n-1]
	}
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

// logResult logs one recipient's attempt, Postfix-like; st is the
// recipient's state after it (sent, deferred, bounced, or held where no
// DSN was possible and the message is kept for the operator).
func (q *Queue) logResult(it *item, rcpt string, r Result, st string, delay, attemptDur time.Duration) {
	args := []any{
		"queue_id", it.id, "from", it.st.env.From, "to", rcpt, "relay", r.Relay,
		"delay", fmt.Sprintf("%.2f", delay.Seconds()),
		"attempt_time", fmt.Sprintf("%.2f", attemptDur.Seconds()),
		"dsn", r.Code, "status", st, "reply", r.Reply,
	}
	if r.TLS != "" {
		args = append(args, "tls", r.TLS)
	}
	if r.TLSPolicy != "" {
		args = append(args, "tls_policy", r.TLSPolicy)
	}
	if r.Encryption != "" {
		args = append(args, "encryption", r.Encryption)
	}
	if r.Status == Delivered {
		q.log.Info(st, args...)
	} else {
		q.log.Warn(st, args...)
	}
	if q.opts.Observe != nil {
		q.opts.Observe(Outcome{Origin: it.st.env.Origin, State: st, Result: r, Delay: delay, Attempt: attemptDur})
	}
}

type waitHeap []*item

func (h waitHeap) Len() int           { return len(h) }
func (h waitHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h waitHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *waitHeap) Push(x any) {
	it := x.(*item)
	it.index = len(*h)
	*h = append(*h, it)
}
func (h *waitHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}

// Logger is the queue's logger, for components that log about its messages.
func (q *Queue) Logger() *slog.Logger { return q.log }

// Info describes a spooled message for `securerelay queue list`.
type Info struct {
	ID       string
	Envelope Envelope
	Size     int64
	Done     int
	Attempts int
	Next     time.Time
	Err      error
	// Held: in hold/ (not being delivered; see the log for why).
	Held bool
	// Quarantined: in quarantine/ (a file found damaged or incomplete at
	// start; Err says why when it cannot be read).
	Quarantined bool
	// TLSPolicy: the last attempt's unmet TLS requirement, if any.
	TLSPolicy string
	// Rcpts is each recipient's state, in envelope order.
	Rcpts []RcptInfo
}

// RcptInfo is one recipient of a spooled message.
type RcptInfo struct {
	Addr string
	// State: RcptSent or RcptBounced (done), RcptHeld (owed, waiting for
	// an operator), RcptPending (to be tried; RcptDeferred or
	// RcptReleased when tried before). A recipient done before per-
	// recipient notes were kept is "done".
	State string
	Code  string
	Reply string
	At    time.Time
}

// Count returns how many recipients are in each state.
func (in *Info) Count() (pending, held, done int) {
	for _, r := range in.Rcpts {
		switch r.State {
		case RcptHeld:
			held++
		case RcptSent, RcptBounced, "done":
			done++
		default:
			pending++
		}
	}
	return
}

// rcptInfos describes env's recipients from their progress.
func rcptInfos(env *Envelope, done map[int]bool, notes map[int]rcptNote) []RcptInfo {
	out := make([]RcptInfo, len(env.To))
	for i, a := range env.To {
		n, ok := notes[i]
		r := RcptInfo{Addr: a, State: RcptPending}
		if ok {
			r.State, r.Code, r.Reply, r.At = n.State, n.Code, n.Reply, n.At
		}
		switch {
		case done[i] && r.State != RcptSent && r.State != RcptBounced:
			// Done without a note (older sidecar), or after a DSN that
			// the note counted as deferred first.
			r.State = "done"
		case !done[i] && (r.State == RcptSent || r.State == RcptBounced):
			// The line recording it done was lost: it will be tried again.
			r.State = RcptPending
		}
		out[i] = r
	}
	return out
}

// Scan reads the spool in dir without a running queue (for the CLI). It
// does not modify anything.
func Scan(dir string) ([]Info, error) {
	var out []Info
	dirs := []string{}
	for i := 0; i < shards; i++ {
		dirs = append(dirs, fmt.Sprintf("%X", i))
	}
	dirs = append(dirs, holdDir, brokenDir)
	for _, d := range dirs {
		sd := filepath.Join(dir, d)
		ents, err := os.ReadDir(sd)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), statusExt) {
				continue
			}
			if fi, err := e.Info(); err == nil && fi.Size() == 0 {
				continue // a pre-created file, not a message
			}
			inf := Info{ID: e.Name(), Held: d == holdDir, Quarantined: d == brokenDir}
			st, err := readStored(filepath.Join(sd, e.Name()))
			if err != nil {
				inf.Err = err
			} else {
				inf.Envelope, inf.Size = st.env, st.size()
				ps := readStatus(filepath.Join(sd, e.Name()+statusExt), e.Name())
				inf.Done, inf.Attempts, inf.Next, inf.TLSPolicy = len(ps.done), ps.attempts, ps.next, ps.tlsPolicy
				inf.Rcpts = rcptInfos(&st.env, ps.done, ps.notes)
			}
			out = append(out, inf)
		}
	}
	return out, nil
}

// Close releases the spool's open directories; call it after Stop.
func (q *Queue) Close() { q.store.close() }
