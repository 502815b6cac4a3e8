package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"

	"golang.org/x/net/idna"
)

// MaxHeaderBytes bounds the header block Sign reads before signing. Real
// headers are a few KiB; the bound keeps a hostile message from making the
// relay buffer without limit.
const MaxHeaderBytes = 1 << 20

// ErrHeaderTooLarge: no end of the header block within the bound.
var ErrHeaderTooLarge = errors.New("dkim: message header exceeds the size limit")

// ReadHeader returns the header block of a message: every line up to and
// including the empty line that ends it (CRLF or bare LF). If the input
// ends before an empty line, the whole input is the header (RFC 5322 §3.5:
// the body, and with it the separating empty line, is optional) and the
// returned block does not end in an empty line. More than max bytes
// without an end of header is ErrHeaderTooLarge.
//
// When r is a *bufio.Reader exactly the header is consumed and the body
// can be read from r afterwards; any other reader may be read further.
func ReadHeader(r io.Reader, max int) ([]byte, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	return readHeader(br, max)
}

func readHeader(br *bufio.Reader, max int) ([]byte, error) {
	var h []byte
	atLineStart := true
	for {
		line, err := br.ReadSlice('\n')
		if len(h)+len(line) > max {
			return nil, fmt.Errorf("%w (%d bytes)", ErrHeaderTooLarge, max)
		}
		h = append(h, line...)
		if atLineStart && (string(line) == "\n" || string(line) == "\r\n") {
			return h, nil
		}
		atLineStart = len(line) > 0 && line[len(line)-1] == '\n'
		switch err {
		case nil, bufio.ErrBufferFull:
		case io.EOF:
			return h, nil
		default:
			return nil, fmt.Errorf("dkim: reading header: %w", err)
		}
	}
}

// field is one header field: its name as written and its raw value with
// folding intact.
type field struct {
	name, value string
}

// parseFields splits a header block into fields. Continuation lines (RFC
// 5322 §2.2.3) join the field above; lines without a colon, and
// continuation lines before any field, are not fields and are skipped
// here (go-msgauth sees the raw bytes and deals with them itself).
func parseFields(header []byte) []field {
	var fields []field
	valid := false // whether the last line started a field
	for len(header) > 0 {
		var line []byte
		if i := bytes.IndexByte(header, '\n'); i >= 0 {
			line, header = header[:i+1], header[i+1:]
		} else {
			line, header = header, nil
		}
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) == 0 {
			break // end of header
		}
		if trimmed[0] == ' ' || trimmed[0] == '\t' {
			if valid {
				fields[len(fields)-1].value += "\r\n" + string(trimmed)
			}
			continue
		}
		name, value, ok := strings.Cut(string(trimmed), ":")
		name = strings.TrimRight(name, " \t") // RFC 822 allowed WSP before the colon
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			valid = false
			continue
		}
		fields = append(fields, field{name: name, value: value})
		valid = true
	}
	return fields
}

// addrParser decodes encoded words in any charset by passing them through
// undecoded: only the address matters here, and an unknown charset in a
// display name must not make a valid From unparsable.
var addrParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}

// FromDomain returns the domain of the single mailbox in the message's
// From: field, lower-cased, with U-labels (a UTF-8 header, RFC 6532) as
// A-labels: the form of d= and of the key's DNS name (RFC 8616 §4), and
// of the configured domains. RFC 5322 §3.6 allows exactly one From field;
// a From with several mailboxes needs a Sender (§3.6.2) and is refused
// here too, since the signing domain must be unambiguous. Absent,
// repeated or unparsable From fields are errors.
func FromDomain(header []byte) (string, error) {
	addr, err := FromAddress(header)
	if err != nil {
		return "", err
	}
	return asciiDomain(addr[strings.LastIndexByte(addr, '@')+1:])
}

// asciiDomain lower-cases a domain and maps U-labels to A-labels (IDNA
// Lookup profile, as for envelope addresses). An ASCII name is not
// checked against IDNA's stricter label rules: what DNS holds, signs.
func asciiDomain(d string) (string, error) {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			a, err := idna.Lookup.ToASCII(d)
			if err != nil {
				return "", fmt.Errorf("dkim: From: domain %q is not a valid internationalised domain name: %w", d, err)
			}
			return a, nil
		}
	}
	return d, nil
}

// FromAddress returns the address of the single mailbox in the message's
// From: field, with the same rules as FromDomain.
func FromAddress(header []byte) (string, error) {
	var from []field
	for _, f := range parseFields(header) {
		if strings.EqualFold(f.name, "From") {
			from = append(from, f)
		}
	}
	switch len(from) {
	case 0:
		return "", errors.New("dkim: message has no From: field")
	case 1:
	default:
		return "", fmt.Errorf("dkim: message has %d From: fields; RFC 5322 §3.6 allows one", len(from))
	}
	value := strings.NewReplacer("\r\n", "", "\n", "").Replace(from[0].value)
	addrs, err := addrParser.ParseList(value)
	if err != nil {
		return "", fmt.Errorf("dkim: unparsable From: %w", err)
	}
	if len(addrs) != 1 {
		return "", fmt.Errorf("dkim: From: has %d mailboxes; want exactly one", len(addrs))
	}
	at := strings.LastIndexByte(addrs[0].Address, '@')
	if at < 0 || at == len(addrs[0].Address)-1 {
		return "", fmt.Errorf("dkim: From: address %q has no domain", addrs[0].Address)
	}
	return addrs[0].Address, nil
}
