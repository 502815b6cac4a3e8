package queue

import (
	"bufio"
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Bounds on spool/hold and spool/quarantine.
//
// hold/ receives the messages nobody can be told about: inbound mail the
// downstream refused after our 250 (inbound mail is never bounced) and
// null-sender mail that failed. Kept for ever, an outsider who sends to
// made-up local parts of a domain without a recipient list fills the disk
// with them, and then every message gets 451. So hold/ is bounded by age
// (since the message was held) and by total size; past either, the oldest
// held messages go first, each with a log line and a count.
//
// The age of a held (or quarantined) file is taken from its modification
// time, set when it is moved there: the message file itself is never
// written again, so nothing else changes it, it survives restarts without
// a record of its own, and an admin who wants more time for one message
// can touch it.
//
// Moving a message to hold/ adds it to an index kept in memory (a heap by
// age) and to a running size; hold/ is listed only at start and every
// PruneInterval, which also picks up what an admin removed or touched. A
// removal re-checks the file first, so a stale index costs a look, never
// the wrong file. Pruning only ever names files in hold/ and quarantine/,
// one at a time: a crash in the middle leaves files that were meant to go
// (removed at the next pass) and nothing else touched.

// Defaults of the bounds; config documents the same values.
const (
	DefaultHoldMaxAge       = 30 * 24 * time.Hour
	DefaultHoldMaxSize      = 1000 * 1000 * 1000
	DefaultQuarantineMaxAge = 30 * 24 * time.Hour
	DefaultPruneInterval    = time.Hour
)

// Names under which removals are counted (Pruned): the configuration keys
// of the limits (queue.hold_max_age, …), so that a count, its log line and
// the setting to change share one name.
const (
	CountHoldMaxAge       = "hold_max_age"
	CountHoldMaxSize      = "hold_max_size"
	CountQuarantineMaxAge = "quarantine_max_age"
)

// heldFile is one message in hold/.
type heldFile struct {
	id    string
	mtime time.Time
	size  int64 // message file and sidecar
	index int
}

type heldHeap []*heldFile

func (h heldHeap) Len() int { return len(h) }
func (h heldHeap) Less(i, j int) bool {
	if !h[i].mtime.Equal(h[j].mtime) {
		return h[i].mtime.Before(h[j].mtime)
	}
	return h[i].id < h[j].id // IDs sort by arrival
}
func (h heldHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *heldHeap) Push(x any) {
	f := x.(*heldFile)
	f.index = len(*h)
	*h = append(*h, f)
}
func (h *heldHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	f.index = -1
	return f
}

// holdIndex is what the queue knows about hold/ between listings.
type holdIndex struct {
	mu    sync.Mutex
	files heldHeap
	byID  map[string]*heldFile
	size  int64
	// pruned counts removals by limit (Count* constants).
	pruned map[string]int64
}

// isQueueID: 16 upper-case hex digits, in any shard.
func isQueueID(name string) bool {
	if len(name) != 16 {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// Pruned returns how many held and quarantined files were removed since
// Open, by the limit that removed them (hold_max_age, hold_max_size,
// quarantine_max_age): the counts for a metrics endpoint.
func (q *Queue) Pruned() map[string]int64 {
	h := &q.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int64{CountHoldMaxAge: 0, CountHoldMaxSize: 0, CountQuarantineMaxAge: 0}
	for k, v := range h.pruned {
		out[k] = v
	}
	return out
}

// HoldUsage returns the number of messages in hold/ and the bytes they
// take (message files and sidecars), as the queue counts them.
func (q *Queue) HoldUsage() (messages int, bytes int64) {
	h := &q.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.files), h.size
}

// moveToHold moves a finished message to hold/ and adds it to the index.
// The caller prunes afterwards (pruneHold), once it has logged the hold.
func (q *Queue) moveToHold(id string) error {
	h := &q.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := q.store.hold(id); err != nil {
		return err
	}
	now := q.opts.Now()
	dst := filepath.Join(q.store.dir, holdDir, id)
	// The age in hold/ counts from now; if this fails the file keeps its
	// arrival time and is removed somewhat earlier, never lost sooner
	// than hold_max_age after it arrived.
	os.Chtimes(dst, now, now)
	f := &heldFile{id: id, mtime: now}
	if fi, err := os.Lstat(dst); err == nil {
		f.mtime, f.size = fi.ModTime(), fi.Size()
	}
	if fi, err := os.Lstat(dst + statusExt); err == nil {
		f.size += fi.Size()
	}
	if old := h.byID[id]; old != nil {
		// Held before, released by the admin and held again.
		heap.Remove(&h.files, old.index)
		h.size -= old.size
	}
	h.byID[id] = f
	heap.Push(&h.files, f)
	h.size += f.size
	return nil
}

// scanHold lists hold/ and replaces the index with what is there: at start
// and every PruneInterval, so that what an admin removed, released or
// touched is seen. Sidecars whose message is gone are removed (they
// describe nothing); files that are not named like queue IDs are the
// admin's and left alone.
func (q *Queue) scanHold() error {
	h := &q.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	dir := filepath.Join(q.store.dir, holdDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	files := map[string]*heldFile{}
	sidecars := map[string]int64{}
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // gone since ReadDir
		}
		switch {
		case isQueueID(name):
			files[name] = &heldFile{id: name, mtime: fi.ModTime(), size: fi.Size()}
		case strings.HasSuffix(name, statusExt) && isQueueID(strings.TrimSuffix(name, statusExt)):
			sidecars[strings.TrimSuffix(name, statusExt)] = fi.Size()
		}
	}
	for id, n := range sidecars {
		if f := files[id]; f != nil {
			f.size += n
		} else {
			os.Remove(filepath.Join(dir, id+statusExt))
		}
	}
	h.files = h.files[:0]
	h.byID = make(map[string]*heldFile, len(files))
	h.size = 0
	for id, f := range files {
		h.byID[id] = f
		h.files = append(h.files, f)
		h.size += f.size
	}
	for i, f := range h.files {
		f.index = i
	}
	heap.Init(&h.files)
	return nil
}

// pruneHold removes the oldest held messages while the oldest is past
// HoldMaxAge or the total is over HoldMaxSize.
func (q *Queue) pruneHold() {
	h := &q.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	dir := filepath.Join(q.store.dir, holdDir)
	removed := 0
	for len(h.files) > 0 {
		now := q.opts.Now()
		f := h.files[0]
		var reason string
		var limit any
		switch {
		case now.Sub(f.mtime) >= q.opts.HoldMaxAge:
			reason, limit = "max_age", fmtDuration(q.opts.HoldMaxAge)
		case h.size > q.opts.HoldMaxSize:
			reason, limit = "max_size", q.opts.HoldMaxSize
		default:
			if removed > 0 {
				syncDir(dir)
			}
			return
		}
		// The index may be stale (an admin removed, released or touched
		// the file): look again before removing anything.
		p := filepath.Join(dir, f.id)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			heap.Remove(&h.files, f.index)
			delete(h.byID, f.id)
			h.size -= f.size
			continue
		}
		size := fi.Size()
		if sc, err := os.Lstat(p + statusExt); err == nil {
			size += sc.Size()
		}
		if !fi.ModTime().Equal(f.mtime) || size != f.size {
			h.size += size - f.size
			f.mtime, f.size = fi.ModTime(), size
			heap.Fix(&h.files, f.index)
			continue
		}
		env, envErr := readEnvelope(p)
		rmErr := os.Remove(p)
		if rmErr == nil || errors.Is(rmErr, os.ErrNotExist) {
			os.Remove(p + statusExt)
		}
		heap.Remove(&h.files, f.index)
		delete(h.byID, f.id)
		h.size -= f.size
		if rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			// Forgotten until the next listing, so that one file that
			// cannot be removed does not stop the others.
			q.log.Error("hold spool: could not remove held message; it stays", "queue_id", f.id, "reason", reason, "error", rmErr)
			continue
		}
		removed++
		if h.pruned == nil {
			h.pruned = map[string]int64{}
		}
		h.pruned["hold_"+reason]++
		args := []any{"queue_id", f.id}
		args = append(args, envelopeLog(env, envErr)...)
		args = append(args,
			"age", fmtDuration(now.Sub(f.mtime)), "size", f.size, "reason", reason,
			"setting", "queue.hold_"+reason, "limit", limit, "count", h.pruned["hold_"+reason],
			"hold_messages", len(h.files), "hold_bytes", h.size)
		q.log.Warn("hold spool: removed", args...)
	}
	if removed > 0 {
		syncDir(dir)
	}
}

