package outbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/emersion/go-smtp"

	"securerelay/dkim"
	"securerelay/encrypt"
	"securerelay/queue"
	"securerelay/smtputil"
	"securerelay/tlspolicy"
)

// EncryptRule is the OpenPGP part of one TLS rule (outbound.tls.policies
// with fallback: encrypt or encrypt: always).
type EncryptRule struct {
	// Always: every message to the destination is encrypted, whatever
	// TLS achieves; otherwise only when the rule's TLS level is not met.
	Always bool
	// WithoutKeyTLS (with Always): a recipient without a usable key gets
	// the message unencrypted when the TLS level is met. Otherwise it
	// waits for a key, and submission refuses it at RCPT.
	WithoutKeyTLS bool
	// Sources is the rule's key chain, in order; Pins its pinned keys.
	Sources []encrypt.Source
	Pins    []encrypt.Pin
	// Subject is the outer Subject of the encrypted message.
	Subject string
}

// Encryption is the delivery engine's OpenPGP stage: which TLS rules
// encrypt (by their Match, see tlspolicy.Decider.DomainRule), where keys
// come from, and which organisation keys sign.
type Encryption struct {
	Dir   *encrypt.Directory
	Rules map[string]*EncryptRule
	// Signers sign the encrypted mail of a From: domain (optional).
	Signers map[string]*openpgp.Entity
	// SpillDir holds an encrypted copy larger than spillAt while it is
	// sent (ciphertext only; the file is unlinked at once).
	SpillDir string
}

// spillAt is the size up to which an encrypted copy stays in memory.
const spillAt = 1 << 20

// ruleFor is the encryption rule for a delivery under pol, or nil when
// the message must not be encrypted: only mail submitted on an outbound
// listener is (inbound mail is the organisation's own, DSNs come from the
// relay), and only under a domain rule that says so.
func (en *Encryption) ruleFor(pol *tlspolicy.Policy, d *queue.Delivery) *EncryptRule {
	if en == nil || d.Envelope.Origin != queue.OriginOutbound {
		return nil
	}
	return en.Rules[pol.RuleMatch()]
}

// lookup finds the key for one recipient along the rule's chain.
func (en *Encryption) lookup(ctx context.Context, r *EncryptRule, rcpt string) encrypt.Result {
	return en.Dir.Lookup(ctx, encrypt.Query{Address: rcpt, Sources: r.Sources, Pins: r.Pins})
}

// sealing is what a transaction encrypts to: the key of each recipient.
type sealing struct {
	en   *Encryption
	rule *EncryptRule
	keys map[string]*encrypt.Key
}

// note is the encryption part of a recipient's log line and queue entry.
func (s *sealing) note(rcpt string) string {
	k := s.keys[rcpt]
	if k == nil {
		return ""
	}
	return fmt.Sprintf("openpgp key=%s key_source=%s (%s)", k.Fingerprint, k.Source, k.Origin)
}

// seal encrypts the spooled message to the keys of rcpts, into memory or,
// when larger than spillAt, an unlinked file in SpillDir, so that a
// 25 MiB message is never held in memory; the caller closes the result.
func (s *sealing) seal(d *queue.Delivery, rcpts []string) (*sealed, error) {
	var to []*encrypt.Key
	seen := map[string]bool{}
	for _, rc := range rcpts {
		if k := s.keys[rc]; k != nil && !seen[k.Fingerprint] {
			seen[k.Fingerprint] = true
			to = append(to, k)
		}
	}
	if len(to) == 0 {
		return nil, errors.New("no recipient key")
	}
	src, err := d.Open()
	if err != nil {
		return nil, fmt.Errorf("cannot read spool file: %w", err)
	}
	defer src.Close()
	opts := encrypt.MessageOptions{Subject: s.rule.Subject}
	if len(s.en.Signers) > 0 {
		opts.Signer = s.en.signer(fromDomain(d))
	}
	out := &sealed{dir: s.en.SpillDir}
	if err := encrypt.Encrypt(out, src, to, opts); err != nil {
		out.Close()
		return nil, err
	}
	return out, nil
}

// fromDomain is the From: domain of the spooled message, "" if none.
func fromDomain(d *queue.Delivery) string {
	r, err := d.Open()
	if err != nil {
		return ""
	}
	defer r.Close()
	h, err := dkim.ReadHeader(r, dkim.MaxHeaderBytes)
	if err != nil {
		return ""
	}
	dom, _ := dkim.FromDomain(h)
	return dom
}

// signer is the organisation key for the From: domain of a message, if any.
func (en *Encryption) signer(fromDomain string) *openpgp.Entity {
	if en == nil {
		return nil
	}
	return en.Signers[fromDomain]
}

// sealed is a copy of the message made for one transaction (encrypted, or
// converted to 7 bit): a buffer that moves to a file past spillAt.
type sealed struct {
	dir  string
	buf  bytes.Buffer
	f    *os.File
	size int64
}

