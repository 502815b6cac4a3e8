// Package milter is the MTA side of the Sendmail milter protocol (version
// 6, as Postfix and Sendmail speak it): it hands one message, while the
// SMTP client waits after DATA, to the configured content scanners
// (rspamd, clamav-milter, amavisd-milter, …) and turns their answers into
// a verdict with an SMTP reply and a list of modifications.
//
// # Use
//
//	chain, err := milter.NewChain(cfgs, log)        // at start-up
//	res, err := chain.Check(ctx, env, open)          // per message, after DATA
//	// or, to overlap the envelope stages with other work:
//	run := chain.Begin(ctx, env); defer run.Close(); …; res, err := run.Check(open)
//	// or, in the dialog, as Postfix's smtpd: at the first accepted RCPT
//	run := chain.BeginTransaction(ctx, env); run.AddRcpt(…); run.EndEnvelope(queueID)
//	// err: the message could not be read, or ctx ended: answer 451.
//	// res.Action Reject/Tempfail: answer res.Code res.Enhanced res.Text.
//	// res.Action Accept: store res.Apply(w, original) (or the original when
//	// !res.ChangesContent()), with the envelope changes from
//	// RecipientsAdded, RecipientsDeleted and NewFrom.
//
// # What it does
//
//   - Opens every milter's conversation at once and takes each through
//     the envelope (connect, HELO, MAIL, RCPT, DATA) in parallel, as
//     Postfix sends each envelope event to every milter; then runs the
//     content (header fields, end of header, body, end of message) one
//     milter after another, like Postfix's cleanup server: each milter
//     sees the header and body changes of the ones before it; the first
//     refusal ends the check, and the milters not reached by then get
//     SMFIC_ABORT and QUIT (in the background), never the message. Protocol steps and replies a milter negotiates away
//     (SMFIP_NO*, SMFIP_NR_*) are not sent or awaited; SMFIR_SKIP and
//     SMFIR_PROGRESS are honoured.
//   - Streams the message from the caller's open function in chunks of at
//     most 65535 bytes; only the header section (at most 1 MiB, else 552
//     5.3.4) is in memory. A milter that negotiated SMFIP_NOBODY causes no
//     body read at all.
//   - Sends the macros Postfix sends by default plus those rspamd,
//     clamav-milter and amavisd-milter read (see stageMacros).
//   - Maps answers: SMFIR_REPLYCODE gives the milter's own reply (4xx:
//     Tempfail, 5xx: Reject; multi-line kept; "%%" undone as Postfix
//     does); REJECT, TEMPFAIL and DISCARD get 550 5.7.1 / 451 4.7.1 with a
//     text naming the milter. DISCARD and QUARANTINE become Reject: this
//     relay never accepts mail it will not deliver.
//   - A milter that is unreachable, times out (ReadTimeout per reply,
//     restarted by SMFIR_PROGRESS) or breaks the protocol is handled per
//     Config.OnError: tempfail (451 4.7.1, default), accept (skip it,
//     logged) or reject (554 5.7.1).
//
// # What it deliberately does not do
//
//   - Apply envelope changes: the caller owns the recipient list.
//   - Hide the caller's own Received field from milters, as Postfix does:
//     milters see the message exactly as given, and header indexes refer
//     to it. rspamd's INSHEADER at index 1 thus lands below the first
//     field, which is our Received when the caller prepends it first.
//   - Reuse milter connections across messages (SMFIC_QUIT_NC): not every
//     milter supports it; a connection costs a few hundred microseconds.
//   - Per-recipient verdicts: recipients were accepted before DATA, so a
//     milter that refuses one recipient refuses the message.
//
// # Library: github.com/d--j/go-milter v0.10.1
//
// Compared with github.com/emersion/go-milter v0.5.0, whose client lacks
// SMFIC_DATA and SMFIC_UNKNOWN, fails on an SMFIR_SKIP reply (its action
// parser rejects 's' although the body loop checks for it), cannot parse
// SMFIR_ADDRCPT_PAR, has no per-stage macros or SMFIF_SETSYMLIST, and does
// not check the milter's negotiated flags against the offer. d--j's client
// does all of that,
// validates SMFIR_REPLYCODE (net/textproto), keeps a state machine, and its
// server side drives every action in the tests. Its gaps, handled here:
// a zero-length packet from a milter makes it panic and a length up to
// 512 MiB makes it allocate that much (guardConn checks the framing
// first); it has no context (closing the socket ends a blocked call); it
// collects all end-of-message replies, a replaced body included, in
// memory before returning them (capped by Chain.MaxBodyReplacement, 64
// MiB by default, through a byte budget on the socket; the replacement is
// kept in memory, not spilled to disk); End needs a BodyChunk call, so an
// empty body is sent as one empty line where Postfix sends no BODY packet
// (an empty BODY packet makes libmilter drop the connection); and a
// milter's SETSYMLIST replaces the macros of all stages, not only
// the ones it names.
//
// The header section is split into fields here rather than with
// net/textproto or go-message: those unfold values (losing the bytes DKIM
// signatures cover) or fail on a malformed line that an MTA has to pass
// on. This is field splitting only (RFC 5322 §2.2), not MIME parsing.
package milter
