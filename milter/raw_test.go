package milter

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawMilter is a milter written against the wire format directly, to send
// what go-milter's server never would. It answers every event with
// "continue" and, at end of message, writes eob verbatim and closes.
type rawMilter struct {
	version, actions, protocol uint32
	optnegExtra                []byte // appended to the OPTNEG reply
	eob                        []byte
	eobPtr                     *atomic.Pointer[[]byte] // if set, replaces eob (fuzzing)
}

func packet(code byte, data ...string) []byte {
	payload := []byte{code}
	for _, d := range data {
		payload = append(payload, d...)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	return append(b, payload...)
}

func (r *rawMilter) start(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(c)
		}
	}()
	return "inet:" + ln.Addr().String()
}

func (r *rawMilter) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || n > 1<<20 {
			return
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		switch p[0] {
		case 'O':
			var neg []byte
			neg = binary.BigEndian.AppendUint32(neg, r.version)
			neg = binary.BigEndian.AppendUint32(neg, r.actions)
			neg = binary.BigEndian.AppendUint32(neg, r.protocol)
			neg = append(neg, r.optnegExtra...)
			c.Write(packet('O', string(neg)))
		case 'D', 'A':
		case 'Q':
			return
		case 'E':
			if r.eobPtr != nil {
				c.Write(*r.eobPtr.Load())
			} else {
				c.Write(r.eob)
			}
			return
		default:
			c.Write(packet('c'))
		}
	}
}

// A milter that breaks the protocol fails like an unreachable one: the
// result follows OnError (tempfail here) and names the milter, and the
// conversation ends at once instead of waiting or allocating.
func TestProtocolViolations(t *testing.T) {
	accept := packet('a')
	cases := []struct {
		name string
		m    rawMilter
	}{
		{"zero-length packet", rawMilter{eob: []byte{0, 0, 0, 0}}},
		{"400 MB packet announced", rawMilter{eob: []byte{0x18, 0, 0, 0, 'b'}}},
		{"unknown reply code", rawMilter{eob: packet('Z')}},
		{"malformed reply code", rawMilter{eob: packet('y', "hello\x00")}},
		{"2xx reply code", rawMilter{eob: packet('y', "250 2.0.0 fine\x00")}},
		{"reply lines with different codes", rawMilter{eob: packet('y', "550-5.7.1 a\r\n451 4.7.1 b\x00")}},
		{"skip at end of message", rawMilter{eob: packet('s')}},
		{"header add not negotiated", rawMilter{actions: 0, eob: append(packet('h', "X-A\x00b\x00"), accept...)}},
		{"body replacement not negotiated", rawMilter{actions: 0x01, eob: append(packet('b', "new"), accept...)}},
		{"recipient add not negotiated", rawMilter{actions: 0x01, eob: append(packet('+', "<x@y>\x00"), accept...)}},
		{"invalid header name", rawMilter{actions: 0x1ff, eob: append(packet('h', "Bad Name\x00v\x00"), accept...)}},
		{"truncated header change", rawMilter{actions: 0x1ff, eob: append(packet('m', "\x00\x00"), accept...)}},
		{"connection closed mid-packet", rawMilter{eob: []byte{0, 0, 0, 9, 'h', 'X'}}},
		{"connection closed without verdict", rawMilter{actions: 0x1ff, eob: packet('h', "X-A\x00b\x00")}},
		{"protocol version 7", rawMilter{version: 7}},
		{"protocol version 1", rawMilter{version: 1}},
		{"action not offered", rawMilter{actions: 0x400}},
		{"protocol step not offered", rawMilter{protocol: 1 << 24}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			if m.version == 0 {
				m.version = 6
			}
			c := newTestChain(t, Config{Name: "raw", Address: m.start(t), ReadTimeout: 5 * time.Second})
			start := time.Now()
			res := check(t, c, testEnvelope(), testMessage)
			if el := time.Since(start); el > 2*time.Second {
				t.Errorf("took %v", el)
			}
			want := Result{Action: Tempfail, Code: 451, Enhanced: "4.7.1",
				Text: "Content scanner raw unavailable, try again later", Milter: "raw"}
			if res.Action != want.Action || res.Code != want.Code || res.Text != want.Text || res.Milter != want.Milter || len(res.Mods) != 0 {
				t.Errorf("got %+v\nwant %+v", *res, want)
			}
		})
	}
}

// A body replacement past Chain.MaxBodyReplacement is a violation, and the
// milter's byte budget stops it before it is all in memory.
func TestBodyReplacementLimit(t *testing.T) {
	chunk := strings.Repeat("z", 60000)
	var eob []byte
	for range 40 { // 2.4 MB
		eob = append(eob, packet('b', chunk)...)
	}
	eob = append(eob, packet('a')...)
	m := &rawMilter{version: 6, actions: 0x1ff, eob: eob}
	addr := m.start(t)

	c := newTestChain(t, Config{Name: "raw", Address: addr})
	c.MaxBodyReplacement = 100_000
	if res := check(t, c, testEnvelope(), testMessage); res.Action != Tempfail || res.Milter != "raw" {
		t.Errorf("over the limit: %+v", res)
	}
	c.MaxBodyReplacement = 3 << 20
	res := check(t, c, testEnvelope(), testMessage)
	if res.Action != Accept || len(res.Mods) != 1 || len(res.Mods[0].Body) != 40*60000 {
		t.Fatalf("under the limit: action %v, %d mods", res.Action, len(res.Mods))
	}
	var out bytes.Buffer
	if err := res.Apply(&out, strings.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "\r\n\r\n"+strings.Repeat(chunk, 40)) {
		t.Errorf("replaced body not applied")
	}
}

// A milter that asks for its own macros (SMFIF_SETSYMLIST) gets them, and
// a milter that asks nothing still gets through.
func TestSymList(t *testing.T) {
	var extra []byte
	extra = binary.BigEndian.AppendUint32(extra, 5) // end of message
	extra = append(extra, "i {rcpt_addr}\x00"...)
	m := &rawMilter{version: 6, actions: 0x100, optnegExtra: extra, eob: packet('a')}
	c := newTestChain(t, Config{Address: m.start(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Check(ctx, testEnvelope(), opener(testMessage, nil))
	if err != nil || res.Action != Accept {
		t.Errorf("%+v %v", res, err)
	}
}
