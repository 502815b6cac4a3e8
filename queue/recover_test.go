package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// spoolOne writes one committed message into a fresh spool with a queue
// that is then closed, and returns the spool dir, the ID and the file.
func spoolOne(t *testing.T, e Envelope, data string) (dir, id string, raw []byte) {
	t.Helper()
	q := open(t, "", Options{}, nil)
	id = put(t, q.Queue, e, data)
	q.Close()
	raw, err := os.ReadFile(q.store.path(id))
	if err != nil {
		t.Fatal(err)
	}
	return q.dir, id, raw
}

func TestRecoverDeliversValidFiles(t *testing.T) {
	q1 := open(t, "", Options{}, nil)
	want := map[string]string{}
	for i := 0; i < 40; i++ {
		data := strings.Repeat("line\r\n", i)
		want[put(t, q1.Queue, env("a@example.com", "b@example.com"), data)] = data
	}
	q1.Close()

	q2 := open(t, q1.dir, Options{}, nil)
	if q2.Len() != 40 {
		t.Fatalf("recovered %d of 40", q2.Len())
	}
	q2.Start()
	got := map[string]int{}
	for range want {
		c := q2.rec.next(t)
		got[c.id]++
		if string(c.data) != want[c.id] || c.openErr != nil {
			t.Fatalf("%s: data %q err %v, want %q", c.id, c.data, c.openErr, want[c.id])
		}
		if c.attempt != 1 || len(c.rcpts) != 2 || !c.env.Received.Equal(t0) {
			t.Fatalf("%s: attempt %d rcpts %v received %v", c.id, c.attempt, c.rcpts, c.env.Received)
		}
	}
	for id := range want {
		if got[id] != 1 {
			t.Fatalf("%s delivered %d times", id, got[id])
		}
		gone(t, q2.Queue, id)
	}
	if strings.Contains(q2.logs.String(), "quarantine") {
		t.Errorf("valid files quarantined:\n%s", q2.logs.String())
	}
}

// checkQuarantined opens a queue on dir, in which spool/<shard>/id holds
// damaged content, and checks that it is quarantined: moved, not loaded,
// logged, and never delivered.
func checkQuarantined(t *testing.T, dir, id string, content []byte, what string) {
	t.Helper()
	shardPath := filepath.Join(dir, shardOf(id), id)
	qPath := filepath.Join(dir, brokenDir, id)
	os.Remove(qPath)
	if err := os.WriteFile(shardPath, content, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	q := openQuiet(t, dir, logs)
	defer q.Close()
	if q.Len() != 0 {
		t.Fatalf("%s: damaged file loaded (Len %d)", what, q.Len())
	}
	if _, err := os.Stat(shardPath); !os.IsNotExist(err) {
		t.Fatalf("%s: damaged file still in the shard: %v", what, err)
	}
	got, err := os.ReadFile(qPath)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("%s: quarantine/%s: err %v, content intact %v", what, id, err, bytes.Equal(got, content))
	}
	l := logs.String()
	if !strings.Contains(l, "quarantine") || !strings.Contains(l, id) {
		t.Fatalf("%s: no log line about the quarantine: %q", what, l)
	}
}