func (s *sealed) Write(p []byte) (int, error) {
	if s.f == nil && s.buf.Len()+len(p) > spillAt {
		dir := s.dir
		if dir == "" {
			dir = os.TempDir()
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return 0, err
		}
		f, err := os.CreateTemp(dir, "copy-*")
		if err != nil {
			return 0, err
		}
		// Unlinked at once: a crash leaves nothing behind, and the
		// copy is always made again from the spool.
		os.Remove(f.Name())
		if _, err := f.Write(s.buf.Bytes()); err != nil {
			f.Close()
			return 0, err
		}
		s.f = f
		s.buf = bytes.Buffer{}
	}
	var n int
	var err error
	if s.f != nil {
		n, err = s.f.Write(p)
	} else {
		n, err = s.buf.Write(p)
	}
	s.size += int64(n)
	return n, err
}

// Open reads the copy from its start; it may be called again.
func (s *sealed) Open() (io.ReadCloser, error) {
	if s.f == nil {
		return io.NopCloser(bytes.NewReader(s.buf.Bytes())), nil
	}
	return io.NopCloser(io.NewSectionReader(s.f, 0, s.size)), nil
}

func (s *sealed) Close() error {
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}

// keyRefusal says why a recipient has no key, for logs, replies and DSNs.
func keyRefusal(rcpt string, r encrypt.Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "no usable OpenPGP key for %s", rcpt)
	if len(r.Searched) > 0 {
		names := make([]string, len(r.Searched))
		for i, s := range r.Searched {
			names[i] = string(s)
		}
		fmt.Fprintf(&b, " (searched %s)", strings.Join(names, ", "))
	}
	for _, rf := range r.Refused {
		fmt.Fprintf(&b, "; refused %s", rf.String())
	}
	if r.Temporary != nil {
		fmt.Fprintf(&b, "; lookup failed temporarily: %v", r.Temporary)
	}
	return b.String()
}

// sourceWords names the key sources searched for an end user.
func sourceWords(ss []encrypt.Source) string {
	var w []string
	for _, s := range ss {
		switch s {
		case encrypt.SourcePinned:
			w = append(w, "the keys your administrator pinned for this partner")
		case encrypt.SourceKeyring:
			w = append(w, "your organisation's key collection")
		case encrypt.SourceWKD:
			w = append(w, "the partner's Web Key Directory (WKD)")
		case encrypt.SourceOPENPGPKEY:
			w = append(w, "the partner's DNS (OPENPGPKEY)")
		}
	}
	if len(w) == 0 {
		return "nowhere"
	}
	return strings.Join(w, ", ")
}

// noKeyAdvice is the end user's part of a DSN for a recipient without a
// key after the TLS level was not met. A lookup that failed is not "no
// key": the partner may well have published one.
func noKeyAdvice(rcpt string, r encrypt.Result) string {
	if r.Temporary != nil {
		return fmt.Sprintf("The OpenPGP key of %s could not be looked up either (looked in: %s; the lookup failed: %v), "+
			"so the message could not be sent encrypted instead. If this persists, ask the recipient's organisation whether its "+
			"Web Key Directory (WKD) is reachable, or your mail administrator to pin the recipient's key.", rcpt, sourceWords(r.Searched), r.Temporary)
	}
	return fmt.Sprintf("No usable OpenPGP key was found for %s either (looked in: %s), so the message could not be sent encrypted instead. "+
		"The recipient's organisation can publish a key in its Web Key Directory (WKD), or send one to your mail administrator to pin, "+
		"or make its mail server offer the required encryption (TLS).", rcpt, sourceWords(r.Searched))
}

// RequiredKey is for outbound listeners at RCPT: a recipient whose mail
// must always be encrypted (encrypt: always without a TLS-only fallback)
// and who has no usable key is refused at once, so that the user learns
// it now rather than from a DSN days later. nil: accepted as far as
// encryption goes. REQUIRETLS changes nothing here: such a message is
// encrypted too (it only never takes a session below the level).
func (e *Engine) RequiredKey(ctx context.Context, rcpt string) *smtp.SMTPError {
	ts := e.tls.Load()
	en := ts.enc
	if en == nil {
		return nil
	}
	if strings.LastIndexByte(rcpt, '@') < 0 {
		return nil
	}
	// The rule for "müller.example" is written and kept in A-labels.
	match := ts.d.DomainRule(smtputil.AddressDomain(rcpt))
	r := en.Rules[match]
	if r == nil || !r.Always || r.WithoutKeyTLS {
		return nil
	}
	res := en.lookup(ctx, r, rcpt)
	switch {
	case res.Key != nil:
		return nil
	case res.Temporary != nil:
		return smtputil.RecipientKeyTempFail(rcpt, res.Temporary.Error())
	}
	return smtputil.RecipientKeyMissing(rcpt, match, sourceWords(res.Searched))
}

// splitByKey sorts recipient indexes into those with a key and without.
func splitByKey(rcpts []string, keys map[string]*encrypt.Key) (keyed, unkeyed []int) {
	for i, rc := range rcpts {
		if keys[rc] != nil {
			keyed = append(keyed, i)
		} else {
			unkeyed = append(unkeyed, i)
		}
	}
	return keyed, unkeyed
}

