package attach

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime/quotedprintable"
	"strings"
	"testing"
	"testing/iotest"
)

// On what the standard library reads, the lenient decoders read the
// same; where it fails, they go on as mail programs do.
func TestDecoders(t *testing.T) {
	data := make([]byte, 70000)
	for i := range data {
		data[i] = byte(i*7919 ^ i>>5)
	}
	var qp bytes.Buffer
	w := quotedprintable.NewWriter(&qp)
	w.Binary = true
	w.Write(data)
	w.Close()
	enc := base64.StdEncoding.EncodeToString(data)
	for name, c := range map[string]struct {
		r    io.Reader
		want []byte
	}{
		"base64":            {newB64Reader(iotest.OneByteReader(strings.NewReader(enc))), data},
		"base64 in lines":   {newB64Reader(strings.NewReader(strings.Join(strings.SplitAfter(enc, "A"), "\r\n"))), data},
		"qp":                {newQPReader(iotest.HalfReader(bytes.NewReader(qp.Bytes()))), data},
		"qp control":        {newQPReader(strings.NewReader("a\x01b\x7f")), []byte("a\x01b\x7f")},
		"qp long line":      {newQPReader(strings.NewReader(strings.Repeat("x", 9000) + "=41")), append(bytes.Repeat([]byte("x"), 9000), 'A')},
		"qp == at line end": {newQPReader(strings.NewReader("a==\r\nb")), []byte("a=b")},
		"qp lone = at end":  {newQPReader(strings.NewReader("a\r\n=")), []byte("a\r\n")},
		"qp bad escape":     {newQPReader(strings.NewReader("=ZZ=4")), []byte("=ZZ=4")},
		"base64 one sextet": {newB64Reader(strings.NewReader("QUJD\r\nR")), []byte("ABC")},
		"base64 padding":    {newB64Reader(strings.NewReader("QQ==QUI=Qw")), []byte("AABC")},
	} {
		got, err := io.ReadAll(c.r)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("%s: %d bytes (%q…), %v; want %d bytes", name, len(got), got[:min(len(got), 16)], err, len(c.want))
		}
	}
	// The standard library fails on those (why qpReader is written here).
	for _, s := range []string{"a\x01b", strings.Repeat("x", 9000), "a==\r\nb", "a\r\n="} {
		if _, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(s))); err == nil {
			t.Errorf("mime/quotedprintable reads %.20q now: use it", s)
		}
	}
}
