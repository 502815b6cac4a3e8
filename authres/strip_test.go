package authres

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestStripForged(t *testing.T) {
	cases := []struct {
		name, in, want string
		removed        int
	}{
		{"ours, theirs, body untouched",
			"Received: from x\r\n" +
				"Authentication-Results: mx.test; spf=pass smtp.mailfrom=ceo@example.com\r\n" +
				"Authentication-Results: mx.other.example; dkim=fail\r\n" +
				"Subject: hi\r\n" +
				"\r\n" +
				"Authentication-Results: mx.test; this is body text\r\n",
			"Received: from x\r\n" +
				"Authentication-Results: mx.other.example; dkim=fail\r\n" +
				"Subject: hi\r\n" +
				"\r\n" +
				"Authentication-Results: mx.test; this is body text\r\n",
			1},
		{"case, folding, comments, version, quoted id",
			"authentication-RESULTS:\r\n (forged) MX.Test 1;\r\n\tdkim=pass header.d=example.com\r\n" +
				"Authentication-Results : (a (nested) comment) mx.test; none\r\n" +
				"Authentication-Results: \"mx.test\"; spf=pass\r\n" +
				"Authentication-Results: \"mx.\\test\"; spf=pass\r\n" +
				"To: a@example.net\r\n\r\nbody\r\n",
			"To: a@example.net\r\n\r\nbody\r\n",
			4},
		{"similar names stay",
			"Authentication-Results: mx.test.example; spf=pass\r\n" +
				"Authentication-Results: xmx.test; spf=pass\r\n" +
				"Authentication-Results-Original: mx.test; spf=pass\r\n" +
				"ARC-Authentication-Results: i=1; mx.test; spf=pass\r\n" +
				"X-Authentication-Results: mx.test\r\n" +
				"\r\n",
			"Authentication-Results: mx.test.example; spf=pass\r\n" +
				"Authentication-Results: xmx.test; spf=pass\r\n" +
				"Authentication-Results-Original: mx.test; spf=pass\r\n" +
				"ARC-Authentication-Results: i=1; mx.test; spf=pass\r\n" +
				"X-Authentication-Results: mx.test\r\n" +
				"\r\n",
			0},
		{"LF line ends, no body",
			"Subject: x\nAuthentication-Results: mx.test; spf=pass\n continued\nFrom: a@example.com\n",
			"Subject: x\nFrom: a@example.com\n",
			1},
		{"last field without line end",
			"Subject: x\r\nAuthentication-Results: mx.test; spf=pass",
			"Subject: x\r\n",
			1},
		{"unterminated comment is not ours",
			"Authentication-Results: (mx.test; spf=pass\r\n\r\n",
			"Authentication-Results: (mx.test; spf=pass\r\n\r\n",
			0},
		{"leading continuation line passes",
			" odd\r\nAuthentication-Results: mx.test; x\r\n\r\nb",
			" odd\r\n\r\nb",
			1},
		{"empty", "", "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			// OneByteReader: field boundaries must not depend on reads.
			n, err := StripForged(&out, iotest.OneByteReader(strings.NewReader(tc.in)), testID)
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want || n != tc.removed {
				t.Errorf("got %d removed, %q\nwant %d, %q", n, out.String(), tc.removed, tc.want)
			}
		})
	}
}

// TestStripForgedLongField: a field longer than the read buffer is kept
// or removed whole.
func TestStripForgedLongField(t *testing.T) {
	long := strings.Repeat("x", 100<<10)
	in := "Authentication-Results: mx.test; reason=\"" + long + "\"\r\nX-Long: " + long + "\r\n\r\nbody"
	var out bytes.Buffer
	n, err := StripForged(&out, strings.NewReader(in), testID)
	if err != nil || n != 1 || out.String() != "X-Long: "+long+"\r\n\r\nbody" {
		t.Errorf("removed %d, err %v, output %d bytes", n, err, out.Len())
	}
}

func TestStripForgedErrors(t *testing.T) {
	in := "Subject: x\r\n\r\nbody"
	if _, err := StripForged(io.Discard, iotest.ErrReader(errBroken), testID); !errors.Is(err, errBroken) {
		t.Errorf("read error: %v", err)
	}
	if _, err := StripForged(&failWriter{}, strings.NewReader(in), testID); !errors.Is(err, errBroken) {
		t.Errorf("write error: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errBroken }

// TestPipeline: what the inbound session does with a verdict: our field
// on top, the forged one gone, and DKIM still verifies on the result.
func TestPipeline(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), edSigner(t, "example.com"))
	msg = "Authentication-Results: mx.test; dkim=pass header.d=bank.example\r\n" + msg
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	if v.Forged != 1 {
		t.Errorf("Verdict.Forged = %d, want 1", v.Forged)
	}
	var out bytes.Buffer
	out.WriteString(v.Header)
	if n, err := StripForged(&out, strings.NewReader(msg), testID); err != nil || n != 1 {
		t.Fatalf("StripForged: %d, %v", n, err)
	}
	if strings.Contains(out.String(), "bank.example") || !strings.HasPrefix(out.String(), "Authentication-Results: mx.test;\r\n\tspf=pass") {
		t.Errorf("output:\n%s", out.String())
	}
	v2 := check(t, c, ipIn, testHelo, dkimBounce, out.String())
	if len(v2.DKIM) != 1 || v2.DKIM[0].Result != Pass {
		t.Errorf("re-verified: %+v", v2.DKIM)
	}
	if v2.Forged != 1 { // our own field, now on top, claims our id too
		t.Errorf("re-checked: Verdict.Forged = %d, want 1", v2.Forged)
	}
}
