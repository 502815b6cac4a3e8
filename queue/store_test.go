package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

var idRE = regexp.MustCompile(`^[0-9A-F]{16}$`)

// wantFile is the documented on-disk format, built independently.
func wantFile(t *testing.T, e Envelope, data []byte) []byte {
	t.Helper()
	ej, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "SRQ1 %d\n", len(ej))
	b.Write(ej)
	b.WriteByte('\n')
	b.Write(data)
	fmt.Fprintf(&b, "\nSRQ-END %016x %08x\n", len(data), crc32.Update(crc32.Checksum(ej, testCRC), testCRC, data))
	return b.Bytes()
}

func TestPutFileFormatAndOpen(t *testing.T) {
	big := make([]byte, 300<<10) // larger than the writer's buffer
	r := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	cases := map[string][]byte{
		"small": []byte(msg1),
		"empty": {},
		"big":   big,
		// data that contains a trailer-like line must not confuse anything
		"fake-trailer": []byte("Subject: x\r\n\r\n\nSRQ-END 0000000000000000 00000000\n\r\nend\r\n"),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			q := open(t, "", Options{}, nil)
			e := env("a@example.com", "b@example.net")
			id, err := q.Put(e, bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if !idRE.MatchString(id) {
				t.Fatalf("ID %q is not 16 upper-case hex digits", id)
			}
			p := filepath.Join(q.dir, id[15:], id)
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatalf("spool file not at spool/<shard>/<id>: %v", err)
			}
			if want := wantFile(t, e, data); !bytes.Equal(raw, want) {
				t.Fatalf("spool file differs from the documented format:\n got %q\nwant %q", trunc(raw), trunc(want))
			}
			if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", fi.Mode().Perm())
			}
			if _, err := os.Stat(p + statusExt); !os.IsNotExist(err) {
				t.Errorf("sidecar exists before any attempt: %v", err)
			}
			if got := spoolFiles(t, q.dir); len(got) != 1 {
				t.Errorf("spool holds %v, want exactly the message", got)
			}
			if q.Len() != 1 {
				t.Fatalf("Len = %d", q.Len())
			}

			q.Start()
			c := q.rec.next(t)
			if c.openErr != nil || !bytes.Equal(c.data, data) {
				t.Fatalf("Delivery.Open: err %v, data %q, want %q", c.openErr, trunc(c.data), trunc(data))
			}
			if c.id != id || c.attempt != 1 || c.size != int64(len(data)) {
				t.Errorf("delivery id %s attempt %d size %d", c.id, c.attempt, c.size)
			}
			if strings.Join(c.rcpts, ",") != "a@example.com,b@example.net" {
				t.Errorf("rcpts %v", c.rcpts)
			}
			if c.env.From != e.From || c.env.Origin != e.Origin || !c.env.Received.Equal(e.Received) || c.env.AuthUser != "otrs" {
				t.Errorf("envelope %+v", c.env)
			}
			gone(t, q.Queue, id)
			if got := spoolFiles(t, q.dir); len(got) != 0 {
				t.Errorf("after delivery the spool holds %v", got)
			}
		})
	}
}

func trunc(b []byte) []byte {
	if len(b) > 300 {
		return append(b[:300:300], "..."...)
	}
	return b
}

func TestNewWriterDefaultsAndRejects(t *testing.T) {
	q := open(t, "", Options{}, nil)
	if _, err := q.NewWriter(Envelope{From: "a@example.org"}); err == nil {
		t.Fatal("NewWriter accepted a message without recipients")
	}
	e := env("x@example.com")
	e.Received = time.Time{}
	q.clock.Set(t0.Add(42 * time.Second))
	w, err := q.NewWriter(e)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, msg1)
	if w.Size() != int64(len(msg1)) {
		t.Errorf("Size = %d", w.Size())
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	st, err := readStored(q.store.path(w.ID()))
	if err != nil {
		t.Fatal(err)
	}
	if !st.env.Received.Equal(t0.Add(42 * time.Second)) {
		t.Errorf("Received = %v, want the clock's time", st.env.Received)
	}
}