func pick(rcpts []string, idx []int) []string {
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = rcpts[i]
	}
	return out
}

// deliverEncrypting delivers rcpts under a rule that encrypts (ruleFor):
//   - fallback: encrypt: the message goes as usual when a next hop meets
//     the TLS level; when none does, recipients with a usable key get it
//     encrypted over the best session the hosts offer, and the others wait
//     (their result says what was missing: TLS, and a key);
//   - encrypt: always: recipients with a key get it encrypted, over a
//     session that meets the level or else the best one offered; the
//     others wait, or go unencrypted under the TLS level (without_key: tls).
//
// A REQUIRETLS message never takes the relaxed session (RFC 8689 asks for
// TLS on every hop): its recipients are returned as without this rule.
func (e *Engine) deliverEncrypting(ctx context.Context, ds *dest, en *Encryption, r *EncryptRule, d *queue.Delivery,
	t Target, pol *tlspolicy.Policy, key string, rcpts []string) []queue.Result {
	var tlsFail []queue.Result // the attempt that did not meet the level
	if !r.Always {
		res, failed := e.send(ctx, ds, d, t, pol, key, rcpts, nil, false)
		if !failed || pol.RequireTLS {
			return res
		}
		tlsFail = res
	}
	res := make([]queue.Result, len(rcpts))
	keys := map[string]*encrypt.Key{}
	looked := make([]encrypt.Result, len(rcpts))
	for i, rc := range rcpts {
		looked[i] = en.lookup(ctx, r, rc)
		if looked[i].Key != nil {
			keys[rc] = looked[i].Key
		}
	}
	keyed, unkeyed := splitByKey(rcpts, keys)
	if len(keyed) > 0 {
		s := &sealing{en: en, rule: r, keys: keys}
		kr := pick(rcpts, keyed)
		relaxed := tlsFail != nil
		out, failed := e.send(ctx, ds, d, t, pol, key, kr, s, relaxed)
		if failed && !relaxed && !pol.RequireTLS {
			out, _ = e.send(ctx, ds, d, t, pol, key, kr, s, true)
		}
		for k, i := range keyed {
			res[i] = out[k]
		}
	}
	if len(unkeyed) == 0 {
		return res
	}
	if r.WithoutKeyTLS {
		out, failed := e.send(ctx, ds, d, t, pol, key, pick(rcpts, unkeyed), nil, false)
		for k, i := range unkeyed {
			res[i] = out[k]
			if failed {
				// Neither the level nor a key: the log line and the DSN
				// name both, and both remedies.
				res[i] = noKeyResult(rcpts[i], looked[i], pol, out, k)
			}
		}
		return res
	}
	for _, i := range unkeyed {
		res[i] = noKeyResult(rcpts[i], looked[i], pol, tlsFail, i)
	}
	return res
}

// noKeyResult is the result of a recipient that waits for a key: after
// the TLS attempt that fell short (tlsFail: fallback: encrypt, or encrypt:
// always with without_key: tls; i indexes tlsFail), or at once (encrypt:
// always). It stays temporary: a key may be published (WKD) or
// pinned before queue.max_age, and the DSN then says what was missing.
func noKeyResult(rcpt string, lr encrypt.Result, pol *tlspolicy.Policy, tlsFail []queue.Result, i int) queue.Result {
	why := keyRefusal(rcpt, lr)
	if tlsFail != nil {
		r := tlsFail[i]
		r.Reply += "; and " + why
		r.Encryption = "openpgp: " + why
		r.Explanation = strings.TrimSpace(r.Explanation + " " + noKeyAdvice(rcpt, lr))
		return r
	}
	return queue.Result{Status: queue.TempFail, Code: "4.7.5",
		Reply:       fmt.Sprintf("mail to %s is always encrypted (%s, encrypt: always), and there is %s; not sent", pol.Domain, pol.Source, why),
		TLSPolicy:   fmt.Sprintf("tls required=%s (%s) not tried: encrypt: always and no key", pol.Level, pol.Source),
		Encryption:  "openpgp: " + why,
		Explanation: alwaysAdvice(pol.Domain, rcpt, lr),
	}
}

// alwaysAdvice is the end user's part of a DSN for a recipient without a
// key under encrypt: always.
func alwaysAdvice(domain, rcpt string, lr encrypt.Result) string {
	if lr.Temporary != nil {
		return fmt.Sprintf("Your organisation sends mail to %s only encrypted end to end, and the OpenPGP key of %s could not be looked up "+
			"(looked in: %s; the lookup failed: %v). If this persists, ask the recipient's organisation whether its Web Key Directory (WKD) "+
			"is reachable, or your mail administrator to pin the recipient's key.", domain, rcpt, sourceWords(lr.Searched), lr.Temporary)
	}
	return fmt.Sprintf("Your organisation sends mail to %s only encrypted end to end, and no usable OpenPGP key was found for %s (looked in: %s). "+
		"The recipient's organisation can publish a key in its Web Key Directory (WKD), or send one to your mail administrator to pin.",
		domain, rcpt, sourceWords(lr.Searched))
}
