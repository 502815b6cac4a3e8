package attach_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"securerelay/attach"
	"securerelay/attach/attachtest"
)

func fuzzLimits(t *testing.T) attach.Limits {
	return attach.Limits{MaxDepth: 4, MaxEntries: 200, MaxBytes: 8 << 20, MaxRatio: 100, Timeout: 5 * time.Second, TempDir: t.TempDir()}
}

// checkVerdict: whatever the input, the walk ends within its limits,
// with a verdict that names what it refuses.
func checkVerdict(t *testing.T, v attach.Verdict, err error, lim attach.Limits) {
	t.Helper()
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if v.Action != attach.Pass && (v.Finding.Class == "" || v.Finding.Reason == "") {
		t.Fatalf("verdict %q without a finding: %+v", v.Action, v)
	}
	// One read may overshoot the byte limit before it is noticed.
	if v.Bytes > lim.MaxBytes+1<<20 {
		t.Fatalf("decompressed %d bytes, limit %d", v.Bytes, lim.MaxBytes)
	}
	if v.Entries > lim.MaxEntries+1 {
		t.Fatalf("%d entries, limit %d", v.Entries, lim.MaxEntries)
	}
}

// FuzzInspectMessage fuzzes the MIME walk: headers, boundaries, names,
// encodings.
func FuzzInspectMessage(f *testing.F) {
	pdf := attachtest.PDF()
	for _, seed := range []string{
		"From: <a@b.example>\r\n\r\nhello\r\n",
		attachtest.Message(from, to, "s", attachtest.Part{Name: "a.pdf", Data: pdf}),
		attachtest.Message(from, to, "s", attachtest.Part{Name: "Résumé\u202e.pdf.exe", Data: attachtest.PE()}),
		attachtest.Message(from, to, "s", attachtest.Part{Header: "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*0*=iso-8859-1''R%E9; filename*1*=sum%E9.js\r\n", Data: pdf}),
		attachtest.Message(from, to, "s", attachtest.Part{Header: "Content-Type: text/plain; name=\"=?UTF-8?Q?a=2Eexe?=\"\r\n", Data: pdf}),
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\nContent-Disposition: attachment; filename=a.js\r\n\r\nx\r\n--y--\r\n--x--\r\n",
		"X-Securerelay-Attachment: x\r\nbad line\r\n x-securerelay-attachment: y\r\nX-SECURERELAY-ATTACHMENT : z\r\n\r\n",
		"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: application/pdf; name=\"a.pdf\"; name=\"b.exe\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nMZ=00=00\r\n--x",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		lim := fuzzLimits(t)
		v, err := inspectWatched(bytes.NewReader(msg), lim)
		checkVerdict(t, v, err, lim)
		// Every sender-written field counted is one the inbound role
		// can remove.
		if n, err := attach.StripForged(io.Discard, bytes.NewReader(msg)); err != nil || v.Forged > n {
			t.Fatalf("Inspect counts %d forged fields, StripForged removes %d (%v)", v.Forged, n, err)
		}
	})
}

// FuzzInspectArchive fuzzes the archive inspection: the bytes are one
// attachment's content, so that ZIP, gzip, bzip2, tar and OLE parsing
// see them directly.
func FuzzInspectArchive(f *testing.F) {
	pe := attachtest.PE()
	f.Add(goZipF(map[string][]byte{"a.txt": []byte("hello"), "b/c.exe": pe}))
	f.Add(goZipF(map[string][]byte{"inner.zip": goZipF(map[string][]byte{"x.pdf": attachtest.PDF()})}))
	f.Add(attachtest.OverlapBomb(3, 2048))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Name = "report.pdf"
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "a/setup.exe", Mode: 0o644, Size: int64(len(pe)), Typeflag: tar.TypeReg})
	tw.Write(pe)
	tw.Close()
	zw.Close()
	f.Add(gz.Bytes())
	ole := make([]byte, 2048)
	copy(ole, "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
	ole[0x1e] = 9
	ole[0x30] = 1
	f.Add(ole)
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := fuzzLimits(t)
		msg := attachtest.Message(from, to, "fuzz", attachtest.Part{Name: "a.zip", Data: data})
		v, err := inspectWatched(strings.NewReader(msg), lim)
		checkVerdict(t, v, err, lim)
	})
}

// inspectWatched runs Inspect and panics, with every goroutine's stack,
// when it outlasts its own time limit by far: a hang is a crash the
// fuzzer keeps.
func inspectWatched(r io.Reader, lim attach.Limits) (attach.Verdict, error) {
	type result struct {
		v   attach.Verdict
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := attach.Inspect(context.Background(), r, lim, nil)
		done <- result{v, err}
	}()
	select {
	case res := <-done:
		return res.v, res.err
	case <-time.After(lim.Timeout + 10*time.Second):
		buf := make([]byte, 1<<20)
		panic("Inspect hangs past its time limit:\n" + string(buf[:runtime.Stack(buf, true)]))
	}
}

func goZipF(files map[string][]byte) []byte {
	t := &testing.T{}
	return goZip(t, files)
}
