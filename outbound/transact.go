package outbound

// One transaction on an open session: MAIL, RCPT, DATA, with the
// SMTPUTF8 plan, the 7-bit copy for a next hop without 8BITMIME, the
// encrypted copy and the DKIM transform, and a result per recipient.

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"securerelay/downgrade"
	"securerelay/encrypt"
	"securerelay/queue"
)

// txnResult is what one transaction leaves: the recipients' results and
// what may become of the session.
type txnResult struct {
	// res holds one result per recipient, in the order transact got them.
	res []queue.Result
	// sessionBroken: the session cannot carry another transaction (the
	// connection is gone or out of step, or RSET failed): quit it, never
	// pool it.
	sessionBroken bool
	// noReplyToMail: MAIL, the first command, got no reply: on a pooled
	// session, the peer closed it while it idled. Nothing was sent, so a
	// fresh connection may try the transaction again.
	noReplyToMail bool
}

// transact runs one MAIL/RCPT/DATA on p.
func (e *Engine) transact(d *queue.Delivery, t Target, p *pooled, rcpts []string, s *sealing) txnResult {
	tlsInfo := p.tls.info
	// Every recipient starts as a temporary failure: only a reply to the
	// end of DATA may turn one into Delivered.
	res := all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.4.2", Relay: p.relay, TLS: tlsInfo,
		Reply: "transaction with " + p.relay + " did not complete"})
	for i := range res {
		res[i].TLSPolicy = p.outcome
	}
	if p.hp == nil || p.hp.RequiresTLS() && tlsInfo == "" {
		// open() and reuse() never hand out such a session; this is the
		// last line of defence before any byte of the message is sent.
		return txnResult{sessionBroken: true, res: all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.7.10", Relay: p.relay, TLSPolicy: p.outcome,
			Reply: fmt.Sprintf("TLS required for %s, session is not encrypted; not sent", t.Addr)})}
	}
	env := d.Envelope
	dsnHop, _ := p.cl.extension("DSN")
	eightHop, _ := p.cl.extension("8BITMIME")
	set := func(i int, err error, stage string) {
		r := queue.Result{Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome}
		if s != nil {
			r.Encryption = s.note(rcpts[i])
		}
		if err == nil {
			r.Status, r.Code, r.Reply = queue.Delivered, "2.0.0", "accepted after "+stage
			// What a success DSN would say, if one was asked for and the
			// next hop did not take the request over (RFC 3461 §5.2.2).
			switch {
			case dsnHop:
			case t.Kind == KindLMTP:
				r.Success = queue.ActionDelivered
			default:
				r.Success = queue.ActionRelayed
			}
		} else if rp := toReply(err, stage); rp != nil {
			r.Code, r.Reply = rp.enh, fmt.Sprintf("%s said: %s", p.relay, rp.Error())
			r.Status = queue.TempFail
			if rp.permanent() {
				r.Status = queue.PermFail
			}
		} else {
			r.Status, r.Code = queue.TempFail, "4.4.2"
			r.Reply = fmt.Sprintf("lost connection with %s while sending %s: %v", p.relay, stage, err)
		}
		res[i] = r
	}
	// SMTPUTF8 (utf8.go): with the parameter, downgraded to A-labels, or
	// not at all, decided on what this session offered.
	offered, _ := p.cl.extension("SMTPUTF8")
	plan, err := planEnvelope(d, rcpts, offered)
	if err != nil {
		return txnResult{res: all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.3.0", Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome,
			Reply: "cannot read spool file: " + err.Error()})}
	}
	if plan.whole != "" {
		// Nothing was sent: the session stays good for other mail.
		r := noSMTPUTF8(p.relay, plan.whole, plan.wholeWhat)
		r.TLS, r.TLSPolicy = tlsInfo, p.outcome
		return txnResult{res: all(len(rcpts), r)}
	}
	for i, why := range plan.refused {
		if why != "" {
			res[i] = noSMTPUTF8(p.relay, why, utf8Recipient)
			res[i].TLS, res[i].TLSPolicy = tlsInfo, p.outcome
		}
	}
	setAll := func(err error, stage string) {
		for i := range rcpts {
			if plan.refused[i] == "" {
				set(i, err, stage)
			}
		}
	}
	mp := mailParams{requireTLS: p.hp.RequireTLS, smtputf8: plan.smtputf8}
	if dsnHop {
		// RFC 3461 §5.2: a next hop that offers DSN gets the request, and
		// the notices are then its to send.
		mp.ret, mp.envID = env.Ret, env.EnvID
	}
	var conv *sealed
	switch {
	case eightHop || plan.smtputf8:
		// RFC 6531 §3.2: a server that offers SMTPUTF8 takes 8-bit
		// content too; its UTF-8 header fields are no reason to convert.
		if eightHop && (s != nil || d.Content != queue.Content7Bit || env.Body == "8BITMIME") {
			mp.body = "8BITMIME"
		}
	case s == nil && d.Content != queue.Content7Bit:
		// RFC 6152: no 8-bit octet to a next hop without 8BITMIME. The
		// 7-bit copy is made before MAIL, so that a message that cannot
		// be converted goes back without a transaction, and before the
		// DKIM signer (Transform), which signs what leaves. (An encrypted
		// message is ASCII armour already.)
		c, err := e.downgrade(d)
		var de *downgrade.Error
		switch {
		case errors.As(err, &de):
			// No other attempt does better: the next hops of a domain are
			// set up alike, and the message stays what it is.
			for i := range res {
				res[i] = not7Bit(p, de.Reason)
			}
			return txnResult{res: res}
		case err != nil:
			for i := range res {
				res[i].Code, res[i].Reply = "4.3.0", "converting the message to 7 bit failed: "+err.Error()
			}
			return txnResult{res: res}
		}
		if c != nil {
			defer c.Close()
			conv = c
			e.o.Logger.Info("converted to 7 bit: the next hop does not offer 8BITMIME", "queue_id", d.ID, "relay", p.relay)
		}
	}
	if err := p.cl.mail(plan.from, mp); err != nil {
		setAll(err, "MAIL FROM")
		if toReply(err, "") == nil {
			return txnResult{res: res, sessionBroken: true, noReplyToMail: true}
		}
		return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
	}
	var ok, okWire []string
	var okIdx []int
	for i, rc := range rcpts {
		if plan.refused[i] != "" {
			continue
		}
		var rp rcptParams
		if dsnHop {
			// Looked up by the recipient as queued; the wire form may be
			// its A-label downgrade.
			dsn := d.DSN(rc)
			rp = rcptParams{notify: dsn.Notify, orcpt: dsn.ORCPT}
		}
		if err := p.cl.rcpt(plan.rcpts[i], rp); err != nil {
			set(i, err, "RCPT TO")
			if toReply(err, "") == nil {
				// The connection is gone: recipients accepted so far never
				// got their DATA, later ones were never asked.
				for j := range rcpts {
					if j != i && plan.refused[j] == "" && (j > i || res[j].Status != queue.PermFail) {
						set(j, err, "RCPT TO")
					}
				}
				return txnResult{res: res, sessionBroken: true}
			}
			continue
		}
		ok = append(ok, rc)
		okWire = append(okWire, plan.rcpts[i])
		okIdx = append(okIdx, i)
	}
	if len(ok) == 0 {
		return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
	}
	out := &Outgoing{Delivery: d, Target: t, Rcpts: ok, TLS: tlsInfo,
		Reopen: func() (io.ReadCloser, error) { return d.Open() }}
	if conv != nil {
		out.Reopen, out.Converted = conv.Open, true
	}
	fail := func(code, reply string) {
		for _, i := range okIdx {
			res[i] = queue.Result{Status: queue.TempFail, Code: code, Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome, Reply: reply}
			if s != nil {
				res[i].Encryption = s.note(rcpts[i])
			}
		}
	}
	if s != nil {
		// Encrypted first, so that the DKIM signature covers the bytes
		// that leave; the copy is made for the recipients the next hop
		// took, after RCPT, and is not kept: each attempt encrypts anew.
		sc, err := s.seal(d, ok)
		if errors.Is(err, encrypt.ErrMalformed) {
			// No later attempt can encrypt it either: back to the sender
			// now, not a retry every few hours until queue.max_age.
			why := strings.Join(strings.Fields(err.Error()), " ")
			for _, i := range okIdx {
				res[i] = queue.Result{Status: queue.PermFail, Code: "5.6.0", Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome,
					Encryption: s.note(rcpts[i]),
					Reply:      "the message is malformed and cannot be encrypted as the TLS policy requires (" + why + "); not sent",
					Explanation: "Your organisation's policy requires this message to be encrypted end to end for this recipient, and it could not be: " +
						"its header is malformed (" + why + "). Nothing was sent. Ask whoever runs the program that wrote the message to fix it, then send it again."}
			}
			return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
		}
		if err != nil {
			fail("4.3.0", "encrypting the message failed: "+err.Error())
			return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
		}
		defer sc.Close()
		out.Reopen, out.Encrypted = sc.Open, true
		if !eightHop && !plan.smtputf8 && d.Content != queue.Content7Bit {
			// The armour is 7 bit, but the fields kept outside (From, To,
			// Cc) are copied as they are: a raw UTF-8 display name would
			// reach a 7-bit hop as 8-bit octets, which the same message
			// unencrypted is refused for above.
			if de := sevenBitRefusal(sc); de != nil {
				for _, i := range okIdx {
					res[i] = not7Bit(p, de.Reason)
					res[i].Encryption = s.note(rcpts[i])
				}
				return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
			}
		}
	}
	r, err := out.Reopen()
	if err != nil {
		fail("4.3.0", "cannot read spool file: "+err.Error())
		return txnResult{res: res, sessionBroken: true}
	}
	defer r.Close()
	out.Data = r
	var data io.Reader = r
	if e.o.Transform != nil {
		data, err = e.o.Transform(out)
		if err != nil {
			fail("4.3.0", "preparing the message failed: "+err.Error())
			return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
		}
	}
	// LMTP's replies are matched by the address as sent.
	per, err := p.cl.data(data, okWire)
	for k, i := range okIdx {
		// Per-recipient replies (LMTP) take precedence; nil there means
		// accepted, and a recipient without a reply carries the I/O error.
		e := err
		if per != nil {
			e = per[k]
		}
		set(i, e, "end of DATA")
	}
	if err != nil && toReply(err, "") == nil {
		return txnResult{res: res, sessionBroken: true}
	}
	return txnResult{res: res}
}

