package encrypt

import (
	"bufio"
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-pgpmail"
)

// ErrMalformed wraps the errors of a message that cannot be encrypted as
// it is (its header cannot be read): trying again will not help.
var ErrMalformed = errors.New("message cannot be encrypted")

// maxHeaderBytes bounds the header read into memory, as authres does.
const maxHeaderBytes = 1 << 20

// ioBuffer is the buffer on each side of the encryption: large enough that
// the spool file is read and the output written in few system calls,
// small against the message.
const ioBuffer = 64 << 10

// outerFields are the header fields that stay readable on the outside of
// the encrypted message (copied as they are, in their order), because
// delivery, threading or loop prevention needs them before anyone
// decrypts: trace fields, the addresses, date and identification, the
// threading references and the automatic-reply controls that vacation
// responders read on the server (RFC 3834). Everything else (Subject,
// Reply-To, Content-* with attachment names, X-* fields of the sending
// software, Keywords, Comments, Bcc, List-*, Organization, ...) is only
// inside, and the Subject outside is a placeholder.
var outerFields = map[string]bool{
	"Received": true, "Return-Path": true,
	"Resent-Date": true, "Resent-From": true, "Resent-Sender": true, "Resent-To": true, "Resent-Cc": true, "Resent-Message-Id": true,
	"From": true, "Sender": true, "To": true, "Cc": true,
	"Date": true, "Message-Id": true, "In-Reply-To": true, "References": true,
	"Auto-Submitted": true, "Precedence": true, "X-Auto-Response-Suppress": true,
	"Mime-Version": true,
}

// innerDropped are fields that do not go into the protected part: trace
// fields (outside already) and signatures over the original, which cannot
// verify on the inner part.
var innerDropped = map[string]bool{
	"Received": true, "Return-Path": true,
	"Dkim-Signature": true, "Arc-Seal": true, "Arc-Message-Signature": true, "Arc-Authentication-Results": true,
	"Mime-Version": true,
}

// MessageOptions controls Encrypt.
type MessageOptions struct {
	// Subject is the outer Subject (default "..."); the real one is only
	// inside.
	Subject string
	// Signer, when set, signs the message inside the encryption (an
	// organisation key, see LoadSigner), so the recipient can see who
	// sent it.
	Signer *openpgp.Entity
	// Now is the time keys are judged at (default time.Now).
	Now func() time.Time
}

