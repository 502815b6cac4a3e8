package milter

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"securerelay/internal/testutil"
)

// The benchmarks talk to a trivial milter (go-milter's NoOpMilter: it
// accepts everything) in a child process, so that the allocation and
// memory figures are the client's alone. Mode "replies" answers every
// event (like clamav-milter); "noreply" negotiates SMFIP_NR_* and answers
// only the end of message (like rspamd).
const trivialEnv = "SECURERELAY_MILTER_TRIVIAL"

func TestMain(m *testing.M) {
	if mode := os.Getenv(trivialEnv); mode != "" {
		runTrivialMilter(mode)
		return
	}
	code := m.Run()
	peers.Close()
	os.Exit(code)
}

func runTrivialMilter(mode string) {
	var proto gomilter.OptProtocol
	if mode == "noreply" {
		proto = gomilter.OptNoReplies
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }),
		gomilter.WithProtocols(proto))
	go srv.Serve(ln) //nolint:errcheck
	fmt.Println(ln.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent closes the pipe or exits
	os.Exit(0)
}

func startTrivial(tb testing.TB, mode string) string {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), trivialEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("trivial milter: %v", err)
	}
	return "inet:" + strings.TrimSpace(line)
}

// synthMessage is a message of exactly size bytes made up on the fly, so
// that a test's source messages take no memory of their own.
type synthMessage struct {
	off, size int64
}

const synthHeader = "From: Alice <alice@sender.example>\r\nTo: bob@example.net\r\n" +
	"Subject: load\r\nMessage-ID: <1@check.sender.example>\r\n\r\n"

var synthBlock = func() []byte {
	line := "0123456789 the quick brown fox jumps over the lazy dog 0123456789 abcdef\r\n"
	return bytes.Repeat([]byte(line), 1024)
}()

func newSynth(size int64) *synthMessage { return &synthMessage{size: size} }

func (s *synthMessage) Read(p []byte) (int, error) {
	if s.off >= s.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.size-s.off)]
	hdrLen := int64(len(synthHeader))
	n := 0
	for n < len(p) {
		var k int
		if s.off < hdrLen {
			k = copy(p[n:], synthHeader[s.off:])
		} else {
			k = copy(p[n:], synthBlock[(s.off-hdrLen)%int64(len(synthBlock)):])
		}
		n += k
		s.off += int64(k)
	}
	return n, nil
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func sizeName(n int64) string {
	if n >= 1<<20 {
		return strconv.FormatInt(n>>20, 10) + "MiB"
	}
	return strconv.FormatInt(n>>10, 10) + "KiB"
}

// BenchmarkCheck: one whole conversation per message against the trivial
// milter. src-B/op is what was read from the message source, sock-B/op
// what was written to the milter socket (the body plus the protocol).
func BenchmarkCheck(b *testing.B) {
	for _, mode := range []string{"replies", "noreply"} {
		addr := startTrivial(b, mode)
		for _, size := range []int64{1 << 10, 1 << 20, 20 << 20} {
			b.Run(mode+"/"+sizeName(size), func(b *testing.B) {
				c, err := NewChain([]Config{{Name: "trivial", Address: addr}}, nil)
				if err != nil {
					b.Fatal(err)
				}
				var sent, src atomic.Int64
				c.observe = func(s, _ int64) { sent.Add(s) }
				env := testEnvelope()
				ctx := context.Background()
				open := func() (io.Reader, error) { return countingReader{newSynth(size), &src}, nil }
				b.SetBytes(size)
				b.ReportAllocs()
				n := 0
				for b.Loop() {
					res, err := c.Check(ctx, env, open)
					if err != nil || res.Action != Accept {
						b.Fatalf("%+v %v", res, err)
					}
					n++
				}
				b.ReportMetric(float64(src.Load())/float64(n), "src-B/op")
				b.ReportMetric(float64(sent.Load())/float64(n), "sock-B/op")
			})
		}
	}
}

// TestConcurrentRSS measures the process's resident memory while 20
// messages of 20 MiB each are scanned at once by the trivial milter (in
// its own process). The messages are generated on the fly, so what grows
// is the client's own memory: per conversation a 64 KiB chunk buffer, a
// 16 KiB read buffer and socket buffers. The bound (well below the 400 MiB
// the messages add up to) catches a change that buffers whole messages.
func TestConcurrentRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 400 MiB over loopback")
	}
	addr := startTrivial(t, "replies")
	c := newTestChain(t, Config{Name: "trivial", Address: addr})
	const n, size = 20, 20 << 20
	runtime.GC()
	// Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Logf("cannot reset peak RSS (%v); the peak includes earlier tests", err)
	}
	base := procStatus(t, "VmRSS")
	var sampled atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				if v := procStatus(t, "VmRSS"); v > sampled.Load() {
					sampled.Store(v)
				}
			}
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Check(context.Background(), testEnvelope(), func() (io.Reader, error) { return newSynth(size), nil })
			if err == nil && res.Action != Accept {
				err = fmt.Errorf("result %+v", res)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	peak := procStatus(t, "VmHWM")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("%d concurrent %d MiB messages in %v: RSS before %.1f MiB, peak %.1f MiB (sampled %.1f MiB), growth %.1f MiB; Go heap now %.1f MiB",
		n, size>>20, time.Since(start).Round(time.Millisecond), mib(base), mib(peak), mib(sampled.Load()), mib(peak-base), float64(ms.HeapInuse)/(1<<20))
	if growth := peak - base; growth > 150<<20 {
		t.Errorf("RSS grew by %.1f MiB for %d concurrent messages", mib(growth), n)
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(t testing.TB, key string) int64 {
	kb, err := testutil.ProcStatusKB(key)
	if err != nil {
		t.Skip(err)
	}
	return kb << 10
}
