package queue

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// amendCase is a message and the change a content hook makes to it.
type amendCase struct {
	data    string
	env     *Envelope // nil: envelope unchanged
	header  string
	bodyOff int
	want    string // the message as delivered
}

func amendCases() map[string]amendCase {
	hdrEnd := strings.Index(msg1, "\r\n\r\n") + 4
	e2 := env("a@example.com", "b@example.net", "added@example.com")
	e2.From = "new-sender@example.org"
	ar := "Authentication-Results: mx.example.com; spf=pass\r\n"
	rewritten := "From: sender@example.org\r\nSubject: [ext] test\r\n\r\n"
	return map[string]amendCase{
		// Authentication-Results on top: the header is not even read.
		"prepend": {data: msg1, header: ar, want: ar + msg1},
		// A milter's header changes: the header section is replaced.
		"rewrite": {data: msg1, header: ar + rewritten, bodyOff: hdrEnd, want: ar + rewritten + msg1[hdrEnd:]},
		// A new sender and an added recipient only.
		"envelope": {data: msg1, env: &e2, want: msg1},
		"all":      {data: msg1, env: &e2, header: ar + rewritten, bodyOff: hdrEnd, want: ar + rewritten + msg1[hdrEnd:]},
		// A message that is all header (no empty line, no body).
		"header-only-message": {data: "Subject: x\r\n", header: "Subject: y\r\n", bodyOff: 12, want: "Subject: y\r\n"},
		// Data that holds amend and trailer lines must not confuse anything.
		"fake-records": {data: "Subject: x\r\n\r\n\nSRQ-AMEND 2 0 0\n{}\n\nSRQ-END 0000000000000000 0000000000000000 00000000\n",
			header: ar, want: ar + "Subject: x\r\n\r\n\nSRQ-AMEND 2 0 0\n{}\n\nSRQ-END 0000000000000000 0000000000000000 00000000\n"},
	}
}

// putAmended writes c through a Writer with Amend and commits it.
func putAmended(t testing.TB, q *Queue, e Envelope, c amendCase) *Writer {
	t.Helper()
	w, err := q.NewWriter(e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, c.data); err != nil {
		t.Fatal(err)
	}
	w.SetContent(Content7Bit)
	if err := w.Amend(c.env, []byte(c.header), int64(c.bodyOff)); err != nil {
		t.Fatalf("Amend: %v", err)
	}
	if got := w.Size(); got != int64(len(c.want)) {
		t.Errorf("Writer.Size after Amend = %d, want %d", got, len(c.want))
	}
	r, err := w.Reader()
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); string(b) != c.want {
		t.Errorf("Writer.Reader after Amend:\n got %q\nwant %q", b, c.want)
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return w
}

