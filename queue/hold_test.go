package queue

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// refuseAll is a Deliverer answer: the downstream refuses every recipient
// after our 250, as an accept-all domain's downstream does for made-up
// local parts.
func refuseAll(ctx context.Context, d *Delivery) []Result { return all(len(d.Rcpts), permFail) }

func inboundEnv(to ...string) Envelope {
	e := env(to...)
	e.Origin, e.AuthUser, e.Listener = OriginInbound, "", "mx"
	return e
}

// holdOne spools a message that the Deliverer refuses and waits until the
// queue has held it and pruned hold/ to wantPruned removals in all.
func holdOne(t *testing.T, q *tq, e Envelope, data string, wantHeld int, wantPruned int64) string {
	t.Helper()
	id := put(t, q.Queue, e, data)
	waitFor(t, 5*time.Second, "message "+id+" held and hold/ pruned", func() bool {
		n, _ := q.HoldUsage()
		p := q.Pruned()
		return !state(q.Queue, id).present && n == wantHeld && p[CountHoldMaxSize]+p[CountHoldMaxAge] == wantPruned
	})
	return id
}

// holdFiles lists the regular files in hold/.
func holdFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, f := range spoolFiles(t, dir) {
		// A held message's sidecar (its recipients' states) goes with it.
		if strings.HasPrefix(f, holdDir+"/") && !strings.HasSuffix(f, statusExt) {
			out = append(out, strings.TrimPrefix(f, holdDir+"/"))
		}
	}
	return out
}

