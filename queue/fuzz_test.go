package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	// Amended files (SRQ2), whole, torn, flipped, and under the other
	// magic.
	e2 := e
	e2.To = append(e2.To, "c@example.com")
	amended := buildAmendedFile(e, []byte(msg1), e2, []byte("X-A: 1\r\n"), 4)
	f.Add(amended)
	f.Add(amended[:len(amended)-1])
	f.Add(amended[:len(amended)-trailer2Len-3])
	f.Add(append([]byte("SRQ1"), amended[4:]...))
	f.Add(append([]byte("SRQ2"), valid[4:]...))
	f.Add(buildAmendedFile(e, nil, e, nil, 0))
	f.Add(buildAmendedFile(e, []byte(msg1), Envelope{}, nil, 0))
	f.Add([]byte("SRQ2 16\n{\"to\":[\"x@y.z\"]}\n\nSRQ-AMEND 16 0 0\n{\"to\":[\"x@y.z\"]}\n\nSRQ-END 0000000000000000 0000000000000020 00000000\n"))

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

		// The same bytes as the amended header of a correct file whose
		// data they are too, and with a new recipient.
		e2 := e
		e2.To = []string{"x@example.com", string(raw)}
		bodyOff := len(raw) / 2
		good = buildAmendedFile(e, raw, e2, raw, bodyOff)
		os.WriteFile(p, good, 0o600)
		st, err = readStored(p)
		if err != nil {
			t.Fatalf("correct amended file rejected: %v", err)
		}
		checkConsistent(t, good, st)
		if !st.amended || st.dataLen != int64(len(raw)) || st.bodyOff != int64(bodyOff) || st.hdrLen != int64(len(raw)) ||
			len(st.env.To) != 2 || st.size() != int64(len(raw)+len(raw)-bodyOff) {
			t.Fatalf("extents of a correct amended file: %+v", st.extent)
		}
		msg, _ := io.ReadAll(st.reader(bytes.NewReader(good)))
		if want := append(bytes.Clone(raw), raw[bodyOff:]...); !bytes.Equal(msg, want) {
			t.Fatalf("amended message %q, want %q", trunc(msg), trunc(want))
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
	amended := bytes.HasPrefix(raw, []byte("SRQ2 "))
	if nl < 0 || !(bytes.HasPrefix(raw, []byte("SRQ1 ")) || amended) {
		t.Fatalf("accepted without a header line: %q", trunc(raw))
	}
	if st.amended != amended {
		t.Fatalf("SRQ2 file read as amended %v", st.amended)
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
	if err := json.Unmarshal(raw[nl+1:envEnd], &e); err != nil {
		t.Fatalf("accepted envelope %q: %v", raw[nl+1:envEnd], err)
	}
	tlen := int64(trailerLen)
	if amended {
		tlen = trailer2Len
	}
	if st.dataLen < 0 || st.dataOff+st.dataLen+tlen > size {
		t.Fatalf("lengths do not add up: off %d + len %d + %d > %d", st.dataOff, st.dataLen, tlen, size)
	}
	tr := raw[size-tlen:]
	var dlen, alen int64
	var sum uint32
	if amended {
		_, err = fmt.Sscanf(string(tr), trailer2Fmt, &dlen, &alen, &sum)
	} else {
		_, err = fmt.Sscanf(string(tr), trailerFmt, &dlen, &sum)
	}
	if err != nil {
		t.Fatalf("accepted trailer %q: %v", tr, err)
	}
	if !bytes.HasPrefix(tr, []byte("\nSRQ-END ")) || tr[len(tr)-1] != '\n' {
		t.Fatalf("accepted trailer %q", tr)
	}
	if st.dataOff+st.dataLen+alen+tlen != size {
		t.Fatalf("lengths do not add up: off %d + len %d + amend %d + %d != %d", st.dataOff, st.dataLen, alen, tlen, size)
	}
	data := raw[st.dataOff : st.dataOff+st.dataLen]
	rec := raw[st.dataOff+st.dataLen : st.dataOff+st.dataLen+alen]
	// The checksum covers the envelope JSON (after the header line, before
	// its newline), the data and the amend record.
	ej := raw[bytes.IndexByte(raw, '\n')+1 : st.dataOff-1]
	want := crc32.Update(crc32.Update(crc32.Checksum(ej, testCRC), testCRC, data), testCRC, rec)
	if dlen != st.dataLen || want != sum {
		t.Fatalf("trailer says len %d crc %08x; envelope+data have len %d crc %08x", dlen, sum, len(data), want)
	}
	if !amended {
		if len(e.To) == 0 || len(st.env.To) == 0 {
			t.Fatalf("accepted without recipients")
		}
		return
	}
	// The amend record: its line, the envelope, the header, exactly.
	rl := bytes.IndexByte(rec[1:], '\n')
	if !bytes.HasPrefix(rec, []byte("\nSRQ-AMEND ")) || rl < 0 {
		t.Fatalf("accepted amend record %q", trunc(rec))
	}
	f := strings.Fields(string(rec[1 : rl+1]))
	if len(f) != 4 {
		t.Fatalf("accepted amend line %q", rec[:rl+2])
	}
	ae, _ := strconv.Atoi(f[1])
	ah, _ := strconv.Atoi(f[2])
	ab, _ := strconv.Atoi(f[3])
	ejStart := rl + 2
	if ae <= 0 || ejStart+ae+1+ah != len(rec) || rec[ejStart+ae] != '\n' || int64(ab) != st.bodyOff || ab > len(data) {
		t.Fatalf("amend record lengths %q, record %d octets, data %d", rec[:rl+2], len(rec), len(data))
	}
	var e2 Envelope
	if err := json.Unmarshal(rec[ejStart:ejStart+ae], &e2); err != nil || len(e2.To) == 0 || len(st.env.To) != len(e2.To) {
		t.Fatalf("accepted amended envelope %q: %v", rec[ejStart:ejStart+ae], err)
	}
	if st.hdrOff != st.dataOff+st.dataLen+alen-int64(ah) || st.hdrLen != int64(ah) {
		t.Fatalf("header extent %d+%d", st.hdrOff, st.hdrLen)
	}
}

// buildAmendedFile is the documented SRQ2 layout, built independently of
// the Writer: e and data as received, then the amend record with e2 and
// header replacing data[:bodyOff].
func buildAmendedFile(e Envelope, data []byte, e2 Envelope, header []byte, bodyOff int) []byte {
	ej, _ := json.Marshal(e)
	ej2, _ := json.Marshal(e2)
	var rec bytes.Buffer
	fmt.Fprintf(&rec, "\nSRQ-AMEND %d %d %d\n%s\n", len(ej2), len(header), bodyOff, ej2)
	rec.Write(header)
	var b bytes.Buffer
	fmt.Fprintf(&b, "SRQ2 %d\n%s\n", len(ej), ej)
	b.Write(data)
	b.Write(rec.Bytes())
	sum := crc32.Update(crc32.Update(crc32.Checksum(ej, testCRC), testCRC, data), testCRC, rec.Bytes())
	fmt.Fprintf(&b, "\nSRQ-END %016x %016x %08x\n", len(data), rec.Len(), sum)
	return b.Bytes()
}
