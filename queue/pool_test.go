package queue

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// countFiles returns the non-empty (messages) and empty (pre-created)
// files in the shard directories.
func countFiles(t *testing.T, dir string) (full, empty int) {
	t.Helper()
	for i := 0; i < shards; i++ {
		ents, _ := os.ReadDir(filepath.Join(dir, shardName(i)))
		for _, e := range ents {
			fi, err := e.Info()
			if err != nil {
				continue
			}
			if fi.Size() == 0 {
				empty++
			} else {
				full++
			}
		}
	}
	return
}

func shardName(i int) string { return string("0123456789ABCDEF"[i]) }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPoolMessagesUsePreCreatedFiles(t *testing.T) {
	h := open(t, "", Options{Preallocate: 16}, nil)
	waitUntil(t, "pool filled", func() bool { _, e := countFiles(t, h.dir); return e == 16 })
	w, err := h.NewWriter(env("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if !w.pooled {
		t.Fatalf("writer did not take a pre-created file")
	}
	w.Write([]byte(msg1))
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	st, err := readStored(h.store.path(w.ID()))
	if err != nil || st.dataLen != int64(len(msg1)) {
		t.Fatalf("pooled message on disk: %v %+v", err, st)
	}
	if !validID(w.ID(), int(mustHex(t, shardOf(w.ID())))) {
		t.Fatalf("pooled ID %q is not a valid queue ID", w.ID())
	}
	h.Start()
	if c := h.rec.next(t); string(c.data) != msg1 {
		t.Fatalf("delivered %q", c.data)
	}
}

func mustHex(t *testing.T, s string) int64 {
	for i, c := range "0123456789ABCDEF" {
		if string(c) == s {
			return int64(i)
		}
	}
	t.Fatalf("not a hex digit: %q", s)
	return 0
}

// Many concurrent writers drain a small pool: the ones that find it empty
// fall back to creating their file, and every message is delivered once.
func TestPoolExhaustedFallsBack(t *testing.T) {
	h := open(t, "", Options{Preallocate: 2}, nil)
	h.Start()
	var wg sync.WaitGroup
	ids := make(chan string, 200)
	for g := 0; g < 10; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				ids <- put(t, h.Queue, env("a@example.com"), msg1)
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("queue ID %s used twice", id)
		}
		seen[id] = true
	}
	for range seen {
		h.rec.next(t)
	}
	waitUntil(t, "spool empty", func() bool { return h.Len() == 0 })
}

// A crash leaves pre-created files behind: the next start removes them
// silently (they were never acknowledged), quarantines nothing, delivers
// nothing, and Scan does not list them as messages.
func TestPoolLeftoversAfterCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q, err := Open(Options{Dir: dir, Preallocate: 8, Logger: slogTo(&logBuf{})})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "pool filled", func() bool { _, e := countFiles(t, dir); return e == 8 })
	// No Close: as after kill -9. Stop the refill so it cannot race the
	// second Open below.
	close(q.store.pool.stop)
	<-q.store.pool.done
	if infos, err := Scan(dir); err != nil || len(infos) != 0 {
		t.Fatalf("Scan lists %d entries (%v), want none", len(infos), err)
	}
	h := open(t, dir, Options{}, nil)
	if h.Len() != 0 {
		t.Fatalf("%d messages loaded from pre-created files", h.Len())
	}
	if full, empty := countFiles(t, dir); full != 0 || empty != 0 {
		t.Fatalf("after restart: %d full, %d empty files in the shards", full, empty)
	}
	if q, _ := os.ReadDir(filepath.Join(dir, brokenDir)); len(q) != 0 {
		t.Fatalf("%d files quarantined", len(q))
	}
}

// Close removes the files nobody took.
func TestPoolCloseRemovesUnused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q, err := Open(Options{Dir: dir, Preallocate: 8, Logger: slogTo(&logBuf{})})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "pool filled", func() bool { _, e := countFiles(t, dir); return e == 8 })
	q.Close()
	if _, empty := countFiles(t, dir); empty != 0 {
		t.Fatalf("%d pre-created files left after Close", empty)
	}
}