// not7Bit is the result for a message that a next hop without 8BITMIME
// cannot take and that cannot be converted to 7 bit.
func not7Bit(p *pooled, why string) queue.Result {
	return queue.Result{Status: queue.PermFail, Code: "5.6.3", Relay: p.relay, TLS: p.tls.info, TLSPolicy: p.outcome,
		Reply: fmt.Sprintf("%s does not offer 8BITMIME and the message cannot be converted to 7 bit (%s); not sent", p.relay, why),
		Explanation: "The receiving mail server accepts only messages in plain 7-bit form, and this message could not be converted " +
			"to that form without changing what it says: " + why + ". Nothing was sent. The same text written by another " +
			"mail program, or as an attachment, may get through; your mail administrator can tell you more."}
}

// sevenBitRefusal is why the encrypted copy sc cannot go to a next hop
// without 8BITMIME, or nil when it can. A read error is no refusal: the
// transaction then fails on reading the copy, temporarily.
func sevenBitRefusal(sc *sealed) *downgrade.Error {
	r, err := sc.Open()
	if err != nil {
		return nil
	}
	defer r.Close()
	var de *downgrade.Error
	if _, err := downgrade.Analyze(r); errors.As(err, &de) {
		return de
	}
	return nil
}

// downgrade makes the 7-bit copy of d for a next hop without 8BITMIME, in
// memory or, past spillAt, an unlinked file in SpillDir; nil when the
// message has no 8-bit octet after all. A message that cannot be
// converted is a *downgrade.Error.
func (e *Engine) downgrade(d *queue.Delivery) (*sealed, error) {
	r, err := d.Open()
	if err != nil {
		return nil, fmt.Errorf("cannot read spool file: %w", err)
	}
	plan, err := downgrade.Analyze(r)
	r.Close()
	if err != nil || !plan.Needed() {
		return nil, err
	}
	if r, err = d.Open(); err != nil {
		return nil, fmt.Errorf("cannot read spool file: %w", err)
	}
	defer r.Close()
	out := &sealed{dir: e.o.SpillDir}
	if err := plan.Convert(out, r); err != nil {
		out.Close()
		return nil, err
	}
	return out, nil
}
