package milter

import (
	"bufio"
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
)

func parseAll(t testing.TB, msg string) (*header, string) {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(msg), 16)
	h, err := readHeader(br)
	if err != nil {
		t.Fatalf("readHeader(%q): %v", msg, err)
	}
	rest, _ := io.ReadAll(br)
	return h, string(rest)
}

func TestReadHeader(t *testing.T) {
	cases := []struct {
		name      string
		msg       string
		fields    []string // name + milter value
		sep       string
		bodyStart string
	}{
		{"plain", "A: 1\r\nB:2\r\n\r\nbody", []string{"A=1", "B=2"}, "\r\n", ""},
		{"folded", "A: 1\r\n 2\r\n\t3\r\nB: x\r\n\r\n", []string{"A=1\n 2\n\t3", "B=x"}, "\r\n", ""},
		{"space before colon", "Subject : hi\r\n\r\n", []string{"Subject=hi"}, "\r\n", ""},
		{"empty value", "X-Empty:\r\n\r\n", []string{"X-Empty="}, "\r\n", ""},
		{"lf only", "A: 1\nB: 2\n\nbody\n", []string{"A=1", "B=2"}, "\n", ""},
		{"no body", "A: 1\r\n", []string{"A=1"}, "", ""},
		{"eof inside field", "A: 1\r\nB: 2", []string{"A=1", "B=2"}, "", ""},
		{"not a field ends header", "A: 1\r\nthis is body\r\nmore\r\n", []string{"A=1"}, "", "this is body\r\n"},
		{"leading continuation", " x\r\nA: 1\r\n\r\n", nil, "", " x\r\n"},
		{"empty message", "", nil, "", ""},
		{"only separator", "\r\nbody", nil, "\r\n", ""},
		{"long line", "A: " + strings.Repeat("v", 100) + "\r\n\r\n", []string{"A=" + strings.Repeat("v", 100)}, "\r\n", ""},
		{"colon in value", "A: b:c\r\n\r\n", []string{"A=b:c"}, "\r\n", ""},
		{"8bit and control", "X-Q: caf\xc3\xa9\x01\r\n\r\n", []string{"X-Q=caf\xc3\xa9\x01"}, "\r\n", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, rest := parseAll(t, tc.msg)
			var got []string
			for _, f := range h.fields {
				got = append(got, f.name()+"="+f.milterValue(false))
			}
			if !reflect.DeepEqual(got, tc.fields) {
				t.Errorf("fields %q, want %q", got, tc.fields)
			}
			if string(h.sep) != tc.sep || string(h.bodyStart) != tc.bodyStart {
				t.Errorf("sep %q bodyStart %q, want %q %q", h.sep, h.bodyStart, tc.sep, tc.bodyStart)
			}
			checkRoundTrip(t, tc.msg, h, rest)
		})
	}
}

// checkRoundTrip: the parsed pieces are the input, byte for byte.
func checkRoundTrip(t testing.TB, msg string, h *header, rest string) {
	t.Helper()
	var b bytes.Buffer
	for _, f := range h.fields {
		b.Write(f.raw)
	}
	if int64(b.Len()+len(h.sep)) != h.size {
		t.Fatalf("size %d, fields+sep %d", h.size, b.Len()+len(h.sep))
	}
	b.Write(h.sep)
	b.Write(h.bodyStart)
	b.WriteString(rest)
	if b.String() != msg {
		t.Fatalf("round trip:\n got %q\nwant %q", b.String(), msg)
	}
}

func TestNewField(t *testing.T) {
	cases := []struct {
		name, value string
		lead        bool
		want        string
	}{
		{"X-A", "v", false, "X-A: v\r\n"},
		{"X-A", " v", true, "X-A: v\r\n"},
		{"X-A", "a;\n\tb;\r\n c", false, "X-A: a;\r\n\tb;\r\n c\r\n"},
		// A line break not followed by whitespace must not start a new
		// field, and an empty line must not end the header.
		{"X-A", "a\nX-Injected: yes\n\nbody", false, "X-A: a\r\n\tX-Injected: yes\r\n\tbody\r\n"},
		{"X-A", "a\rb\x00c", false, "X-A: a b c\r\n"},
		{"X-A", "", false, "X-A: \r\n"},
	}
	for _, tc := range cases {
		if got := string(newField(tc.name, tc.value, tc.lead).raw); got != tc.want {
			t.Errorf("newField(%q, %q) = %q, want %q", tc.name, tc.value, got, tc.want)
		}
	}
}

