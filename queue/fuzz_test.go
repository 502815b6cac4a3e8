package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// FuzzReadStored writes arbitrary bytes as a spool file. readStored must
// never panic, and it may accept a file only if everything it relies on is
// consistent: the header's envelope length, a valid envelope with
// recipients, data length + trailer adding up to the file size, and the
// CRC-32C of exactly the data region equal to the trailer's.
//
// A second check builds a correct file around the same bytes (as message
// data and as a recipient address) and requires it to be accepted with the
// right extents.
func FuzzReadStored(f *testing.F) {
	e := Envelope{From: "a@example.org", To: []string{"b@example.com"}, Origin: OriginOutbound, Received: t0}
	valid := buildSpoolFile(e, []byte(msg1))
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add(valid[:len(valid)/2])
	flipped := bytes.Clone(valid)
	flipped[len(flipped)-trailerLen-3] ^= 1
	f.Add(flipped)
	f.Add(buildSpoolFile(e, nil))
	f.Add(buildSpoolFile(Envelope{From: "a@example.org"}, []byte("no rcpt\r\n")))
	f.Add([]byte{})
	f.Add([]byte("SRQ1 "))
	f.Add([]byte("SRQ1 \n"))
	f.Add([]byte("SRQ1 -5\n"))
	f.Add([]byte("SRQ1 99999999999999999999\n"))
	f.Add([]byte("SRQ1 2\n{}\n\nSRQ-END 0000000000000000 00000000\n"))
	f.Add([]byte("SRQ1 4\nnull\n\nSRQ-END 0000000000000000 00000000\n"))
	f.Add([]byte("SRQ1 16\n{\"to\":[\"x@y.z\"]}\n\nSRQ-END ffffffffffffffff 00000000\n"))
	f.Add([]byte("SRQ1 16\n{\"to\":[\"x@y.z\"]}\n\nSRQ-END 7fffffffffffffff 00000000\n"))

	f.Fuzz(func(t *testing.T, raw []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if st, err := readStored(p); err == nil {
			checkConsistent(t, raw, st)
		}

		// The same bytes as data of a correct file.
		e := Envelope{From: "a@example.org", To: []string{string(raw)}, Origin: OriginInbound, Received: t0}
		good := buildSpoolFile(e, raw)
		os.WriteFile(p, good, 0o600)
		st, err := readStored(p)
		if err != nil {
			t.Fatalf("correct file rejected: %v", err)
		}
		checkConsistent(t, good, st)
		if st.dataLen != int64(len(raw)) || len(st.env.To) != 1 {
			t.Fatalf("extents of a correct file: len %d, %d rcpts", st.dataLen, len(st.env.To))
		}
	})
}

func buildSpoolFile(e Envelope, data []byte) []byte {
	ej, _ := json.Marshal(e)
	var b bytes.Buffer
	fmt.Fprintf(&b, "SRQ1 %d\n%s\n", len(ej), ej)
	b.Write(data)
	fmt.Fprintf(&b, "\nSRQ-END %016x %08x\n", len(data), crc32.Update(crc32.Checksum(ej, testCRC), testCRC, data))
	return b.Bytes()
}

// checkConsistent re-derives, independently of readStored where it can,
// what an accepted file must satisfy.
func checkConsistent(t *testing.T, raw []byte, st *stored) {
	t.Helper()
	size := int64(len(raw))
	nl := bytes.IndexByte(raw, '\n')
	if nl < 0 || !bytes.HasPrefix(raw, []byte("SRQ1 ")) {
		t.Fatalf("accepted without a header line: %q", trunc(raw))
	}
	elen, err := strconv.Atoi(string(raw[5:nl]))
	if err != nil || elen <= 0 || elen > maxEnvelope {
		t.Fatalf("accepted with envelope length %q", raw[5:nl])
	}
	envEnd := int64(nl + 1 + elen)
	if envEnd >= size || raw[envEnd] != '\n' || st.dataOff != envEnd+1 {
		t.Fatalf("data offset %d, envelope ends at %d", st.dataOff, envEnd)
	}
	var e Envelope
	if err := json.Unmarshal(raw[nl+1:envEnd], &e); err != nil || len(e.To) == 0 {
		t.Fatalf("accepted envelope %q: %v", raw[nl+1:envEnd], err)
	}
	if st.dataLen < 0 || st.dataOff+st.dataLen+trailerLen != size {
		t.Fatalf("lengths do not add up: off %d + len %d + %d != %d", st.dataOff, st.dataLen, trailerLen, size)
	}
	tr := raw[size-trailerLen:]
	var dlen int64
	var sum uint32
	if _, err := fmt.Sscanf(string(tr), trailerFmt, &dlen, &sum); err != nil {
		t.Fatalf("accepted trailer %q: %v", tr, err)
	}
	if !bytes.HasPrefix(tr, []byte("\nSRQ-END ")) || tr[len(tr)-1] != '\n' {
		t.Fatalf("accepted trailer %q", tr)
	}
	data := raw[st.dataOff : st.dataOff+st.dataLen]
	// The checksum covers the envelope JSON (after the header line, before
	// its newline) and the data.
	ej := raw[bytes.IndexByte(raw, '\n')+1 : st.dataOff-1]
	want := crc32.Update(crc32.Checksum(ej, testCRC), testCRC, data)
	if dlen != st.dataLen || want != sum {
		t.Fatalf("trailer says len %d crc %08x; envelope+data have len %d crc %08x", dlen, sum, len(data), want)
	}
}