// openQuiet opens a queue whose Deliverer must never be called.
func openQuiet(t *testing.T, dir string, logs *logBuf) *Queue {
	t.Helper()
	q, err := Open(Options{
		Dir:    dir,
		Now:    newClock().Now,
		Logger: slogTo(logs),
		Deliverer: deliverFunc(func(ctx context.Context, d *Delivery) []Result {
			t.Errorf("damaged message %s delivered", d.ID)
			return all(len(d.Rcpts), Result{Status: Delivered})
		}),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return q
}

func TestRecoverQuarantinesEveryTruncation(t *testing.T) {
	dir, id, raw := spoolOne(t, env("a@example.com", "b@example.com"), msg1)
	for cut := 1; cut < len(raw); cut++ {
		checkQuarantined(t, dir, id, raw[:cut], "truncated at "+itoa(cut))
	}
	// An empty file is an unused pre-created one (or a create that died
	// before its header): removed, neither loaded nor quarantined.
	shardPath := filepath.Join(dir, shardOf(id), id)
	os.Remove(filepath.Join(dir, brokenDir, id)) // left by the last cut
	os.WriteFile(shardPath, nil, 0o600)
	q0 := openQuiet(t, dir, &logBuf{})
	if q0.Len() != 0 {
		t.Fatalf("empty file loaded")
	}
	q0.Close()
	if _, err := os.Stat(shardPath); !os.IsNotExist(err) {
		t.Fatalf("empty file left in the shard: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, brokenDir, id)); !os.IsNotExist(err) {
		t.Fatalf("empty file quarantined: %v", err)
	}
	// control: the complete file is loaded
	os.WriteFile(filepath.Join(dir, shardOf(id), id), raw, 0o600)
	q := openQuiet(t, dir, &logBuf{})
	defer q.Close()
	if q.Len() != 1 {
		t.Fatalf("complete file not loaded")
	}
}

// A truncated file's sidecar goes to quarantine with it.
func TestRecoverQuarantinesSidecarToo(t *testing.T) {
	dir, id, raw := spoolOne(t, env("a@example.com"), msg1)
	st := filepath.Join(dir, shardOf(id), id+statusExt)
	os.WriteFile(st, []byte(`{"attempts":1}`+"\n"), 0o600)
	checkQuarantined(t, dir, id, raw[:len(raw)-1], "truncated with sidecar")
	if _, err := os.Stat(st); !os.IsNotExist(err) {
		t.Errorf("sidecar left in the shard: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, brokenDir, id+statusExt)); err != nil {
		t.Errorf("sidecar not in quarantine: %v", err)
	}
}

// Every single-byte change of the data (CRC), of the trailer and of the
// header line is detected.
func TestRecoverQuarantinesFlippedBytes(t *testing.T) {
	data := msg1 + strings.Repeat("0123456789abcdef\r\n", 20)
	dir, id, raw := spoolOne(t, env("a@example.com"), data)
	st, err := readStored(filepath.Join(dir, shardOf(id), id))
	if err != nil {
		t.Fatal(err)
	}
	// Every byte: header, envelope (the checksum covers it, so a damaged
	// recipient address cannot pass as valid JSON), data and trailer.
	var offs []int
	for i := 0; i < len(raw); i++ {
		offs = append(offs, i)
	}
	for _, off := range offs {
		for _, mask := range []byte{0x01, 0x20, 0xFF} {
			b := bytes.Clone(raw)
			b[off] ^= mask
			what := "byte " + itoa(off) + " ^ " + itoa(int(mask))
			if int64(off) >= st.dataOff+st.dataLen && harmlessTrailerChange(t, raw, b, st) {
				// The trailer parser is lenient about spelling (upper-case
				// hex digits, say) but not about values: it may accept the
				// file only if the data is exactly what was written.
				t.Logf("%s: trailer spelled differently, same length and CRC", what)
				continue
			}
			checkQuarantined(t, dir, id, b, what)
		}
	}
}

// harmlessTrailerChange reports whether readStored accepts b, which differs
// from raw in the trailer only, with raw's data unchanged.
func harmlessTrailerChange(t *testing.T, raw, b []byte, want *stored) bool {
	p := filepath.Join(t.TempDir(), "probe")
	os.WriteFile(p, b, 0o600)
	st, err := readStored(p)
	if err != nil {
		return false
	}
	return st.dataOff == want.dataOff && st.dataLen == want.dataLen &&
		bytes.Equal(b[:st.dataOff+st.dataLen], raw[:want.dataOff+want.dataLen])
}

func itoa(i int) string { return strconv.Itoa(i) }

// Sidecar state survives a restart: recipients done are not attempted
// again, the attempt count and the next time are kept.
func TestRecoverHonoursSidecar(t *testing.T) {
	e := env("done@example.com", "later@example.com", "bad@example.com")
	results := func(ctx context.Context, d *Delivery) []Result {
		return []Result{{Status: Delivered}, tempFail, permFail}
	}
	var bounced []Bounce
	retry := []time.Duration{time.Minute, 10 * time.Minute}
	q1 := open(t, "", Options{Retry: retry, Bouncer: func(d *Delivery, f []Bounce) error {
		bounced = append(bounced, f...)
		return nil
	}}, results)
	id := put(t, q1.Queue, e, msg1)
	q1.Start()
	q1.rec.next(t)
	s1 := idle(t, q1.Queue, id)
	q1.stop()
	q1.Close()
	if len(bounced) != 1 || bounced[0].Rcpt != "bad@example.com" {
		t.Fatalf("bounced %+v", bounced)
	}
	if _, err := os.Stat(q1.store.path(id) + statusExt); err != nil {
		t.Fatalf("no sidecar after a partial delivery: %v", err)
	}

	q2 := open(t, q1.dir, Options{Retry: retry}, nil)
	s2 := state(q2.Queue, id)
	if s2.attempts != 1 || !s2.next.Equal(s1.next) || len(s2.done) != 2 {
		t.Fatalf("recovered state %+v, want attempts 1, next %v, done [0 2]", s2, s1.next)
	}
	q2.Start()
	settle(t, q2.Queue)
	if n := q2.rec.n(); n != 0 {
		t.Fatalf("attempted %d times before the recorded next time", n)
	}
	q2.clock.Set(s1.next)
	q2.poke()
	c := q2.rec.next(t)
	if strings.Join(c.rcpts, ",") != "later@example.com" || c.attempt != 2 {
		t.Fatalf("after restart: rcpts %v attempt %d, want only later@example.com, attempt 2", c.rcpts, c.attempt)
	}
	gone(t, q2.Queue, id)
}

func TestRecoverIgnoresTornSidecarLine(t *testing.T) {
	dir, id, _ := spoolOne(t, env("a@example.com", "b@example.com", "c@example.com"), msg1)
	l1, _ := json.Marshal(status{ID: id, Done: []int{0}, Attempts: 1, Next: t0})
	l2, _ := json.Marshal(status{ID: id, Done: []int{0, 1}, Attempts: 2, Next: t0})
	torn := string(l1) + "\n" + string(l2[:len(l2)-7])
	os.WriteFile(filepath.Join(dir, shardOf(id), id+statusExt), []byte(torn), 0o600)

	q := open(t, dir, Options{}, nil)
	q.Start()
	c := q.rec.next(t)
	if strings.Join(c.rcpts, ",") != "b@example.com,c@example.com" || c.attempt != 2 {
		t.Fatalf("rcpts %v attempt %d; want b and c (the torn line is ignored), attempt 2", c.rcpts, c.attempt)
	}
	gone(t, q.Queue, id)
}

func TestRecoverRemovesOrphanSidecar(t *testing.T) {
	dir, id, _ := spoolOne(t, env("a@example.com"), msg1)
	orphan := filepath.Join(dir, "7", "0000000000000007"+statusExt)
	os.WriteFile(orphan, []byte(`{"attempts":3}`+"\n"), 0o600)
	q := open(t, dir, Options{}, nil)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan sidecar not removed: %v", err)
	}
	if q.Len() != 1 {
		t.Fatalf("Len %d", q.Len())
	}
	if _, err := os.Stat(q.store.path(id)); err != nil {
		t.Fatal(err)
	}
}

// max_age counts from the Received time in the file, also after a restart.
func TestRecoverKeepsReceivedForMaxAge(t *testing.T) {
	dir, id, _ := spoolOne(t, env("a@example.com"), msg1)
	var bounces []Bounce
	q := open(t, dir, Options{MaxAge: 24 * time.Hour, Bouncer: func(d *Delivery, f []Bounce) error {
		bounces = append(bounces, f...)
		return nil
	}}, func(ctx context.Context, d *Delivery) []Result { return all(len(d.Rcpts), tempFail) })
	q.clock.Set(t0.Add(24 * time.Hour))
	q.Start()
	q.rec.next(t)
	gone(t, q.Queue, id)
	q.stop()
	if len(bounces) != 1 || bounces[0].Result.Code != "5.4.7" {
		t.Fatalf("bounces %+v", bounces)
	}
}

// The recorded next time is kept at a restart even when it lies up to the
// jitter beyond the last retry interval from now.
func TestRecoverKeepsJitteredNext(t *testing.T) {
	retry := []time.Duration{time.Hour}
	q1 := open(t, "", Options{Retry: retry}, func(ctx context.Context, d *Delivery) []Result {
		return all(len(d.Rcpts), tempFail)
	})
	id := put(t, q1.Queue, env("a@example.com"), msg1)
	q1.Start()
	q1.rec.next(t)
	s1 := idle(t, q1.Queue, id)
	q1.stop()
	q1.Close()
	if s1.next.Equal(t0.Add(time.Hour)) {
		t.Skip("jitter was 0; nothing to check")
	}

	q2 := open(t, q1.dir, Options{Retry: retry}, nil)
	if s2 := state(q2.Queue, id); !s2.next.Equal(s1.next) {
		t.Fatalf("restart moved next from %v to %v", s1.next, s2.next)
	}
}

// A recorded next time beyond any retry interval (the clock was set back)
// is not trusted: the message is due at once.
func TestRecoverResetsFarFutureNext(t *testing.T) {
	dir, id, _ := spoolOne(t, env("a@example.com"), msg1)
	l, _ := json.Marshal(status{ID: id, Attempts: 1, Next: t0.Add(365 * 24 * time.Hour)})
	os.WriteFile(filepath.Join(dir, shardOf(id), id+statusExt), append(l, '\n'), 0o600)
	q := open(t, dir, Options{Retry: []time.Duration{time.Minute, time.Hour}}, nil)
	if s := state(q.Queue, id); !s.next.Equal(t0) || s.attempts != 1 {
		t.Fatalf("state %+v, want next = now", s)
	}
	q.Start()
	if c := q.rec.next(t); c.attempt != 2 {
		t.Fatalf("attempt %d", c.attempt)
	}
}

// A sidecar that names recipient indexes the message does not have (it can
// only be damaged) must not make the message look finished: the real
// recipients stay pending.
func TestRecoverIgnoresOutOfRangeDone(t *testing.T) {
	dir, id, _ := spoolOne(t, env("a@example.com", "b@example.com"), msg1)
	l, _ := json.Marshal(status{ID: id, Done: []int{0, 5, -1}, Attempts: 1, Next: t0})
	os.WriteFile(filepath.Join(dir, shardOf(id), id+statusExt), append(l, '\n'), 0o600)
	q := open(t, dir, Options{}, alwaysTemp)
	q.Start()
	if c := q.rec.next(t); strings.Join(c.rcpts, ",") != "b@example.com" {
		t.Fatalf("rcpts %v", c.rcpts)
	}
	var s snap
	waitFor(t, 5*time.Second, "attempt finished", func() bool { s = state(q.Queue, id); return !s.busy })
	if !s.present || len(s.done) != 1 {
		t.Fatalf("after a temporary failure: %+v; the message must stay with b pending", s)
	}
	if _, err := readStored(q.store.path(id)); err != nil {
		t.Fatalf("message removed with a recipient pending: %v", err)
	}
}

// Files that are not queue IDs of the shard they are in (left by an admin
// or an editor) are quarantined like damaged ones, not loaded with a path
// the queue cannot find again.
func TestRecoverQuarantinesStrayFiles(t *testing.T) {
	dir, id, raw := spoolOne(t, env("a@example.com"), msg1)
	other := "0000000000000005"
	if shardOf(id) == "5" {
		other = "0000000000000006"
	}
	strays := map[string][]byte{
		filepath.Join(shardOf(id), "notes.txt"): []byte("hello\n"),
		filepath.Join(shardOf(id), id+"~"):      raw, // an editor's backup
		filepath.Join(shardOf(other), "x"+id):   raw, // a valid message in the wrong shard
	}
	for p, b := range strays {
		os.WriteFile(filepath.Join(dir, p), b, 0o600)
	}
	logs := &logBuf{}
	q := openQuiet(t, dir, logs)
	defer q.Close()
	if q.Len() != 1 {
		t.Fatalf("Len %d, want only the real message", q.Len())
	}
	for p := range strays {
		if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
			t.Errorf("%s still in the shard: %v", p, err)
		}
		if _, err := os.Stat(filepath.Join(dir, brokenDir, filepath.Base(p))); err != nil {
			t.Errorf("%s not in quarantine: %v", p, err)
		}
	}
	if strings.Contains(logs.String(), "quarantine failed") {
		t.Errorf("log: %s", logs.String())
	}
}

// An entry that cannot be read for a reason that says nothing about its
// content (here a directory where a message file should be: EISDIR, as
// EACCES or EIO would be) is not quarantined: Open refuses to start and
// leaves it in place, so a possibly acknowledged message is not stranded.
func TestRecoverRefusesToStartOnReadErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q, err := Open(Options{Dir: dir, Logger: slogTo(&logBuf{})})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	id := newID(t0)
	bad := filepath.Join(dir, shardOf(id), id)
	if err := os.Mkdir(bad, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Options{Dir: dir, Logger: slogTo(&logBuf{})})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Open = %v, want an error naming %s", err, bad)
	}
	if fi, err := os.Stat(bad); err != nil || !fi.IsDir() {
		t.Fatalf("the unreadable entry was moved: %v", err)
	}
}