// pruneQuarantine removes files that have been in quarantine/ longer than
// QuarantineMaxAge. It lists the directory: quarantine/ only grows at start.
func (q *Queue) pruneQuarantine() {
	dir := filepath.Join(q.store.dir, brokenDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		q.log.Error("quarantine: cannot list", "error", err)
		return
	}
	now := q.opts.Now()
	removed := 0
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		age := now.Sub(fi.ModTime())
		if age < q.opts.QuarantineMaxAge {
			continue
		}
		p := filepath.Join(dir, e.Name())
		var args []any
		if !strings.HasSuffix(e.Name(), statusExt) {
			env, envErr := readEnvelope(p)
			args = envelopeLog(env, envErr)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			q.log.Error("quarantine: could not remove file; it stays", "file", e.Name(), "error", err)
			continue
		}
		removed++
		q.hold.mu.Lock()
		if q.hold.pruned == nil {
			q.hold.pruned = map[string]int64{}
		}
		q.hold.pruned[CountQuarantineMaxAge]++
		n := q.hold.pruned[CountQuarantineMaxAge]
		q.hold.mu.Unlock()
		q.log.Warn("quarantine: removed", append(append([]any{"file", e.Name()}, args...),
			"age", fmtDuration(age), "size", fi.Size(), "reason", "max_age",
			"setting", "queue.quarantine_max_age", "limit", fmtDuration(q.opts.QuarantineMaxAge), "count", n)...)
	}
	if removed > 0 {
		syncDir(dir)
	}
}