// 2000 concurrent Puts with a frozen clock (every ID from the same
// microsecond): no collision, each message delivered exactly once.
func TestConcurrentPutsUniqueAndDeliveredOnce(t *testing.T) {
	var mu sync.Mutex
	count := map[string]int{}
	deliverer := deliverFunc(func(ctx context.Context, d *Delivery) []Result {
		rc, err := d.Open()
		if err != nil {
			t.Errorf("Open %s: %v", d.ID, err)
			return all(len(d.Rcpts), tempFail)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if want := "id-check " + d.Envelope.To[0] + "\r\n"; string(b) != want {
			t.Errorf("%s: data %q, want %q", d.ID, b, want)
		}
		mu.Lock()
		count[d.ID]++
		mu.Unlock()
		return all(len(d.Rcpts), Result{Status: Delivered})
	})
	q := open(t, "", Options{Deliverer: deliverer, Workers: 16}, nil)
	q.Start()

	const G, N = 20, 100
	ids := make([][]string, G)
	var wg sync.WaitGroup
	for g := 0; g < G; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < N; i++ {
				rcpt := fmt.Sprintf("r%d-%d@example.com", g, i)
				id, err := q.Put(env(rcpt), strings.NewReader("id-check "+rcpt+"\r\n"))
				if err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				ids[g] = append(ids[g], id)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[string]bool{}
	shardsUsed := map[string]bool{}
	for _, l := range ids {
		for _, id := range l {
			if !idRE.MatchString(id) {
				t.Fatalf("bad ID %q", id)
			}
			if seen[id] {
				t.Fatalf("duplicate ID %s", id)
			}
			seen[id] = true
			shardsUsed[shardOf(id)] = true
		}
	}
	if len(seen) != G*N {
		t.Fatalf("%d IDs, want %d", len(seen), G*N)
	}
	if len(shardsUsed) != shards {
		t.Errorf("messages spread over %d shards, want %d", len(shardsUsed), shards)
	}
	waitFor(t, 30*time.Second, "all messages delivered and removed", func() bool { return q.Len() == 0 })
	q.stop() // waits for the removals in flight
	mu.Lock()
	defer mu.Unlock()
	if len(count) != G*N {
		t.Errorf("%d messages delivered, want %d", len(count), G*N)
	}
	for id := range seen {
		if count[id] != 1 {
			t.Errorf("%s delivered %d times", id, count[id])
		}
	}
	if got := spoolFiles(t, q.dir); len(got) != 0 {
		t.Errorf("spool not empty after delivery: %d files, e.g. %v", len(got), got[0])
	}
}

type deliverFunc func(ctx context.Context, d *Delivery) []Result

func (f deliverFunc) Deliver(ctx context.Context, d *Delivery) []Result { return f(ctx, d) }

func TestAbort(t *testing.T) {
	q := open(t, "", Options{}, nil)
	w, err := q.NewWriter(env("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, msg1)
	p := q.store.path(w.ID())
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("file should exist while writing: %v", err)
	}
	w.Abort()
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("Abort left the file: %v", err)
	}
	w.Abort() // twice is fine
	if err := w.Commit(); err == nil {
		t.Fatal("Commit after Abort returned nil")
	}
	if q.Len() != 0 || len(spoolFiles(t, q.dir)) != 0 {
		t.Fatalf("aborted message in queue (Len %d) or spool %v", q.Len(), spoolFiles(t, q.dir))
	}
}

func TestCommitTwiceAndAbortAfterCommit(t *testing.T) {
	q := open(t, "", Options{}, nil)
	w, _ := q.NewWriter(env("a@example.com"))
	io.WriteString(w, msg1)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil {
		t.Error("second Commit returned nil")
	}
	w.Abort()
	if _, err := readStored(q.store.path(w.ID())); err != nil {
		t.Fatalf("Abort after Commit damaged the committed message: %v", err)
	}
	if q.Len() != 1 {
		t.Fatalf("Len = %d", q.Len())
	}
}

// The underlying file fails: Commit must return an error (never nil, so
// never a 250) and leave neither a file nor a scheduled message.
func TestCommitAfterWriteErrorFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int // less than the buffer: the error shows only at Commit
	}{{"buffered", 100}, {"write-through", 200 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			q := open(t, "", Options{}, nil)
			w, err := q.NewWriter(env("a@example.com"))
			if err != nil {
				t.Fatal(err)
			}
			w.f.Close() // the file fails under the writer
			_, werr := w.Write(bytes.Repeat([]byte("x"), tc.size))
			if tc.size > 64<<10 && werr == nil {
				t.Error("Write through a closed file returned nil")
			}
			if werr != nil {
				if _, err := w.Write([]byte("more")); err == nil {
					t.Error("Write after a write error returned nil")
				}
			}
			if err := w.Commit(); err == nil {
				t.Fatal("Commit returned nil after the file failed")
			}
			if got := spoolFiles(t, q.dir); len(got) != 0 {
				t.Errorf("failed Commit left %v", got)
			}
			if q.Len() != 0 {
				t.Errorf("failed message scheduled, Len %d", q.Len())
			}
		})
	}
}