func TestParseReply(t *testing.T) {
	cases := []struct {
		in       string
		code     int
		enhanced string
		text     string
		bad      bool
	}{
		{in: "554 5.7.1 Gtube pattern", code: 554, enhanced: "5.7.1", text: "Gtube pattern"},
		{in: "550 5.7.1 Virus found: Local.EICAR.Test.String.UNOFFICIAL", code: 550, enhanced: "5.7.1", text: "Virus found: Local.EICAR.Test.String.UNOFFICIAL"},
		{in: "550-5.7.1 a\r\n550-5.7.1 b\r\n550 5.7.1 c", code: 550, enhanced: "5.7.1", text: "a\nb\nc"},
		{in: "550-5.7.1 a\n550 c\r\n", code: 550, enhanced: "5.7.1", text: "a\nc"},
		{in: "451 4.3.0 100%% busy, 5%x", code: 451, enhanced: "4.3.0", text: "100% busy, 5x"},
		{in: "550 Go away", code: 550, enhanced: "5.7.1", text: "Go away"},
		{in: "450 5.2.2 mailbox full", code: 450, enhanced: "4.2.2", text: "mailbox full"},
		{in: "550", code: 550, enhanced: "5.7.1", text: ""},
		{in: "550 5.7.10 x", code: 550, enhanced: "5.7.10", text: "x"},
		{in: "550 5.7.1234 x", code: 550, enhanced: "5.7.1", text: "5.7.1234 x"},
		{in: "550 caf\xc3\xa9\tbell\a", code: 550, enhanced: "5.7.1", text: "caf???bell?"},
		{in: "", bad: true},
		{in: "250 ok", bad: true},
		{in: "600 x", bad: true},
		{in: "55x bad", bad: true},
		{in: "550x", bad: true},
		{in: "550 a\r\n451 b", bad: true},
		{in: "550-a\r\nfoo", bad: true},
	}
	for _, tc := range cases {
		code, enh, text, err := parseReply(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseReply(%q) accepted: %d %s %q", tc.in, code, enh, text)
			}
			continue
		}
		if err != nil || code != tc.code || enh != tc.enhanced || text != tc.text {
			t.Errorf("parseReply(%q) = %d %q %q %v, want %d %q %q", tc.in, code, enh, text, err, tc.code, tc.enhanced, tc.text)
		}
	}
}

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte(testMessage))
	f.Add([]byte("A: 1\r\n 2\r\nnot a header\r\n\r\nbody"))
	f.Add([]byte(" lead\r\n"))
	f.Add([]byte("A: 1\nB: 2\n\n"))
	f.Add([]byte("A: 1"))
	f.Add([]byte(" \n0:")) // once made Apply join the first body line to an added field
	f.Fuzz(func(t *testing.T, msg []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(msg), 16)
		h, err := readHeader(br)
		if err != nil {
			if len(msg) <= maxHeaderBytes {
				t.Fatalf("readHeader failed on %d bytes: %v", len(msg), err)
			}
			return
		}
		rest, _ := io.ReadAll(br)
		checkRoundTrip(t, string(msg), h, string(rest))
		for _, f := range h.fields {
			if fieldNameEnd(f.raw) != f.colon || !validFieldName(f.name()) {
				t.Fatalf("field %q: bad name", f.raw)
			}
		}
		// Writing back with any set of header changes keeps the header
		// well formed: every field parses as one field again.
		mods := []Modification{
			{Kind: AddHeader, Name: "X-Fuzz", Value: string(msg[:min(len(msg), 200)])},
			{Kind: InsertHeader, Index: 1, Name: "X-Ins", Value: "a\nb"},
			{Kind: ChangeHeader, Index: 1, Name: "A", Value: ""},
		}
		res := &Result{Mods: mods}
		var out bytes.Buffer
		if err := res.Apply(&out, bytes.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
		want, _ := applyMods(h.fields, mods)
		written := out.String()
		br2 := bufio.NewReader(&out)
		h2, err := readHeader(br2)
		if err != nil {
			t.Fatal(err)
		}
		if len(h2.fields) != len(want) {
			t.Fatalf("Apply wrote %d fields, want %d:\n%q", len(h2.fields), len(want), written)
		}
		rest2, _ := io.ReadAll(br2)
		if got, want := string(h2.bodyStart)+string(rest2), string(h.bodyStart)+string(rest); got != want {
			t.Fatalf("body changed:\n got %q\nwant %q", got, want)
		}
	})
}

func FuzzParseReply(f *testing.F) {
	for _, s := range []string{"554 5.7.1 Gtube pattern", "550-5.7.1 a\r\n550 5.7.1 b", "451 4.7.1 100%% x", "550", "4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		code, enh, text, err := parseReply(s)
		if err != nil {
			return
		}
		if code < 400 || code > 599 {
			t.Fatalf("code %d", code)
		}
		if _, rest, ok := cutEnhanced(enh); !ok || rest != "" || enh[0] != byte('0'+code/100) {
			t.Fatalf("enhanced code %q for %d", enh, code)
		}
		for _, line := range strings.Split(text, "\n") {
			if len(line) > maxReplyLine {
				t.Fatalf("line of %d bytes", len(line))
			}
			for i := 0; i < len(line); i++ {
				if line[i] < ' ' || line[i] >= 0x7f {
					t.Fatalf("unsafe byte %q in %q", line[i], text)
				}
			}
		}
	})
}
