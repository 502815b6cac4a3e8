package milter

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzMilterReplies drives the path from what a milter sends at end of
// message to the Result and the bytes Apply writes: a raw milter (all
// actions and steps negotiated) answers the end of message with the fuzzed
// bytes. Whatever it sends, Check must not panic or hang, a refusal must
// carry a consistent, printable reply, and an accepted message must keep
// a well-formed header and the right body.
func FuzzMilterReplies(f *testing.F) {
	seeds := [][]byte{
		packet('a'),
		packet('c'),
		packet('r'),
		packet('t'),
		packet('d'),
		packet('y', "554 5.7.1 Gtube pattern\x00"),
		packet('y', "550-5.7.1 a\r\n550 5.7.1 b\x00"),
		cat(packet('h', "X-Spamd-Result\x00default: False\n\tA(0.00)\x00"), packet('a')),
		cat(packet('i', "\x00\x00\x00\x01Authentication-Results\x00mx; none\x00"), packet('a')),
		cat(packet('m', "\x00\x00\x00\x01Subject\x00\x00"), packet('m', "\x00\x00\x00\x02To\x00x\x00"), packet('a')),
		cat(packet('b', "new\nbody\r\n"), packet('b', "more"), packet('a')),
		cat(packet('+', "<a@b>\x00"), packet('2', "<c@d>\x00NOTIFY=NEVER\x00"), packet('-', "<bob@example.net>\x00"), packet('e', "<x@y>\x00SIZE=1\x00"), packet('a')),
		cat(packet('p'), packet('q', "held\x00"), packet('a')),
		{0, 0, 0, 0},
		{0, 0, 0, 1},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	var eob atomic.Pointer[[]byte]
	addr := (&rawMilter{version: 6, actions: 0x1ff, eobPtr: &eob}).start(f)
	c, err := NewChain([]Config{{Name: "fz", Address: addr, ReadTimeout: 2 * time.Second}}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		eob.Store(&reply)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := c.Check(ctx, testEnvelope(), opener(testMessage, nil))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		switch res.Action {
		case Accept:
			checkApplied(t, res)
			return
		case Reject:
			if res.Code < 500 || res.Code > 599 || res.Enhanced[0] != '5' {
				t.Fatalf("reject with %d %s", res.Code, res.Enhanced)
			}
		case Tempfail:
			if res.Code < 400 || res.Code > 499 || res.Enhanced[0] != '4' {
				t.Fatalf("tempfail with %d %s", res.Code, res.Enhanced)
			}
		default:
			t.Fatalf("action %v", res.Action)
		}
		if res.Milter != "fz" {
			t.Fatalf("milter %q", res.Milter)
		}
		for i := 0; i < len(res.Text); i++ {
			if c := res.Text[i]; (c < ' ' && c != '\n') || c >= 0x7f {
				t.Fatalf("unsafe text %q", res.Text)
			}
		}
	})
}

func checkApplied(t *testing.T, res *Result) {
	var out bytes.Buffer
	if err := res.Apply(&out, strings.NewReader(testMessage)); err != nil {
		t.Fatal(err)
	}
	orig, _ := parseAll(t, testMessage)
	wantFields, body := applyMods(orig.fields, res.Mods)
	br := bufio.NewReader(&out)
	h, err := readHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.fields) != len(wantFields) || len(h.bodyStart) != 0 {
		t.Fatalf("Apply wrote %d fields (want %d), body start %q", len(h.fields), len(wantFields), h.bodyStart)
	}
	rest, _ := io.ReadAll(br)
	if body == nil {
		body = []byte("Hello Bob,\r\n\r\nthis is the body.\r\n")
	}
	if bytes.Count(rest, []byte("\n")) != bytes.Count(rest, []byte("\r\n")) || !bytes.Equal(bytes.ReplaceAll(rest, []byte("\r\n"), nil), bytes.ReplaceAll(bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), nil), []byte("\n"), nil), []byte("\r"), nil)) {
		t.Fatalf("body %q from replacement %q", rest, body)
	}
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