// The directory fsync is part of the acknowledgement: when it fails, so
// does Commit, and the file is removed.
func TestCommitFailsWhenDirectoryFsyncFails(t *testing.T) {
	q := open(t, "", Options{}, nil)
	w, err := q.NewWriter(env("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, msg1)
	q.store.syncer(w.ID()).dir.Close()
	err = w.Commit()
	if err == nil {
		t.Fatal("Commit returned nil although the directory fsync failed")
	}
	if !strings.Contains(err.Error(), "fsync") {
		t.Errorf("error %q does not say what failed", err)
	}
	if _, err := os.Stat(q.store.path(w.ID())); !os.IsNotExist(err) {
		t.Errorf("file left behind: %v", err)
	}
	if q.Len() != 0 {
		t.Errorf("Len %d", q.Len())
	}
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n > 0 {
		n := copy(p, bytes.Repeat([]byte("y"), min(len(p), r.n)))
		r.n -= n
		return n, nil
	}
	return 0, errors.New("client went away")
}

func TestPutWithFailingReaderLeavesNothing(t *testing.T) {
	q := open(t, "", Options{}, nil)
	if _, err := q.Put(env("a@example.com"), &failingReader{n: 1000}); err == nil {
		t.Fatal("Put returned nil for a failing reader")
	}
	if got := spoolFiles(t, q.dir); len(got) != 0 || q.Len() != 0 {
		t.Fatalf("spool %v, Len %d", got, q.Len())
	}
}

func TestWriterReader(t *testing.T) {
	q := open(t, "", Options{}, nil)
	w, _ := q.NewWriter(env("a@example.com"))
	io.WriteString(w, "part one\r\n")
	rd, err := w.Reader()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rd)
	if string(b) != "part one\r\n" {
		t.Fatalf("Reader = %q", b)
	}
	io.WriteString(w, "part two\r\n")
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	if c := q.rec.next(t); string(c.data) != "part one\r\npart two\r\n" {
		t.Fatalf("delivered %q", c.data)
	}
}

func TestReadStatusTornLastLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "X.st")
	next := t0.Add(time.Hour)
	l1, _ := json.Marshal(status{ID: "X", Done: []int{0}, Attempts: 1, Next: t0})
	l2, _ := json.Marshal(status{ID: "X", Done: []int{0, 2}, Attempts: 2, Next: next})
	// A stale line of another message (old blocks after a crash) is ignored.
	other, _ := json.Marshal(status{ID: "Y", Done: []int{1}, Attempts: 9, Next: next})
	l3, _ := json.Marshal(status{ID: "X", Done: []int{0, 1, 2}, Attempts: 3, Next: next.Add(time.Hour)})
	content := string(l1) + "\n" + string(l2) + "\n" + string(other) + "\n" + string(l3[:len(l3)/2])
	os.WriteFile(p, []byte(content), 0o600)
	ps := readStatus(p, "X")
	done, attempts, n := ps.done, ps.attempts, ps.next
	if len(done) != 2 || !done[0] || !done[2] || attempts != 2 || !n.Equal(next) {
		t.Fatalf("readStatus = %v %d %v; want {0,2} 2 %v", done, attempts, n, next)
	}
	ps = readStatus(filepath.Join(t.TempDir(), "missing.st"), "X")
	done, attempts, n = ps.done, ps.attempts, ps.next
	if len(done) != 0 || attempts != 0 || !n.IsZero() {
		t.Fatalf("missing sidecar: %v %d %v", done, attempts, n)
	}
}

// Many concurrent callers all get a directory fsync that started after
// they called; correctness under -race.
func TestDirSyncerConcurrent(t *testing.T) {
	d, err := newDirSyncer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.dir.Close()
	const N = 200
	var wg sync.WaitGroup
	var errs atomic.Int32
	for i := 0; i < N; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.sync(); err != nil {
				errs.Add(1)
			}
		}()
	}
	wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	if errs.Load() != 0 {
		t.Fatalf("%d sync errors", errs.Load())
	}
	if d.running || d.started != d.completed || d.started == 0 || d.started > N {
		t.Fatalf("state after all returned: running %v started %d completed %d", d.running, d.started, d.completed)
	}
	t.Logf("%d callers, %d fsyncs", N, d.started)
}

