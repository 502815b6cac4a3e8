package encrypt_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"

	"securerelay/encrypt"
	"securerelay/internal/testutil"
)

// sizedMessage is a message of about size bytes as a ticket system sends
// it: a short text and a base64 attachment in 76-column lines, CRLF.
func sizedMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: tickets@sender.example\r\nTo: " + addrAlice + "\r\nSubject: Report\r\n" +
		"Date: Mon, 07 Dec 2026 10:00:00 +0100\r\nMessage-ID: <bench@sender.example>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachment.\r\n" +
		"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	raw := make([]byte, 57)
	for b.Len() < size-100 {
		rand.Read(raw)
		b.WriteString(base64.StdEncoding.EncodeToString(raw) + "\r\n")
	}
	b.WriteString("--b--\r\n")
	return b.Bytes()
}

var benchSizes = []struct {
	name string
	size int
}{{"4KiB", 4 << 10}, {"1MiB", 1 << 20}, {"25MiB", 25 << 20}}

// benchRecipients: the RSA-3072 and the Curve25519 recipient.
func benchRecipients(b *testing.B) []struct {
	name string
	fpr  string
	key  *encrypt.Key
} {
	k := getKeys(b)
	return []struct {
		name string
		fpr  string
		key  *encrypt.Key
	}{
		{"rsa3072", k.bob, keyFor(b, k, k.bob)},
		{"cv25519", k.alice, keyFor(b, k, k.alice)},
	}
}

// BenchmarkEncrypt is Encrypt's throughput (MB/s) and rate (msgs/s).
func BenchmarkEncrypt(b *testing.B) {
	for _, r := range benchRecipients(b) {
		for _, s := range benchSizes {
			msg := sizedMessage(s.size)
			b.Run(r.name+"/"+s.name, func(b *testing.B) {
				b.SetBytes(int64(len(msg)))
				for b.Loop() {
					if err := encrypt.Encrypt(io.Discard, bytes.NewReader(msg), []*encrypt.Key{r.key}, encrypt.MessageOptions{}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkSideBySide4KiB runs, in the same process and run, Encrypt and
// what python-gnupg based filters do: one "gpg --encrypt" process per
// message (armoured, to the same key, trust checks off as such filters
// configure them).
func BenchmarkSideBySide4KiB(b *testing.B) {
	k := getKeys(b)
	msg := sizedMessage(4 << 10)
	for _, r := range benchRecipients(b) {
		b.Run("relay/"+r.name, func(b *testing.B) {
			for b.Loop() {
				if err := encrypt.Encrypt(io.Discard, bytes.NewReader(msg), []*encrypt.Key{r.key}, encrypt.MessageOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
		b.Run("gpg-process/"+r.name, func(b *testing.B) {
			for b.Loop() {
				cmd := k.home.cmd(bytes.NewReader(msg), "--trust-model", "always", "--armor", "--encrypt", "-r", r.fpr)
				cmd.Stdout = io.Discard
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// ---- peak memory while encrypting one 25 MiB message ----

// TestEncryptPeakRSS runs Encrypt on a 25 MiB message (spool file in,
// file out, as delivery does) in a child process of this test binary and
// reads the child's peak resident set (VmHWM in /proc/self/status) before
// and after: the growth must stay under three times the message, which a
// non-streaming implementation (message, ciphertext and armour in memory)
// exceeds.
func TestEncryptPeakRSS(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector multiplies memory use; run without -race to measure")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc/self/status")
	}
	k := getKeys(t)
	dir := t.TempDir()
	msgFile := filepath.Join(dir, "msg")
	msg := sizedMessage(25 << 20)
	writeFile(t, msgFile, msg)
	keyFile := filepath.Join(dir, "key.asc")
	writeFile(t, keyFile, k.armored(t, k.bob))
	cmd := exec.Command(os.Args[0], "-test.run=^TestEncryptPeakRSSChild$", "-test.v")
	cmd.Env = append(os.Environ(), "ENCRYPT_RSS_CHILD="+msgFile+","+keyFile+","+filepath.Join(dir, "out"))
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
	t.Logf("25 MiB message: peak RSS %d KiB before, %d KiB after encrypting: growth %.1f MiB (%.2f x the message)",
		before, after, float64(growth)/(1<<20), float64(growth)/float64(len(msg)))
	if growth > 3*int64(len(msg)) {
		t.Errorf("peak RSS grew by %d bytes, more than 3x the %d-byte message", growth, len(msg))
	}
}

// TestEncryptPeakRSSChild is the child of TestEncryptPeakRSS.
func TestEncryptPeakRSSChild(t *testing.T) {
	spec := os.Getenv("ENCRYPT_RSS_CHILD")
	if spec == "" {
		t.Skip("run by TestEncryptPeakRSS")
	}
	files := strings.Split(spec, ",")
	kb, err := os.ReadFile(files[1])
	if err != nil {
		t.Fatal(err)
	}
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(kb))
	if err != nil {
		t.Fatal(err)
	}
	key := &encrypt.Key{Entity: el[0], Fingerprint: encrypt.Fingerprint(el[0])}
	in, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(files[2])
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	runtime.GC()
	before := vmHWM(t)
	if err := encrypt.Encrypt(out, in, []*encrypt.Key{key}, encrypt.MessageOptions{}); err != nil {
		t.Fatal(err)
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