// Encrypt writes src, a whole RFC 5322 message with CRLF line ends as the
// spool holds it, to dst as an RFC 3156 PGP/MIME message encrypted to
// every key in to (several recipients of one destination share one
// message). The original header fields (except trace fields and
// signatures) become protected headers of the inner part, whose
// Content-Type gets protected-headers="v1" (the convention Thunderbird,
// K-9/FairEmail and others read); outside stay only the fields in
// outerFields and a placeholder Subject. The body is copied through
// unchanged, byte for byte.
//
// The message is streamed: memory use is the header plus fixed buffers,
// whatever the size of the body. The output is not deterministic (a new
// session key every time), so a caller that must read it twice (DKIM)
// stores it.
func Encrypt(dst io.Writer, src io.Reader, to []*Key, o MessageOptions) error {
	if len(to) == 0 {
		return errors.New("encrypt: no recipient key")
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	rr := &readErr{r: src}
	lr := &io.LimitedReader{R: rr, N: maxHeaderBytes + 1}
	br := bufio.NewReaderSize(lr, ioBuffer)
	h, err := textproto.ReadHeader(br)
	switch {
	case rr.err != nil:
		return fmt.Errorf("encrypt: reading the message: %w", rr.err)
	case lr.N <= 0:
		return fmt.Errorf("%w: header larger than %d bytes", ErrMalformed, maxHeaderBytes)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: the header does not end with CRLF", ErrMalformed)
	case err != nil:
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	lr.N = math.MaxInt64 // the body is not bounded here; the spool was

	trace, outer, inner, err := splitHeader(h, o.Subject)
	if err != nil {
		return err
	}
	var entities []*openpgp.Entity
	seen := map[string]bool{}
	for _, k := range to {
		if !seen[k.Fingerprint] {
			seen[k.Fingerprint] = true
			entities = append(entities, k.Entity)
		}
	}
	cfg := &packet.Config{
		Time:          now,
		DefaultCipher: packet.CipherAES256,
		DefaultHash:   crypto.SHA256,
		// No compression: speed, and no length side channel from
		// compressing attacker-influenced text next to secrets.
		DefaultCompressionAlgo: packet.CompressionNone,
	}
	bw := bufio.NewWriterSize(dst, ioBuffer)
	// Trace fields first, as they came (RFC 5321 section 4.4: Received
	// fields are at the top, newest first); go-pgpmail puts the fields it
	// sets (MIME-Version, Content-Type) at the top of the header it writes.
	for _, raw := range trace {
		if _, err := bw.Write(raw); err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
	}
	wc, err := pgpmail.Encrypt(bw, outer, entities, o.Signer, cfg)
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	if err := textproto.WriteHeader(wc, inner); err != nil {
		wc.Close()
		return fmt.Errorf("encrypt: %w", err)
	}
	if _, err := io.Copy(wc, br); err != nil {
		wc.Close()
		return fmt.Errorf("encrypt: copying the body: %w", err)
	}
	if err := wc.Close(); err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("encrypt: writing: %w", err)
	}
	return nil
}

// readErr remembers a read error other than EOF, to tell a spool that
// cannot be read (try again) from a header that cannot be parsed.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// splitHeader makes the trace fields (Received, Return-Path: written
// first, as they are), the outer header (the other fields that must stay
// visible, a placeholder Subject) and the inner one (the original fields,
// protected) from h.
func splitHeader(h textproto.Header, subject string) (trace [][]byte, outer, inner textproto.Header, err error) {
	if subject == "" {
		subject = DefaultOuterSubject
	}
	subject = strings.Join(strings.Fields(subject), " ") // no CR, LF or folding from configuration
	var outerRaw, innerRaw [][]byte
	sawCT := false
	for f := h.Fields(); f.Next(); {
		raw, err := f.Raw()
		if err != nil {
			return nil, outer, inner, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		k := f.Key()
		switch {
		case k == "Received" || k == "Return-Path":
			trace = append(trace, raw)
		case outerFields[k]:
			outerRaw = append(outerRaw, raw)
		}
		if innerDropped[k] {
			continue
		}
		if k == "Content-Type" && !sawCT {
			sawCT = true
			raw = protectContentType(raw, f.Value())
		}
		innerRaw = append(innerRaw, raw)
	}
	if !sawCT {
		// RFC 2045 section 5.2's default, made explicit to carry the
		// parameter; no charset is invented for an undeclared body.
		innerRaw = append(innerRaw, []byte("Content-Type: text/plain; protected-headers=\"v1\"\r\n"))
	}
	outerRaw = append(outerRaw, []byte("Subject: "+mime.QEncoding.Encode("utf-8", subject)+"\r\n"))
	return trace, headerOf(outerRaw), headerOf(innerRaw), nil
}

// protectContentType appends protected-headers="v1" to a Content-Type
// field, keeping the original text (and so its parameters, encoded file
// names included) as it is.
func protectContentType(raw []byte, value string) []byte {
	if _, params, err := mime.ParseMediaType(value); err == nil {
		if _, ok := params["protected-headers"]; ok {
			return raw
		}
	}
	v := bytes.TrimRight(raw, " \t\r\n;")
	out := make([]byte, 0, len(v)+32)
	out = append(out, v...)
	return append(out, ";\r\n protected-headers=\"v1\"\r\n"...)
}

// headerOf builds a header from raw fields in order. textproto.Header
// writes the field added last first, hence the reverse order.
func headerOf(fields [][]byte) textproto.Header {
	var h textproto.Header
	for i := len(fields) - 1; i >= 0; i-- {
		h.AddRaw(fields[i])
	}
	return h
}

// LoadSigner reads an organisation's secret key for signing from an
// armoured or binary file. The key must not be protected by a passphrase
// (a relay has nobody to type one) and must have a valid signing key at
// now.
func LoadSigner(path string, now time.Time) (*openpgp.Entity, error) {
	kf := readKeyFile(path)
	if kf.err != nil {
		return nil, fmt.Errorf("signing key: %w", kf.err)
	}
	var found []*openpgp.Entity
	for _, e := range kf.keys {
		if e.PrivateKey != nil {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("signing key %s: want exactly one secret key in the file, found %d", path, len(found))
	}
	e := found[0]
	k, ok := e.SigningKey(now)
	switch {
	case !ok:
		return nil, fmt.Errorf("signing key %s (%s): no valid signing key (expired, revoked or not for signing)", path, Fingerprint(e))
	case k.PrivateKey == nil || k.PrivateKey.Dummy():
		return nil, fmt.Errorf("signing key %s (%s): the file holds no secret part of the signing key", path, Fingerprint(e))
	case k.PrivateKey.Encrypted:
		return nil, fmt.Errorf("signing key %s (%s): protected by a passphrase; store it without one, readable only by the relay", path, Fingerprint(e))
	}
	return e, nil
}