// An amended message stays in its one file under its first queue ID, in
// the documented format, and every reader sees the amended message and
// envelope: delivery, delivery after a restart, queue show --body, queue
// list, the sidecar's recipient names.
func TestAmendFileFormatAndReaders(t *testing.T) {
	for name, c := range amendCases() {
		t.Run(name, func(t *testing.T) {
			q := open(t, "", Options{}, nil)
			e := env("a@example.com", "b@example.net")
			w := putAmended(t, q.Queue, e, c)
			id := w.ID()
			wantEnv := e
			if c.env != nil {
				wantEnv = *c.env
			}
			if got := spoolFiles(t, q.dir); len(got) != 1 || got[0] != filepath.Join(shardOf(id), id) {
				t.Fatalf("spool holds %v, want only %s", got, id)
			}
			raw, err := os.ReadFile(q.store.path(id))
			if err != nil {
				t.Fatal(err)
			}
			want := buildAmendedFile(e, []byte(c.data), wantEnv, []byte(c.header), c.bodyOff)
			if !bytes.Equal(raw, want) {
				t.Fatalf("spool file differs from the documented format:\n got %q\nwant %q", trunc(raw), trunc(want))
			}
			check := func(what string, c2 call) {
				t.Helper()
				if c2.id != id || c2.openErr != nil || string(c2.data) != c.want || c2.size != int64(len(c.want)) {
					t.Fatalf("%s: id %s err %v size %d data\n %q\nwant %q", what, c2.id, c2.openErr, c2.size, c2.data, c.want)
				}
				if c2.env.From != wantEnv.From || strings.Join(c2.rcpts, ",") != strings.Join(wantEnv.To, ",") || !c2.env.Received.Equal(t0) {
					t.Fatalf("%s: envelope %+v rcpts %v, want %+v", what, c2.env, c2.rcpts, wantEnv)
				}
			}
			rc, err := OpenData(q.dir, id)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			if string(b) != c.want {
				t.Fatalf("OpenData (queue show --body):\n got %q\nwant %q", b, c.want)
			}
			infos, err := Scan(q.dir)
			if err != nil || len(infos) != 1 || infos[0].Size != int64(len(c.want)) || infos[0].Envelope.From != wantEnv.From ||
				len(infos[0].Envelope.To) != len(wantEnv.To) {
				t.Fatalf("Scan (queue list): %+v, %v", infos, err)
			}
			if got, err := readEnvelope(q.store.path(id)); err != nil || got.From != wantEnv.From || len(got.To) != len(wantEnv.To) {
				t.Fatalf("readEnvelope: %+v, %v", got, err)
			}

			// After a restart, from the file alone.
			q.Close()
			q2 := open(t, q.dir, Options{}, nil)
			if q2.Len() != 1 || strings.Contains(q2.logs.String(), "quarantine") {
				t.Fatalf("amended file not recovered: Len %d, log %s", q2.Len(), q2.logs.String())
			}
			q2.Start()
			check("after restart", q2.rec.next(t))
		})
	}
	// And before a restart, from the writer's extents.
	for name, c := range amendCases() {
		t.Run(name+"/live", func(t *testing.T) {
			q := open(t, "", Options{}, nil)
			w := putAmended(t, q.Queue, env("a@example.com", "b@example.net"), c)
			q.Start()
			c2 := q.rec.next(t)
			if c2.id != w.ID() || string(c2.data) != c.want || c2.size != int64(len(c.want)) {
				t.Fatalf("delivery: id %s size %d data %q, want %s %q", c2.id, c2.size, c2.data, w.ID(), c.want)
			}
			if c.env != nil && (c2.env.From != c.env.From || len(c2.rcpts) != len(c.env.To)) {
				t.Fatalf("delivery envelope %+v rcpts %v", c2.env, c2.rcpts)
			}
			gone(t, q.Queue, w.ID())
		})
	}
}

// A header with 8-bit octets makes the message 8-bit whatever the data
// was: delivery must not send it as 7-bit to a next hop without 8BITMIME.
func TestAmendEightBitHeader(t *testing.T) {
	q := open(t, "", Options{}, nil)
	w := putAmended(t, q.Queue, env("a@example.com"), amendCase{data: msg1, header: "X-Note: caf\xc3\xa9\r\n", want: "X-Note: caf\xc3\xa9\r\n" + msg1})
	q.mu.Lock()
	got := q.items[w.ID()].st.content
	q.mu.Unlock()
	if got != Content8Bit {
		t.Fatalf("content %v after an 8-bit header, want Content8Bit", got)
	}
}

