package smtputil

import (
	"crypto/tls"
	"net/mail"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var refTime = time.Date(2006, 1, 2, 15, 4, 5, 0, time.UTC)

func TestReceivedExample(t *testing.T) {
	got := Received(ReceivedInfo{
		FromHelo:   "mail.example.org",
		ClientIP:   netip.MustParseAddr("192.0.2.1"),
		ClientHost: "mail.example.org",
		ByHost:     "mx1.example.com",
		Listener:   "mx",
		Protocol:   ProtocolName(true, true, false),
		TLSVersion: TLSVersionName(tls.VersionTLS13),
		TLSCipher:  tls.CipherSuiteName(tls.TLS_AES_128_GCM_SHA256),
		QueueID:    "0123ABCD",
		For:        "a@example.com",
		Time:       refTime,
	})
	want := "Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n" +
		"\tby mx1.example.com (securerelay) with ESMTPS id 0123ABCD\r\n" +
		"\t(TLS1.3 TLS_AES_128_GCM_SHA256; listener mx)\r\n" +
		"\tfor <a@example.com>; Mon, 2 Jan 2006 15:04:05 +0000\r\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	checkReceived(t, got, true)
}

func TestReceivedVariants(t *testing.T) {
	tests := []struct {
		name     string
		ri       ReceivedInfo
		contains []string
		absent   []string
	}{
		{
			name:     "minimal",
			ri:       ReceivedInfo{ByHost: "mx1.example.com", Time: refTime},
			contains: []string{"from unknown (no-helo)", "by mx1.example.com (securerelay);"},
		},
		{
			name:     "ipv6, no reverse, HELO literal",
			ri:       ReceivedInfo{FromHelo: "[IPv6:2001:DB8::1]", ClientIP: netip.MustParseAddr("2001:db8::1"), ByHost: "mx1.example.com", Protocol: "ESMTP", Time: refTime},
			contains: []string{"from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])", "with ESMTP;"},
		},
		{
			name:     "ipv4-mapped client address",
			ri:       ReceivedInfo{FromHelo: "client.example", ClientIP: netip.MustParseAddr("::ffff:192.0.2.7"), ByHost: "mx", Time: refTime},
			contains: []string{"from client.example ([192.0.2.7])"},
		},
		{
			name: "HELO injection attempt",
			ri: ReceivedInfo{
				FromHelo: "x) by trusted.example (\r\nX-Injected: yes\r\n\tfor <ceo@example.com>;",
				ClientIP: netip.MustParseAddr("192.0.2.9"), ByHost: "mx1.example.com", Protocol: "SMTP", Time: refTime,
			},
			contains: []string{"from [192.0.2.9] ([192.0.2.9] helo=x?"},
			absent:   []string{"X-Injected: yes", "\r\nX-Injected", "for <ceo@example.com>", " by trusted.example"},
		},
		{
			name:     "HELO non-ASCII and overlong",
			ri:       ReceivedInfo{FromHelo: "héllo" + strings.Repeat("y", 2000), ClientIP: netip.MustParseAddr("192.0.2.9"), ByHost: "mx1.example.com", Time: refTime},
			contains: []string{"helo=h?llo"},
		},
		{
			name:     "single-label HELO is recorded as is",
			ri:       ReceivedInfo{FromHelo: "WORKSTATION", ClientIP: netip.MustParseAddr("192.0.2.9"), ByHost: "mx1.example.com", Time: refTime},
			contains: []string{"from workstation ([192.0.2.9])"},
		},
		{
			name:     "bad reverse name dropped",
			ri:       ReceivedInfo{FromHelo: "a.example", ClientHost: "bad name(", ClientIP: netip.MustParseAddr("192.0.2.9"), ByHost: "mx1.example.com", Time: refTime},
			contains: []string{"from a.example ([192.0.2.9])"},
			absent:   []string{"bad name"},
		},
		{
			name:     "for with quoted local part",
			ri:       ReceivedInfo{FromHelo: "a.example", ByHost: "mx1.example.com", For: "john doe@example.com", Time: refTime},
			contains: []string{`for <"john doe"@example.com>;`},
		},
		{
			name:   "unparsable for is left out",
			ri:     ReceivedInfo{FromHelo: "a.example", ByHost: "mx1.example.com", For: "x\r\nBcc: y", Time: refTime},
			absent: []string{"for ", "Bcc"},
		},
		{
			name:     "listener without TLS",
			ri:       ReceivedInfo{FromHelo: "a.example", ByHost: "mx1.example.com", Listener: "smart(host)\r\n", QueueID: "Q1 2;(", Time: refTime},
			contains: []string{"(listener smart?host?)", "id Q12"},
		},
		{
			name: "long names fold",
			ri: ReceivedInfo{
				FromHelo:   strings.Repeat("a", 60) + ".example.org",
				ClientHost: strings.Repeat("b", 60) + ".example.org",
				ClientIP:   netip.MustParseAddr("2001:db8:1234:5678:9abc:def0:1234:5678"),
				ByHost:     "mx1.example.com", Protocol: "ESMTPSA", QueueID: "ABCDEF0123456789",
				TLSVersion: "TLS1.2", TLSCipher: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", Listener: "submission",
				For: strings.Repeat("c", 60) + "@" + strings.Repeat("d", 60) + ".example", Time: refTime,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Received(tt.ri)
			unfolded := strings.ReplaceAll(strings.ReplaceAll(got, "\r\n\t", " "), "\r\n", "")
			for _, s := range tt.contains {
				if !strings.Contains(unfolded, s) {
					t.Errorf("missing %q in\n%s", s, got)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(got, s) || strings.Contains(unfolded, s) {
					t.Errorf("unexpected %q in\n%s", s, got)
				}
			}
			checkReceived(t, got, false)
		})
	}
}

func TestReceivedDefaultTime(t *testing.T) {
	got := Received(ReceivedInfo{ByHost: "mx.example"})
	checkReceived(t, got, false)
}

// checkReceived verifies the field the way a receiving parser sees it.
func checkReceived(t *testing.T, field string, strictWidth bool) {
	t.Helper()
	if !strings.HasPrefix(field, "Received: ") || !strings.HasSuffix(field, "\r\n") {
		t.Fatalf("bad framing: %q", field)
	}
	if hasBare([]byte(field)) {
		t.Fatalf("bare CR or LF in %q", field)
	}
	lines := strings.Split(strings.TrimSuffix(field, "\r\n"), "\r\n")
	for i, l := range lines {
		if len(l) >= 998 {
			t.Errorf("line %d is %d octets", i, len(l))
		}
		if strictWidth && len(l) >= 78 {
			t.Errorf("line %d is %d octets (fold below 78): %q", i, len(l), l)
		}
		if i > 0 && !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, " ") {
			t.Errorf("continuation line %d does not start with white space: %q", i, l)
		}
		if strings.TrimSpace(l) == "" {
			t.Errorf("line %d is blank (would end the header)", i)
		}
		for j := 0; j < len(l); j++ {
			if c := l[j]; (c < 0x20 && c != '\t') || c > 0x7e {
				t.Errorf("line %d has octet 0x%02x", i, c)
			}
		}
	}
	msg, err := mail.ReadMessage(strings.NewReader(field + "\r\n"))
	if err != nil {
		t.Fatalf("net/mail cannot parse %q: %v", field, err)
	}
	if len(msg.Header["Received"]) != 1 || len(msg.Header) != 1 {
		t.Fatalf("parsed into %d fields: %v", len(msg.Header), msg.Header)
	}
	v := msg.Header.Get("Received")
	semi := strings.LastIndexByte(v, ';')
	if semi < 0 {
		t.Fatalf("no ';' before the date in %q", v)
	}
	if _, err := mail.ParseDate(strings.TrimSpace(v[semi+1:])); err != nil {
		t.Errorf("date after last ';' does not parse: %v", err)
	}
	depth, lastSemiDepth := 0, -1
	for _, c := range v {
		switch c {
		case '(':
			depth++
			if depth > 1 {
				t.Errorf("nested comment in %q", v)
			}
		case ')':
			depth--
			if depth < 0 {
				t.Fatalf("unbalanced ')' in %q", v)
			}
		case ';':
			lastSemiDepth = depth
		}
	}
	if lastSemiDepth != 0 {
		t.Errorf("the last ';' (before the date) is inside a comment in %q", v)
	}
	if depth != 0 {
		t.Errorf("unbalanced '(' in %q", v)
	}
	if !strings.HasPrefix(v, "from ") || !strings.Contains(v, " by ") {
		t.Errorf("missing from/by clause: %q", v)
	}
}

func TestProtocolName(t *testing.T) {
	for _, tt := range []struct {
		ehlo, tls, auth bool
		want            string
	}{
		{false, false, false, "SMTP"},
		{false, true, true, "SMTP"},
		{true, false, false, "ESMTP"},
		{true, true, false, "ESMTPS"},
		{true, false, true, "ESMTPA"},
		{true, true, true, "ESMTPSA"},
	} {
		if got := ProtocolName(tt.ehlo, tt.tls, tt.auth); got != tt.want {
			t.Errorf("ProtocolName(%v,%v,%v) = %q, want %q", tt.ehlo, tt.tls, tt.auth, got, tt.want)
		}
	}
}

func TestTLSVersionName(t *testing.T) {
	if got := TLSVersionName(tls.VersionTLS13); got != "TLS1.3" {
		t.Errorf("got %q", got)
	}
	if got := TLSVersionName(tls.VersionTLS12); got != "TLS1.2" {
		t.Errorf("got %q", got)
	}
	if got := TLSVersionName(0x9999); strings.Contains(got, " ") || got == "" {
		t.Errorf("unknown version: %q", got)
	}
}

func TestFoldField(t *testing.T) {
	v := strings.Repeat("word ", 40)
	f := FoldField("Subject", v)
	for _, l := range strings.Split(strings.TrimSuffix(f, "\r\n"), "\r\n") {
		if len(l) >= 78 {
			t.Errorf("line too long: %q", l)
		}
	}
	msg, err := mail.ReadMessage(strings.NewReader(f + "\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("Subject"); got != strings.TrimSpace(v) {
		t.Errorf("unfolded value %q", got)
	}
}

func FuzzReceived(f *testing.F) {
	f.Add("mail.example.org", "mail.example.org", "a@example.com", "mx", "0123ABCD")
	f.Add("x) by trusted (\r\nX-Injected: 1", "", "a\r\nb@example.com", "l;(", "id;")
	f.Add("[IPv6:2001:db8::1]", "bad host", `"a b"@example.com`, "", "")
	f.Add("", "", "", "", "")
	f.Add(strings.Repeat("a.", 200), strings.Repeat("b", 300), strings.Repeat("c", 300)+"@x.example", strings.Repeat("(", 100), strings.Repeat("Q", 100))
	f.Fuzz(func(t *testing.T, helo, host, rcpt, listener, queueID string) {
		got := Received(ReceivedInfo{
			FromHelo: helo, ClientIP: netip.MustParseAddr("192.0.2.1"), ClientHost: host,
			ByHost: "mx1.example.com", Listener: listener, Protocol: "ESMTPS",
			TLSVersion: "TLS1.3", TLSCipher: "TLS_AES_128_GCM_SHA256", QueueID: queueID,
			For: rcpt, Time: refTime,
		})
		checkReceived(t, got, false)
	})
}
