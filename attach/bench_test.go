package attach_test

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"securerelay/attach"
	"securerelay/attach/attachtest"
	"securerelay/internal/testutil"
)

// textMessage is a 4 KiB text-only message: most mail.
func textMessage() string {
	var b strings.Builder
	b.WriteString("From: Alice <alice@sender.example>\r\nTo: <bob@example.test>\r\nSubject: Termin\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n" +
		"Message-ID: <1@sender.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	for b.Len() < 4096 {
		b.WriteString("Sehr geehrte Damen und Herren, anbei die Unterlagen zum Termin am Montag.\r\n")
	}
	return b.String()
}

// zipOfFiles is a ZIP of n files of random (incompressible) data,
// about size bytes in all, as a scanned document archive is.
func zipOfFiles(n, size int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	data := make([]byte, size/n)
	for i := 0; i < n; i++ {
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		f, _ := w.Create(fmt.Sprintf("scans/page-%04d.jpg", i))
		f.Write(data)
	}
	w.Close()
	return b.Bytes()
}

func benchInspect(b *testing.B, msg string) {
	lim := attach.DefaultLimits()
	lim.TempDir = b.TempDir()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		v, err := attach.Inspect(context.Background(), strings.NewReader(msg), lim, nil)
		if err != nil || v.Action != attach.Pass {
			b.Fatalf("%v %+v", err, v)
		}
	}
	// CPU time (user and system) of the process per message: on a
	// machine shared with other work, wall time says less.
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
}

func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkInspectText: the stage's cost for a 4 KiB text-only message
// (target under 50 µs).
func BenchmarkInspectText(b *testing.B) { benchInspect(b, textMessage()) }

// BenchmarkInspectZip1000: a message holding a 9 MiB ZIP of 1,000 files
// (12 MiB as base64).
func BenchmarkInspectZip1000(b *testing.B) {
	benchInspect(b, attachtest.Message(from, to, "scans", attachtest.Part{Name: "scans.zip", Type: "application/zip", Data: zipOfFiles(1000, 9<<20)}))
}

// BenchmarkInspectMessage25: the 25 MiB message of TestInspectPeakRSS
// (a ZIP of 2,000 files).
func BenchmarkInspectMessage25(b *testing.B) { benchInspect(b, message25()) }

// BenchmarkInspectDOCX: an ordinary Word document.
func BenchmarkInspectDOCX(b *testing.B) {
	benchInspect(b, attachtest.Message(from, to, "cv", attachtest.Part{Name: "Lebenslauf.docx", Data: attachtest.DOCX(b)}))
}

// BenchmarkInspectRefused: a ZIP holding a program, refused at the
// first entry.
func BenchmarkInspectRefused(b *testing.B) {
	msg := attachtest.Message(from, to, "Bewerbung", attachtest.Part{Name: "Bewerbung.zip", Data: attachtest.Zip(b, map[string][]byte{"Bewerbung.exe": attachtest.PE()})})
	lim := attach.DefaultLimits()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		v, _ := attach.Inspect(context.Background(), strings.NewReader(msg), lim, nil)
		if v.Action != attach.Reject {
			b.Fatal(v)
		}
	}
}

// message25 is a 25 MiB message: a ZIP of 2,000 files, base64.
func message25() string {
	return attachtest.Message(from, to, "big", attachtest.Part{Name: "archive.zip", Data: zipOfFiles(2000, 18<<20+512<<10)})
}

// TestInspectPeakRSS checks a 25 MiB message in a child process of this
// test binary, read from a file as from the spool, and reads the child's
// peak resident set (VmHWM) before and after: the walk streams, so the
// growth stays far below the message (the ZIP goes to a temp file).
func TestInspectPeakRSS(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector multiplies memory use; run without -race to measure")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc/self/status")
	}
	dir := t.TempDir()
	msgFile := filepath.Join(dir, "msg")
	msg := message25()
	if err := os.WriteFile(msgFile, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInspectPeakRSSChild$", "-test.v")
	cmd.Env = append(os.Environ(), "ATTACH_RSS_CHILD="+msgFile+","+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var before, after int64
	for _, l := range strings.Split(string(out), "\n") {
		if _, rest, ok := strings.Cut(l, "VmHWM-kB "); ok {
			fmt.Sscan(rest, &before, &after)
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("no measurement from the child:\n%s", out)
	}
	growth := (after - before) * 1024
	t.Logf("%d MiB message: peak RSS %d KiB before, %d KiB after: growth %.1f MiB (%.2f x the message)",
		len(msg)>>20, before, after, float64(growth)/(1<<20), float64(growth)/float64(len(msg)))
	if growth > int64(len(msg))/2 {
		t.Errorf("peak RSS grew by %d bytes, more than half the %d-byte message: not streamed", growth, len(msg))
	}
}

// TestInspectPeakRSSChild is the child of TestInspectPeakRSS.
func TestInspectPeakRSSChild(t *testing.T) {
	spec := os.Getenv("ATTACH_RSS_CHILD")
	if spec == "" {
		t.Skip("run by TestInspectPeakRSS")
	}
	files := strings.Split(spec, ",")
	in, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	lim := attach.DefaultLimits()
	lim.TempDir = files[1]
	runtime.GC()
	before := vmHWM(t)
	v, err := attach.Inspect(context.Background(), in, lim, nil)
	if err != nil || v.Action != attach.Pass || v.Entries != 2000 {
		t.Fatalf("%v %+v", err, v)
	}
	fmt.Printf("VmHWM-kB %d %d\n", before, vmHWM(t))
}

func vmHWM(t *testing.T) int64 {
	kb, err := testutil.ProcStatusKB("VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	return kb
}

// TestWriteBenchFiles writes the benchmark's messages to
// $ATTACH_BENCH_DIR, for bench/attach-clamscan.sh to give the same files
// to clamscan.
func TestWriteBenchFiles(t *testing.T) {
	dir := os.Getenv("ATTACH_BENCH_DIR")
	if dir == "" {
		t.Skip("set ATTACH_BENCH_DIR (bench/attach-clamscan.sh does)")
	}
	files := map[string]string{
		"text-4k.eml":   textMessage(),
		"zip1000.eml":   attachtest.Message(from, to, "scans", attachtest.Part{Name: "scans.zip", Type: "application/zip", Data: zipOfFiles(1000, 9<<20)}),
		"message25.eml": message25(),
	}
	for name, msg := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(msg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
