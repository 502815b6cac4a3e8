package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

var errDiffRead = errors.New("test: connection broke")

// chunkReader hands out its data in the sizes chunks names (cycling; 0 is a
// read of nothing, never twice in a row, so that readers make progress),
// then ends with err: the network's way of splitting a message across
// reads, and its ways of ending.
type chunkReader struct {
	data   []byte
	chunks []byte
	i      int
	err    error
	empty  bool // the last read returned nothing
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, c.err
	}
	k := 4096
	if len(c.chunks) > 0 {
		k = int(c.chunks[c.i%len(c.chunks)])
		c.i++
	}
	if k == 0 && c.empty {
		k = 1
	}
	c.empty = k == 0
	if k > len(p) {
		k = len(p)
	}
	if k > len(c.data) {
		k = len(c.data)
	}
	n := copy(p, c.data[:k])
	c.data = c.data[n:]
	return n, nil
}

// diffReadSize turns a fuzzer byte into a Read size from 0 to 55 KiB: small
// sizes byte by byte, large ones in KiB steps.
func diffReadSize(s byte) int {
	if s < 200 {
		return int(s)
	}
	return int(s-199) * 1024
}

// FuzzDataReaderDiff holds dataReader.Read (runs copied from the buffer,
// patch 10) to refDataReader.Read (the byte-wise state machine it
// replaced): for any input, split into any reads by the network and by the
// caller, with any buffer size, with and without the size limit, both
// return the same bytes, the same counts and the same error values on
// every call, consume the same bytes (what follows the end marker is the
// next command) and leave the bufio.Reader in the same state.
func FuzzDataReaderDiff(f *testing.F) {
	long := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n", 60)
	for _, s := range []string{
		"a\r\n.\r\nNEXT", "a\r\n..b\r\n.\r\n", "a\r\r\n.\r\nNEXT", "a\r\r\r\n.\r\n",
		"a\r\r\n..b\r\n.\r\n", ".\rX\r\n.\r\n", ".\r\r\n.\r\n", "a\r\n.\r.\r\n.\r\n",
		"a\n.\r\nb\r\n.\r\n", "\r\n.\r\n", ".\r\n", ".\r", ".", "a\r", "a\r\n.\r",
		"a\r\n..\r\n.\r\nQUIT\r\n", "..\r\n.\r\n", "a\n.\nb\r\n.\r\n", "\r\r\r\n.\r\n",
		".\r.\r\n.\r\n", "a\r\n.\rb\r\n.\r\nRSET\r\n", "\n.\r\n", "x\r\n.\n.\r\n",
		long + ".\r\n", long + "..dot\r\n" + long + ".\r\nMAIL FROM:<a@b>\r\n", long,
	} {
		for _, mode := range []uint8{0, 1, 2, 4, 7} {
			f.Add([]byte(s), []byte{1}, []byte{7, 0, 200}, uint16(0), uint32(5), mode)
			f.Add([]byte(s), []byte{255, 3}, []byte{}, uint16(4080), uint32(len(s)), mode)
			f.Add([]byte(s), []byte{2, 1, 250}, []byte{1, 2, 3}, uint16(100), uint32(len(s)/2), mode)
		}
	}
	f.Fuzz(func(t *testing.T, in, sizes, chunks []byte, bufSize uint16, limit uint32, mode uint8) {
		data := in
		if mode&1 != 0 { // end the message properly, then the next command
			data = append(append([]byte{}, in...), "\r\n.\r\nQUIT\r\n"...)
		}
		end := io.EOF
		if mode&2 != 0 {
			end = errDiffRead
		}
		size := 16 + int(bufSize)%8192
		oldBR := bufio.NewReaderSize(&chunkReader{data: data, chunks: chunks, err: end}, size)
		newBR := bufio.NewReaderSize(&chunkReader{data: data, chunks: chunks, err: end}, size)
		old := &refDataReader{r: oldBR}
		cur := &dataReader{r: newBR}
		if mode&4 != 0 {
			old.limited, old.n = true, int64(limit)%int64(len(data)+8)
			cur.limited, cur.n = old.limited, old.n
		}
		// Read as a backend would, until an error; then as conn.go does
		// after Data returns: limit off, read to the end.
		phase := 0
		for step := 0; step < 4*len(data)+64; step++ {
			sz := 4096
			if len(sizes) > 0 {
				sz = diffReadSize(sizes[step%len(sizes)])
			}
			ob, nb := bytes.Repeat([]byte{0xA5}, sz), bytes.Repeat([]byte{0xA5}, sz)
			on, oerr := old.Read(ob)
			nn, nerr := cur.Read(nb)
			if on != nn || oerr != nerr || !bytes.Equal(ob, nb) {
				t.Fatalf("read %d (%d bytes): old %d %q %v, new %d %q %v",
					step, sz, on, ob[:on], oerr, nn, nb[:nn], nerr)
			}
			if oerr != nil {
				if phase == 1 || oerr != ErrDataTooLarge {
					break
				}
				phase = 1
				old.limited, cur.limited = false, false
			}
		}
		if old.state != cur.state || old.n != cur.n {
			t.Fatalf("state old %d n %d, new %d n %d", old.state, old.n, cur.state, cur.n)
		}
		oerr, nerr := oldBR.UnreadByte(), newBR.UnreadByte()
		if (oerr == nil) != (nerr == nil) {
			t.Fatalf("UnreadByte after DATA: old %v, new %v", oerr, nerr)
		}
		orest, oerr := io.ReadAll(oldBR)
		nrest, nerr := io.ReadAll(newBR)
		if !bytes.Equal(orest, nrest) || oerr != nerr {
			t.Fatalf("left unread: old %q %v, new %q %v", orest, oerr, nrest, nerr)
		}
	})
}