// diskSize sums the sizes of the files in hold/, as du would count them
// (apparent size).
func diskSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	ents, err := os.ReadDir(filepath.Join(dir, holdDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// removals returns the "hold spool: removed" log lines, in order.
func removals(logs string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="hold spool: removed"`) {
			out = append(out, l)
		}
	}
	return out
}

// heldSize is what one message with e and data takes in hold/.
func heldSize(t *testing.T, e Envelope, data string) int64 {
	t.Helper()
	q := open(t, "", Options{}, refuseAll)
	q.Start()
	holdOne(t, q, e, data, 1, 0)
	_, n := q.HoldUsage()
	return n
}

// Finding 6 of issue 11: an outsider's mail to made-up local parts, refused
// downstream after our 250, filled hold/ without bound. With hold_max_size,
// hold/ stays under the limit: the oldest held messages go first, each
// logged with its envelope, age, size and reason, and counted.
func TestHoldBoundedBySize(t *testing.T) {
	data := strings.Repeat("x", 10000) + "\r\n"
	outsider := func(i int) Envelope {
		e := inboundEnv("made-up-" + itoa(i) + "@example.com")
		e.From = "outsider" + itoa(i) + "@example.org"
		return e
	}
	one := heldSize(t, outsider(0), data)
	var pending string
	q := open(t, "", Options{HoldMaxSize: 3*one + one/2}, func(ctx context.Context, d *Delivery) []Result {
		if d.ID == pending {
			return all(len(d.Rcpts), tempFail)
		}
		return refuseAll(ctx, d)
	})
	// A message still being delivered, older than everything held: the
	// limit is hold/'s, the active spool is never touched.
	old := inboundEnv("later@example.com")
	old.Received = t0.Add(-4 * 24 * time.Hour)
	pending = put(t, q.Queue, old, msg1)
	q.Start()
	idle(t, q.Queue, pending)

	var ids []string
	for i := 0; i < 7; i++ {
		q.clock.Advance(time.Minute)
		e := outsider(i)
		e.Received = q.clock.Now()
		ids = append(ids, holdOne(t, q, e, data, min(i+1, 3), int64(max(0, i+1-3))))
		if _, n := q.HoldUsage(); n > 3*one+one/2 {
			t.Fatalf("after %d held: hold/ has %d bytes, limit %d", i+1, n, 3*one+one/2)
		}
	}
	if got, want := strings.Join(holdFiles(t, q.dir), " "), strings.Join(ids[4:], " "); got != want {
		t.Errorf("hold/ = %s, want the three newest %s", got, want)
	}
	if n, b := q.HoldUsage(); n != 3 || b != diskSize(t, q.dir) || b != 3*one {
		t.Errorf("HoldUsage = %d, %d bytes; want 3, %d bytes (%d on disk)", n, b, 3*one, diskSize(t, q.dir))
	}
	rm := removals(q.logs.String())
	if len(rm) != 4 {
		t.Fatalf("%d removal log lines, want 4:\n%s", len(rm), strings.Join(rm, "\n"))
	}
	for i, l := range rm {
		for _, want := range []string{
			"level=WARN", "queue_id=" + ids[i], "from=outsider" + itoa(i) + "@example.org",
			"to=made-up-" + itoa(i) + "@example.com", "size=" + itoa(int(one)), "reason=max_size",
			"setting=queue.hold_max_size", "limit=" + itoa(int(3*one+one/2)), "count=" + itoa(i+1),
		} {
			if !strings.Contains(l, want) {
				t.Errorf("removal %d lacks %q:\n%s", i, want, l)
			}
		}
		if !regexp.MustCompile(` age=\d+m0s `).MatchString(l) {
			t.Errorf("removal %d: no age in minutes: %s", i, l)
		}
	}
	if p := q.Pruned(); p[CountHoldMaxSize] != 4 || p[CountHoldMaxAge] != 0 || p[CountQuarantineMaxAge] != 0 {
		t.Errorf("Pruned = %v", p)
	}
	if s := state(q.Queue, pending); !s.present {
		t.Errorf("the pending message left the queue")
	}
	if _, err := os.Stat(q.store.path(pending)); err != nil {
		t.Errorf("the pending message's file: %v", err)
	}
	// queue list shows what is held, and nothing of what was removed.
	infos, err := Scan(q.dir)
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, in := range infos {
		if in.Held {
			held = append(held, in.ID)
		}
	}
	if strings.Join(held, " ") != strings.Join(ids[4:], " ") {
		t.Errorf("Scan shows held %v, want %v", held, ids[4:])
	}
}

// Oldest means longest in hold/, by the file's time: an admin who touches a
// held message keeps it longer, and the index, stale after the touch,
// removes the next one instead.
func TestHoldOldestByTimeHeldAndTouch(t *testing.T) {
	data := strings.Repeat("y", 5000) + "\r\n"
	one := heldSize(t, inboundEnv("x@example.com"), data)
	q := open(t, "", Options{HoldMaxSize: 3 * one}, refuseAll)
	q.Start()
	var ids []string
	for i := 0; i < 3; i++ {
		q.clock.Advance(time.Hour)
		ids = append(ids, holdOne(t, q, inboundEnv("x@example.com"), data, i+1, 0))
	}
	later := q.clock.Advance(time.Hour)
	if err := os.Chtimes(filepath.Join(q.dir, holdDir, ids[0]), later, later); err != nil {
		t.Fatal(err)
	}
	q.clock.Advance(time.Hour)
	ids = append(ids, holdOne(t, q, inboundEnv("x@example.com"), data, 3, 1))
	rm := removals(q.logs.String())
	if len(rm) != 1 || !strings.Contains(rm[0], "queue_id="+ids[1]) {
		t.Fatalf("removed %v, want only %s (%s was touched)", rm, ids[1], ids[0])
	}
	if got := strings.Join(holdFiles(t, q.dir), " "); got != ids[0]+" "+ids[2]+" "+ids[3] {
		t.Errorf("hold/ = %s", got)
	}
}

// hold_max_age counts from the time a message was held; the periodic pass
// removes it, and what is younger stays.
func TestHoldBoundedByAge(t *testing.T) {
	q := open(t, "", Options{HoldMaxAge: 30 * 24 * time.Hour, PruneInterval: 5 * time.Millisecond}, refuseAll)
	q.Start()
	old := holdOne(t, q, inboundEnv("a@example.com"), msg1, 1, 0)
	q.clock.Advance(10 * 24 * time.Hour)
	young := holdOne(t, q, inboundEnv("b@example.com"), msg1, 2, 0)
	// Just short of the limit: nothing goes.
	q.clock.Advance(20*24*time.Hour - time.Second)
	time.Sleep(50 * time.Millisecond) // several periodic passes
	if n, _ := q.HoldUsage(); n != 2 || len(holdFiles(t, q.dir)) != 2 {
		t.Fatalf("removed before hold_max_age: %v", holdFiles(t, q.dir))
	}
	q.clock.Advance(time.Second)
	waitFor(t, 5*time.Second, "periodic removal of the old message", func() bool { return q.Pruned()[CountHoldMaxAge] == 1 })
	if got := holdFiles(t, q.dir); len(got) != 1 || got[0] != young {
		t.Fatalf("hold/ = %v, want only %s", got, young)
	}
	rm := removals(q.logs.String())
	if len(rm) != 1 {
		t.Fatalf("removals: %v", rm)
	}
	for _, want := range []string{"queue_id=" + old, "from=sender@example.org", "to=a@example.com", "age=30d", "reason=max_age", "setting=queue.hold_max_age limit=30d", "count=1"} {
		if !strings.Contains(rm[0], want) {
			t.Errorf("removal lacks %q: %s", want, rm[0])
		}
	}
}

// The running size is rebuilt from hold/ at start (what was held before,
// sidecars included), and a limit lowered while the relay was down is
// applied at once, before anything is delivered, oldest first.
func TestHoldRunningSizeAfterRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q1 := open(t, dir, Options{Retry: []time.Duration{time.Minute}}, func(ctx context.Context, d *Delivery) []Result {
		if d.Attempt == 1 {
			return all(len(d.Rcpts), tempFail) // leaves a sidecar
		}
		return refuseAll(ctx, d)
	})
	q1.Start()
	var ids []string
	for i := 0; i < 4; i++ {
		q1.clock.Advance(time.Minute)
		id := put(t, q1.Queue, inboundEnv("x@example.com"), strings.Repeat("z", 1000*(i+1)))
		for c := q1.rec.next(t); c.id != id; c = q1.rec.next(t) {
		}
		s := idle(t, q1.Queue, id)
		q1.clock.Set(s.next)
		q1.poke()
		waitFor(t, 5*time.Second, id+" held", func() bool { n, _ := q1.HoldUsage(); return n == i+1 })
		ids = append(ids, id)
	}
	if _, err := os.Stat(filepath.Join(dir, holdDir, ids[0]+statusExt)); err != nil {
		t.Fatalf("held message without its sidecar: %v", err)
	}
	_, before := q1.HoldUsage()
	if before != diskSize(t, dir) {
		t.Fatalf("running size %d, on disk %d", before, diskSize(t, dir))
	}
	q1.stop()
	q1.Close()

	q2 := open(t, dir, Options{}, nil)
	if n, b := q2.HoldUsage(); n != 4 || b != before {
		t.Errorf("after restart: %d messages, %d bytes; want 4, %d", n, b, before)
	}
	q2.Close()

	// Room for the two newest (and largest) only.
	fi3, _ := os.Stat(filepath.Join(dir, holdDir, ids[3]))
	fi2, _ := os.Stat(filepath.Join(dir, holdDir, ids[2]))
	sc3, _ := os.Stat(filepath.Join(dir, holdDir, ids[3]+statusExt))
	sc2, _ := os.Stat(filepath.Join(dir, holdDir, ids[2]+statusExt))
	limit := fi3.Size() + fi2.Size() + sc3.Size() + sc2.Size()
	q3 := open(t, dir, Options{HoldMaxSize: limit}, nil)
	if got := strings.Join(holdFiles(t, dir), " "); got != ids[2]+" "+ids[3] {
		t.Errorf("hold/ after start with a lower limit: %s", got)
	}
	if n, b := q3.HoldUsage(); n != 2 || b != limit {
		t.Errorf("HoldUsage = %d, %d; want 2, %d", n, b, limit)
	}
	rm := removals(q3.logs.String())
	if len(rm) != 2 || !strings.Contains(rm[0], ids[0]) || !strings.Contains(rm[1], ids[1]) {
		t.Errorf("removals at start: %v", rm)
	}
}

// A damaged file in hold/ (named like a message) counts and ages like any
// other, and its removal is logged as damaged; a sidecar left by a crash
// between the two unlinks of a removal is cleaned up; files that are not
// named like messages are the admin's and stay.
func TestHoldDamagedAndForeignFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q1 := open(t, dir, Options{}, refuseAll)
	q1.Start()
	kept := holdOne(t, q1, inboundEnv("a@example.com"), msg1, 1, 0)
	q1.stop()
	q1.Close()

	hold := filepath.Join(dir, holdDir)
	damaged := "0123456789ABCDE0"
	mustWrite(t, filepath.Join(hold, damaged), "SRQ1 99\n{\"from\":")
	orphan := "0123456789ABCDE1" + statusExt
	mustWrite(t, filepath.Join(hold, orphan), `{"id":"0123456789ABCDE1"}`+"\n")
	notes := "why-these-are-held.txt"
	mustWrite(t, filepath.Join(hold, notes), "see ticket 4711\n")
	heldAt := t0.Add(-29 * 24 * time.Hour)
	for _, f := range []string{damaged, orphan, notes} {
		os.Chtimes(filepath.Join(hold, f), heldAt, heldAt)
	}

	q2 := open(t, dir, Options{PruneInterval: 5 * time.Millisecond}, nil)
	if got := strings.Join(holdFiles(t, dir), " "); got != damaged+" "+kept+" "+notes {
		t.Fatalf("hold/ after start: %s", got)
	}
	fi, _ := os.Stat(filepath.Join(hold, damaged))
	fk, _ := os.Stat(filepath.Join(hold, kept))
	fs, _ := os.Stat(filepath.Join(hold, kept+statusExt))
	if n, b := q2.HoldUsage(); n != 2 || b != fi.Size()+fk.Size()+fs.Size() {
		t.Errorf("HoldUsage = %d, %d; want the message with its sidecar and the damaged file, %d bytes", n, b, fi.Size()+fk.Size()+fs.Size())
	}
	q2.Start()
	q2.clock.Advance(24 * time.Hour)
	waitFor(t, 5*time.Second, "damaged file removed at 30d", func() bool { return q2.Pruned()[CountHoldMaxAge] == 1 })
	if got := strings.Join(holdFiles(t, dir), " "); got != kept+" "+notes {
		t.Errorf("hold/ = %s", got)
	}
	rm := removals(q2.logs.String())
	if len(rm) != 1 || !strings.Contains(rm[0], "queue_id="+damaged) || !strings.Contains(rm[0], "from=?") ||
		!strings.Contains(rm[0], "damaged=") || !strings.Contains(rm[0], "reason=max_age") {
		t.Errorf("removal of the damaged file: %v", rm)
	}
}

// Files quarantined at start (never acknowledged, or damaged) are removed
// quarantine_max_age after they were quarantined, with a log line.
func TestQuarantineBoundedByAge(t *testing.T) {
	dir, id, raw := spoolOne(t, env("a@example.com"), msg1)
	os.WriteFile(filepath.Join(dir, shardOf(id), id), raw[:len(raw)-3], 0o600)
	q := open(t, dir, Options{QuarantineMaxAge: 7 * 24 * time.Hour, PruneInterval: 5 * time.Millisecond}, nil)
	if _, err := os.Stat(filepath.Join(dir, brokenDir, id)); err != nil {
		t.Fatalf("not quarantined: %v", err)
	}
	q.Start()
	q.clock.Advance(7*24*time.Hour - time.Second)
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(dir, brokenDir, id)); err != nil {
		t.Fatalf("removed before quarantine_max_age: %v", err)
	}
	q.clock.Advance(time.Second)
	// The count goes up just before the line is logged: wait for both.
	line := regexp.MustCompile(`msg="quarantine: removed" file=` + id + ` from=sender@example.org .*age=7d .*reason=max_age setting=queue.quarantine_max_age limit=7d`)
	waitFor(t, 5*time.Second, "quarantined file removed and logged", func() bool {
		return q.Pruned()[CountQuarantineMaxAge] == 1 && line.MatchString(q.logs.String())
	})
	if _, err := os.Stat(filepath.Join(dir, brokenDir, id)); !os.IsNotExist(err) {
		t.Errorf("still in quarantine: %v", err)
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
