package smtputil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestReplies(t *testing.T) {
	evil := "evil.example\r\n250 OK\x00"
	tests := []struct {
		name string
		err  error // must be a bare *smtp.SMTPError: go-smtp type-asserts
		code int
		enh  smtp.EnhancedCode
		want string
	}{
		{"RelayDenied", RelayDenied("other.example"), 554, smtp.EnhancedCode{5, 7, 1}, "relay access denied: other.example is not a domain this server accepts mail for"},
		{"RelayDenied evil", RelayDenied(evil), 554, smtp.EnhancedCode{5, 7, 1}, "evil.example??250 OK?"},
		{"RoutingTrickReply", RoutingTrickReply("the local part contains '%'"), 554, smtp.EnhancedCode{5, 7, 1}, "address refused: the local part contains '%'"},
		{"BadAddressSyntax", BadAddressSyntax("x"), 501, smtp.EnhancedCode{5, 1, 3}, "bad recipient address syntax: x"},
		{"BadSenderSyntax", BadSenderSyntax("x"), 501, smtp.EnhancedCode{5, 1, 7}, "bad sender address syntax"},
		{"NotFQDNRecipient", NotFQDNRecipient("a@host"), 553, smtp.EnhancedCode{5, 1, 3}, "fully-qualified"},
		{"NotFQDNSender", NotFQDNSender("a@host"), 553, smtp.EnhancedCode{5, 1, 7}, "fully-qualified"},
		{"NonASCIIAddress", NonASCIIAddress("domain of \"x\" contains non-ASCII characters"), 553, smtp.EnhancedCode{5, 6, 7}, "non-ASCII"},
		{"DownstreamNoSMTPUTF8", DownstreamNoSMTPUTF8("j\u00f6rg@example.com"), 553, smtp.EnhancedCode{5, 6, 7}, "SMTPUTF8"},
		{"SenderDomainNotFound", SenderDomainNotFound("nx.example"), 550, smtp.EnhancedCode{5, 1, 8}, "nx.example does not exist"},
		{"SenderNullMX", SenderNullMX("null.example"), 550, smtp.EnhancedCode{5, 7, 27}, "null MX"},
		{"SenderDomainTempFail", SenderDomainTempFail("slow.example"), 450, smtp.EnhancedCode{4, 1, 8}, "DNS lookup failed temporarily"},
		{"RecipientUnknown", RecipientUnknown("nobody@example.com"), 550, smtp.EnhancedCode{5, 1, 1}, "no such mailbox"},
		{"BareLineEnding", BareLineEnding(), 550, smtp.EnhancedCode{5, 6, 0}, "message contains bare CR or LF; fix the sending software to use CRLF (RFC 5321 section 2.3.8)"},
		{"MessageTooBig", MessageTooBig(52428800), 552, smtp.EnhancedCode{5, 3, 4}, "52428800 bytes"},
		{"TooManyRecipients", TooManyRecipients(100), 452, smtp.EnhancedCode{4, 5, 3}, "too many recipients in this transaction (limit 100)"},
		{"QueueFailed", QueueFailed(), 451, smtp.EnhancedCode{4, 3, 0}, "try again later"},
		{"InsufficientStorage", InsufficientStorage(), 452, smtp.EnhancedCode{4, 3, 1}, "try again later"},
		{"TLSRequired", TLSRequired(), 530, smtp.EnhancedCode{5, 7, 0}, "STARTTLS"},
		{"AuthRequired", AuthRequired(), 530, smtp.EnhancedCode{5, 7, 0}, "authentication required"},
		{"AuthFailed", AuthFailed(), 535, smtp.EnhancedCode{5, 7, 8}, "credentials invalid"},
		{"AuthTempFail", AuthTempFail(), 454, smtp.EnhancedCode{4, 7, 0}, "temporary authentication failure"},
		{"EncryptionRequiredForAuth", EncryptionRequiredForAuth(), 538, smtp.EnhancedCode{5, 7, 11}, "STARTTLS before AUTH"},
		{"TooManyErrors", TooManyErrors(), 421, smtp.EnhancedCode{4, 7, 0}, "closing connection"},
		{"ShuttingDown", ShuttingDown(), 421, smtp.EnhancedCode{4, 3, 2}, "shutting down"},
		{"HeaderTooLarge", HeaderTooLarge(983040), 552, smtp.EnhancedCode{5, 3, 4}, "larger than 983040 bytes"},
		{"LineTooLong", LineTooLong(2000), 500, smtp.EnhancedCode{5, 5, 2}, "longer than 2000 bytes"},
		{"TooManyConnections", TooManyConnections(), 421, smtp.EnhancedCode{4, 7, 0}, "too many connections"},
		{"TooManyConnectionsFromClient", TooManyConnectionsFromClient("2001:db8::/64", 50), 421, smtp.EnhancedCode{4, 7, 0}, "from 2001:db8::/64 (limit 50 at a time"},
		{"ConnectionRateExceeded", ConnectionRateExceeded("192.0.2.1", 300, time.Minute), 421, smtp.EnhancedCode{4, 7, 0}, "(limit 300 per 1m)"},
		{"MessageRateExceeded", MessageRateExceeded("192.0.2.1", 300, time.Hour), 450, smtp.EnhancedCode{4, 7, 1}, "limit 300 messages per 1h"},
		{"RecipientRateExceeded", RecipientRateExceeded("192.0.2.1", 1000, 90*time.Second), 450, smtp.EnhancedCode{4, 7, 1}, "limit 1000 per 1m30s"},
		{"AuthLockedOut", AuthLockedOut("for this user", 10, 15*time.Minute), 454, smtp.EnhancedCode{4, 7, 0}, "for this user (limit 10 per 15m)"},
		{"AuthBusy", AuthBusy(), 454, smtp.EnhancedCode{4, 7, 0}, "in progress"},
		{"TooManyJunkCommands", TooManyJunkCommands(100), 421, smtp.EnhancedCode{4, 7, 0}, "limit 100"},
		{"AttachmentRefused", AttachmentRefused(`"invoice.zip", file "setup.exe" inside it`, "it is a Windows program (PE)"), 554, smtp.EnhancedCode{5, 7, 1}, `attachment "invoice.zip", file "setup.exe" inside it: it is a Windows program (PE)`},
		{"AttachmentTempFail", AttachmentTempFail(`"a.js"`, "it is a script"), 451, smtp.EnhancedCode{4, 7, 1}, "try again later"},
		{"AttachmentPolicySplit", AttachmentPolicySplit("b.example"), 452, smtp.EnhancedCode{4, 5, 3}, "b.example have another attachment policy"},
		{"long", RelayDenied(strings.Repeat("x", 5000)), 554, smtp.EnhancedCode{5, 7, 1}, "relay access denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			se, ok := tt.err.(*smtp.SMTPError)
			if !ok {
				t.Fatalf("%T is not *smtp.SMTPError", tt.err)
			}
			if se.Code != tt.code || se.EnhancedCode != tt.enh {
				t.Errorf("got %d %v, want %d %v", se.Code, se.EnhancedCode, tt.code, tt.enh)
			}
			if se.EnhancedCode[0] != se.Code/100 {
				t.Errorf("enhanced class %d does not match reply %d", se.EnhancedCode[0], se.Code)
			}
			if !strings.Contains(se.Message, tt.want) {
				t.Errorf("message %q does not contain %q", se.Message, tt.want)
			}
			if len(se.Message) > maxReplyText {
				t.Errorf("message is %d octets", len(se.Message))
			}
			for i := 0; i < len(se.Message); i++ {
				if c := se.Message[i]; c < 0x20 || c > 0x7e {
					t.Fatalf("message has octet 0x%02x: %q", c, se.Message)
				}
			}
		})
	}
	// Each call is a fresh value.
	a, b := QueueFailed(), QueueFailed()
	if a == b {
		t.Error("replies must not be shared values")
	}
}