// prune is one periodic pass: list hold/ again, then apply every limit.
func (q *Queue) prune() {
	if err := q.scanHold(); err != nil {
		q.log.Error("hold spool: cannot list", "error", err)
	} else {
		q.pruneHold()
	}
	q.pruneQuarantine()
}

// pruner runs prune every PruneInterval until Stop.
func (q *Queue) pruner(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(q.opts.PruneInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			q.prune()
		}
	}
}

// readEnvelope reads only the envelope of a spool file, for a log line
// and for naming the recipients a sidecar counts by index: unlike
// readStored it does not read (and check) the data. Of an amended file it
// returns the amended envelope, or the first one when the amend record
// cannot be read (recipients are only ever added at the end, so the
// indexes of the first ones hold).
func readEnvelope(path string) (*Envelope, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	line, err := br.ReadString('\n')
	if err != nil || !(strings.HasPrefix(line, magic) || strings.HasPrefix(line, magic2)) {
		return nil, fmt.Errorf("%w: bad header", errIncomplete)
	}
	n, err := strconv.Atoi(strings.TrimSuffix(line[len(magic):], "\n"))
	if err != nil || n <= 0 || n > maxEnvelope {
		return nil, fmt.Errorf("%w: bad envelope length", errIncomplete)
	}
	ej := make([]byte, n)
	if _, err := io.ReadFull(br, ej); err != nil {
		return nil, fmt.Errorf("%w: short envelope", errIncomplete)
	}
	var env Envelope
	if err := json.Unmarshal(ej, &env); err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", errIncomplete, err)
	}
	if strings.HasPrefix(line, magic2) {
		if amended, err := readAmendedEnvelope(f, int64(len(line)+n+1)); err == nil {
			return amended, nil
		}
	}
	return &env, nil
}

// readAmendedEnvelope finds an SRQ2 file's amend record through its
// trailer and returns the envelope in it, unchecked.
func readAmendedEnvelope(f *os.File, dataOff int64) (*Envelope, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < dataOff+trailer2Len {
		return nil, fmt.Errorf("%w: no trailer", errIncomplete)
	}
	tr := make([]byte, trailer2Len)
	if _, err := f.ReadAt(tr, fi.Size()-trailer2Len); err != nil {
		return nil, err
	}
	var dlen, alen int64
	var sum uint32
	if _, err := fmt.Sscanf(string(tr), trailer2Fmt, &dlen, &alen, &sum); err != nil {
		return nil, fmt.Errorf("%w: no trailer", errIncomplete)
	}
	if dlen < 0 || alen < 0 || dlen > fi.Size() || alen > fi.Size() || dataOff+dlen+alen+trailer2Len != fi.Size() {
		return nil, fmt.Errorf("%w: length mismatch", errIncomplete)
	}
	st := &stored{}
	st.dataOff, st.dataLen = dataOff, dlen
	if err := readAmend(f, st, alen); err != nil {
		return nil, err
	}
	return &st.env, nil
}

// envelopeLog is the part of a removal's log line that says whose message
// it was.
func envelopeLog(env *Envelope, err error) []any {
	if env == nil {
		return []any{"from", "?", "to", "?", "damaged", err}
	}
	from := env.From
	if from == "" {
		from = "<>"
	}
	return []any{"from", from, "to", strings.Join(env.To, ","), "nrcpt", len(env.To),
		"received", env.Received.UTC().Format(time.RFC3339)}
}

// fmtDuration prints whole days as "30d", like the configuration, and
// shorter spans rounded to the second.
func fmtDuration(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.Round(time.Second).String()
}
