package outbound

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"

	"securerelay/dkim"
	"securerelay/queue"
	"securerelay/smtputil"
)

// DKIMKeys maps a domain to the keys that sign its mail.
type DKIMKeys map[string][]dkim.Key

// Signer signs outbound mail with DKIM, as the engine's Transform. It signs
// the bytes that leave, at delivery time, so that nothing the relay does
// before (our Received: header included) breaks the signature.
type Signer struct {
	cur atomic.Pointer[signerConfig]
	log *slog.Logger
	// Counts for a metrics endpoint (Counts).
	signatures, unsigned, failed atomic.Int64
}

// Counts returns how many DKIM signatures were made, how many messages
// left unsigned (no key for their domain) and how many signings failed
// (the delivery was deferred), since start. A message is signed anew at
// each attempt, so each attempt counts.
func (s *Signer) Counts() (signatures, unsigned, failed int64) {
	return s.signatures.Load(), s.unsigned.Load(), s.failed.Load()
}

type signerConfig struct {
	keys        DKIMKeys
	opts        dkim.Options
	useEnvelope bool
}

// NewSigner returns a Signer; useEnvelope falls back to the envelope
// sender's domain when the From: domain has no key.
func NewSigner(keys DKIMKeys, o dkim.Options, useEnvelope bool, log *slog.Logger) *Signer {
	s := &Signer{log: log}
	s.Set(keys, o, useEnvelope)
	return s
}

// Set replaces keys and options (SIGHUP); deliveries in progress finish
// with what they started with.
func (s *Signer) Set(keys DKIMKeys, o dkim.Options, useEnvelope bool) {
	s.cur.Store(&signerConfig{keys: keys, opts: o, useEnvelope: useEnvelope})
}

// Transform implements the engine's Transform: mail that arrived on an
// inbound listener is never signed (it is not ours); everything else is
// signed with every key of its From: domain, or leaves unsigned with a log
// line saying why.
func (s *Signer) Transform(m *Outgoing) (io.Reader, error) {
	d, r := m.Delivery, m.Data
	if d.Envelope.Origin == queue.OriginInbound {
		return r, nil
	}
	// One read of the spool file serves header, signature and sending for
	// the usual message: up to inMemorySign bytes are kept, and only a
	// larger one is read a second time to sign it (signing needs the whole
	// message before the first byte may leave).
	head := make([]byte, 0, int(min(d.Size+512, inMemorySign)))
	head, err := readUpTo(r, head, inMemorySign)
	if err != nil {
		return nil, fmt.Errorf("reading the message to sign: %w", err)
	}
	whole := len(head) < inMemorySign
	rest := io.MultiReader(bytes.NewReader(head), r)
	header, err := dkim.ReadHeader(bytes.NewReader(head), dkim.MaxHeaderBytes)
	if err != nil && !whole && errors.Is(err, dkim.ErrHeaderTooLarge) {
		hr, oerr := m.Reopen()
		if oerr != nil {
			return nil, oerr
		}
		header, err = dkim.ReadHeader(hr, dkim.MaxHeaderBytes)
		hr.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("reading the header to sign: %w", err)
	}
	c := s.cur.Load()
	dom, ferr := dkim.FromDomain(header)
	ks := c.keys[dom]
	if len(ks) == 0 && c.useEnvelope && d.Envelope.From != "" {
		env := smtputil.AddressDomain(d.Envelope.From)
		if ks = c.keys[env]; len(ks) > 0 {
			dom = env
		}
	}
	if len(ks) == 0 {
		why := "no DKIM key for the From: domain " + dom
		if ferr != nil {
			why = "no usable From: header (" + ferr.Error() + ")"
		}
		s.log.Info("dkim: sending unsigned", "queue_id", d.ID, "reason", why)
		s.unsigned.Add(1)
		return rest, nil
	}
	var sigs []string
	if whole {
		sigs, err = dkim.Sign(bytes.NewReader(head), ks, c.opts)
	} else {
		sr, oerr := m.Reopen()
		if oerr != nil {
			return nil, oerr
		}
		sigs, err = dkim.Sign(sr, ks, c.opts)
		sr.Close()
	}
	if err != nil {
		// A key that worked at start and fails now (or a message the
		// signer cannot read) defers rather than sends unsigned mail
		// nobody notices.
		s.failed.Add(1)
		return nil, fmt.Errorf("dkim signing for %s: %w", dom, err)
	}
	s.signatures.Add(int64(len(sigs)))
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		var sels []string
		for _, k := range ks {
			sels = append(sels, k.Selector+"/"+k.Algorithm())
		}
		s.log.Debug("dkim: signed", "queue_id", d.ID, "domain", dom, "selectors", strings.Join(sels, ","))
	}
	return io.MultiReader(strings.NewReader(strings.Join(sigs, "")), rest), nil
}

// inMemorySign bounds the bytes of one message held while it is signed;
// concurrent deliveries are bounded by the engine, and so is the memory.
const inMemorySign = 256 << 10

// readUpTo appends from r to buf until max bytes or EOF.
func readUpTo(r io.Reader, buf []byte, max int) ([]byte, error) {
	for len(buf) < max {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), max)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}