func TestAddressReply(t *testing.T) {
	tests := []struct {
		in     string
		sender bool
		code   int
		enh    smtp.EnhancedCode
	}{
		{"a@localhost", true, 553, smtp.EnhancedCode{5, 1, 7}},
		{"a@localhost", false, 553, smtp.EnhancedCode{5, 1, 3}},
		{"a@exa_mple.com", true, 501, smtp.EnhancedCode{5, 1, 7}},
		{"a@exa_mple.com", false, 501, smtp.EnhancedCode{5, 1, 3}},
		{strings.Repeat("a", 65) + "@example.com", false, 501, smtp.EnhancedCode{5, 1, 3}},
		{"ü@example.com", false, 553, smtp.EnhancedCode{5, 6, 7}},
		{"a@bücher.example", true, 553, smtp.EnhancedCode{5, 6, 7}},
	}
	for _, tt := range tests {
		_, err := ParseAddress(tt.in)
		if err == nil {
			t.Fatalf("%q parsed", tt.in)
		}
		r := AddressReply(err, tt.sender)
		if r.Code != tt.code || r.EnhancedCode != tt.enh {
			t.Errorf("AddressReply(%q, sender=%v) = %d %v %q, want %d %v", tt.in, tt.sender, r.Code, r.EnhancedCode, r.Message, tt.code, tt.enh)
		}
	}
	// A wrapped error still maps.
	_, err := ParseAddress("a@localhost")
	if r := AddressReply(fmt.Errorf("rcpt: %w", err), false); r.Code != 553 {
		t.Errorf("wrapped: %d", r.Code)
	}
	if r := AddressReply(errors.New("other"), false); r.Code != 501 {
		t.Errorf("unknown error: %d", r.Code)
	}
}

// The replies of the inbound authentication checks (issue 11).
func TestAuthReplies(t *testing.T) {
	for _, tt := range []struct {
		err  *smtp.SMTPError
		code int
		enh  smtp.EnhancedCode
		want string
	}{
		{MultipleFromFields(11), 550, smtp.EnhancedCode{5, 6, 0}, "message has 11 From: header fields; RFC 5322 section 3.6 allows exactly one"},
		{TooManyAuthorDomains(11, 10), 550, smtp.EnhancedCode{5, 7, 1}, "addresses in 11 domains; this server checks the DMARC policy of at most 10"},
		{TooManyTransactions(100), 421, smtp.EnhancedCode{4, 7, 0}, "too many transactions in one session (limit 100), closing connection"},
	} {
		if tt.err.Code != tt.code || tt.err.EnhancedCode != tt.enh || !strings.Contains(tt.err.Message, tt.want) {
			t.Errorf("%d %v %q, want %d %v …%s…", tt.err.Code, tt.err.EnhancedCode, tt.err.Message, tt.code, tt.enh, tt.want)
		}
	}
}