// Group commit, made deterministic with synctest: while an fsync is in
// flight, N callers arrive; they must all be served by ONE further fsync
// (it started after each of them arrived), not by the one in flight and not
// by N fsyncs.
func TestDirSyncerGroupCommit(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		d, err := newDirSyncer(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer d.dir.Close()
		// Pretend fsync #1 is running (started before anybody below).
		d.mu.Lock()
		d.running, d.started = true, 1
		d.mu.Unlock()

		const N = 50
		var returned atomic.Int32
		for i := 0; i < N; i++ {
			go func() {
				if err := d.sync(); err != nil {
					t.Errorf("sync: %v", err)
				}
				returned.Add(1)
			}()
		}
		synctest.Wait() // every caller is now waiting on the condition
		if n := returned.Load(); n != 0 {
			t.Fatalf("%d callers returned while only an fsync that started before them had run", n)
		}
		// fsync #1 completes; it does not count for the callers.
		d.mu.Lock()
		d.running, d.completed = false, 1
		d.cond.Broadcast()
		d.mu.Unlock()
		synctest.Wait()
		if n := returned.Load(); n != N {
			t.Fatalf("%d of %d callers returned", n, N)
		}
		if d.started != 2 || d.completed != 2 {
			t.Fatalf("%d callers needed %d fsyncs (want exactly 1 more, 2 in all)", N, d.started)
		}
	})
}

// A failed directory fsync is reported to every caller it was meant for.
func TestDirSyncerError(t *testing.T) {
	d, err := newDirSyncer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d.dir.Close()
	var wg sync.WaitGroup
	var nerr atomic.Int32
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d.sync() != nil {
				nerr.Add(1)
			}
		}()
	}
	wg.Wait()
	if nerr.Load() != 20 {
		t.Fatalf("%d of 20 callers saw the fsync error", nerr.Load())
	}
}

func TestScan(t *testing.T) {
	q := open(t, "", Options{}, nil)
	e1 := env("a@example.com", "b@example.com")
	id1 := put(t, q.Queue, e1, msg1)
	id2 := put(t, q.Queue, env("c@example.com"), "short\r\n")
	next := t0.Add(time.Hour)
	if err := q.store.appendStatus(id1, status{Done: []int{1}, Attempts: 2, Next: next}); err != nil {
		t.Fatal(err)
	}
	// a damaged file: an unacknowledged write cut short
	raw, _ := os.ReadFile(q.store.path(id2))
	bad := "00000000000000B3"
	os.WriteFile(q.store.path(bad), raw[:len(raw)-5], 0o600)
	q.Close()

	before := spoolFiles(t, q.dir)
	infos, err := Scan(q.dir)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]Info{}
	for _, in := range infos {
		byID[in.ID] = in
	}
	if len(infos) != 3 || len(byID) != 3 {
		t.Fatalf("Scan returned %d entries: %+v", len(infos), infos)
	}
	i1 := byID[id1]
	if i1.Err != nil || i1.Size != int64(len(msg1)) || i1.Done != 1 || i1.Attempts != 2 || !i1.Next.Equal(next) ||
		i1.Envelope.From != e1.From || len(i1.Envelope.To) != 2 {
		t.Errorf("Scan %s = %+v", id1, i1)
	}
	if i2 := byID[id2]; i2.Err != nil || i2.Size != 7 || i2.Done != 0 || i2.Attempts != 0 {
		t.Errorf("Scan %s = %+v", id2, i2)
	}
	if ib := byID[bad]; !errors.Is(ib.Err, errIncomplete) {
		t.Errorf("damaged file: Err = %v, want errIncomplete", ib.Err)
	}
	if after := spoolFiles(t, q.dir); strings.Join(before, " ") != strings.Join(after, " ") {
		t.Errorf("Scan modified the spool: %v -> %v", before, after)
	}
	if infos, err := Scan(filepath.Join(t.TempDir(), "nonexistent")); err != nil || len(infos) != 0 {
		t.Errorf("Scan of a missing spool: %v %v", infos, err)
	}
}