func TestAmendMisuse(t *testing.T) {
	q := open(t, "", Options{}, nil)
	w, err := q.NewWriter(env("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	io.WriteString(w, msg1)
	if err := w.Amend(nil, nil, int64(len(msg1)+1)); err == nil {
		t.Error("Amend accepted a body offset past the data")
	}
	if err := w.Amend(nil, nil, -1); err == nil {
		t.Error("Amend accepted a negative body offset")
	}
	if err := w.Amend(&Envelope{From: "x@example.org"}, nil, 0); err == nil {
		t.Error("Amend accepted an envelope without recipients")
	}
	if err := w.Amend(nil, []byte("X: y\r\n"), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Amend(nil, []byte("X: y\r\n"), 0); err == nil {
		t.Error("second Amend accepted")
	}
	if _, err := w.Write([]byte("more")); err == nil {
		t.Error("Write after Amend accepted")
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit after refused misuse: %v", err)
	}
	if err := w.Amend(nil, nil, 0); err == nil {
		t.Error("Amend after Commit accepted")
	}
}

// A file torn anywhere, inside the amend record included, or with one
// byte changed, was never acknowledged: it is quarantined, never
// delivered, exactly like a torn file without an amend record.
func TestRecoverQuarantinesTornAmendedFiles(t *testing.T) {
	c := amendCases()["all"]
	q := open(t, "", Options{}, nil)
	w := putAmended(t, q.Queue, env("a@example.com", "b@example.net"), c)
	id, dir := w.ID(), q.dir
	q.Close()
	raw, err := os.ReadFile(q.store.path(id))
	if err != nil {
		t.Fatal(err)
	}
	for cut := 1; cut < len(raw); cut++ {
		checkQuarantined(t, dir, id, raw[:cut], "truncated at "+itoa(cut))
	}
	amendAt := bytes.Index(raw, []byte("\nSRQ-AMEND "))
	for off := 0; off < len(raw); off++ {
		for _, mask := range []byte{0x01, 0x20, 0xFF} {
			b := bytes.Clone(raw)
			b[off] ^= mask
			if off >= len(raw)-trailer2Len && trailerStillSays(b, raw) {
				continue // the same numbers spelled differently (hex case)
			}
			what := "byte " + itoa(off) + " ^ " + itoa(int(mask))
			if off >= amendAt && off < len(raw)-trailer2Len {
				what = "amend record " + what
			}
			checkQuarantined(t, dir, id, b, what)
		}
	}
	// The magic written over SRQ1 lost in a crash (or SRQ1's own trailer
	// under SRQ2): each kind is read with its own trailer only.
	checkQuarantined(t, dir, id, append([]byte("SRQ1"), raw[4:]...), "amended file under SRQ1")
	plain := wantFile(t, env("a@example.com"), []byte(msg1))
	checkQuarantined(t, dir, id, append([]byte("SRQ2"), plain[4:]...), "SRQ1 file under SRQ2")
}

// trailerStillSays reports whether b's trailer parses to raw's numbers.
func trailerStillSays(b, raw []byte) bool {
	var d1, a1, d2, a2 int64
	var s1, s2 uint32
	_, e1 := fmt.Sscanf(string(b[len(b)-trailer2Len:]), trailer2Fmt, &d1, &a1, &s1)
	_, e2 := fmt.Sscanf(string(raw[len(raw)-trailer2Len:]), trailer2Fmt, &d2, &a2, &s2)
	return e1 == nil && e2 == nil && d1 == d2 && a1 == a2 && s1 == s2
}

// Files written before the amend record existed (SRQ1) are read, loaded
// and delivered as before; and a writer that does not amend still writes
// exactly them (TestPutFileFormatAndOpen), so a downgrade reads them too.
func TestRecoverReadsSRQ1Files(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q := open(t, dir, Options{}, nil)
	q.Close()
	id := "0123456789ABCDE7"
	e := env("a@example.com")
	if err := os.WriteFile(filepath.Join(dir, shardOf(id), id), wantFile(t, e, []byte(msg1)), 0o600); err != nil {
		t.Fatal(err)
	}
	q2 := open(t, dir, Options{}, nil)
	if q2.Len() != 1 {
		t.Fatalf("SRQ1 file not loaded: %s", q2.logs.String())
	}
	q2.Start()
	c := q2.rec.next(t)
	if c.id != id || string(c.data) != msg1 || c.size != int64(len(msg1)) {
		t.Fatalf("SRQ1 delivery: %s %d %q", c.id, c.size, c.data)
	}
}

// A pre-created file (the relay's usual case) is amended like a created
// one: the magic is written over in place.
func TestAmendPooledFile(t *testing.T) {
	h := open(t, "", Options{Preallocate: 4}, nil)
	waitUntil(t, "pool filled", func() bool { _, e := countFiles(t, h.dir); return e == 4 })
	c := amendCases()["all"]
	e := env("a@example.com", "b@example.net")
	w := putAmended(t, h.Queue, e, c)
	if !w.pooled {
		t.Fatal("writer did not take a pre-created file")
	}
	raw, err := os.ReadFile(h.store.path(w.ID()))
	if err != nil {
		t.Fatal(err)
	}
	if want := buildAmendedFile(e, []byte(c.data), *c.env, []byte(c.header), c.bodyOff); !bytes.Equal(raw, want) {
		t.Fatalf("pooled amended file:\n got %q\nwant %q", trunc(raw), trunc(want))
	}
	h.Start()
	if got := h.rec.next(t); string(got.data) != c.want {
		t.Fatalf("delivered %q, want %q", got.data, c.want)
	}
}
