package smtp

// Reply names a reply that go-smtp makes itself, without asking the
// session (securerelay patch 8). With Server.Replies set, the server words
// every one of them (code, enhanced code and text); without it, go-smtp's
// own replies are sent, as upstream. The comment of each names what arg
// carries.
type Reply int

const (
	ReplyGreeting         Reply = iota // 220 greeting; arg: "ESMTP" or "LMTP"
	ReplyHelo                          // 250 to HELO; arg: the client's name
	ReplyEhlo                          // first line of the 250 to EHLO/LHLO (the extensions follow); arg: the client's name
	ReplyMailOK                        // 250 to MAIL; arg: the sender
	ReplyRcptOK                        // 250 to RCPT; arg: the recipient
	ReplyDataStart                     // 354 to DATA
	ReplyDataOK                        // 250 when the session's Data returned nil
	ReplyChunkOK                       // 250 to a BDAT chunk that is not the last; arg: its size
	ReplyNoop                          // 250 to NOOP
	ReplyRset                          // 250 to RSET
	ReplyVrfy                          // 252 to VRFY; arg: the argument
	ReplyHelp                          // reply to HELP
	ReplyQuit                          // 221 to QUIT
	ReplyStartTLS                      // 220 to STARTTLS, before the handshake
	ReplyAuthOK                        // 235 after a successful AUTH
	ReplyAuthCancelled                 // 501: the client sent "*"
	ReplyAuthBadBase64                 // 501: a response that is not base64
	ReplyAuthBadResponse               // 501: a response the mechanism cannot read; arg: its error
	ReplyAuthTwice                     // 503: AUTH after a successful AUTH
	ReplyAuthNeedsTLS                  // 538: AUTH in clear text where it is allowed only over TLS
	ReplyUnknownCommand                // 500: an unknown or malformed command; arg: the verb as sent ("" for an empty line)
	ReplyNotImplemented                // 502: a command go-smtp does not implement; arg: the verb
	ReplyWrongHello                    // 500: HELO/EHLO to an LMTP server or LHLO to an SMTP one; arg: the verb
	ReplyNeedHello                     // 503: a command before HELO/EHLO; arg: the verb
	ReplyNeedMail                      // 503: RCPT, DATA or BDAT before MAIL; arg: the verb
	ReplyNeedRcpt                      // 503: DATA or BDAT before an accepted RCPT; arg: the verb
	ReplyNestedMail                    // 503: MAIL inside a transaction
	ReplyInTransfer                    // 503: MAIL, RCPT or DATA during a BDAT transfer; arg: the verb
	ReplyDataBinary                    // 503: DATA after MAIL … BODY=BINARYMIME (RFC 3030 allows only BDAT)
	ReplyTLSActive                     // 503: STARTTLS inside TLS
	ReplyTLSNotOffered                 // 502: STARTTLS without a TLS configuration
	ReplySyntax                        // 501: a command's arguments; arg: the verb (HELO, EHLO, MAIL, RCPT, DATA, BDAT, AUTH)
	ReplyBadSender                     // 501: a MAIL FROM path that does not parse; arg: what is wrong
	ReplyBadRecipient                  // 501: a RCPT TO path that does not parse; arg: what is wrong
	ReplyParamSyntax                   // 501: a malformed MAIL/RCPT parameter; arg: its keyword
	ReplyParamUnsupported              // 555 (RFC 5321 4.1.1.11): a parameter not recognised or not offered; arg: its keyword
	ReplyTooBig                        // 552: SIZE= over MaxMessageBytes, or BDAT chunks over it
	ReplyTooManyRcpts                  // 452: RCPT over MaxRecipients
	ReplyLineTooLong                   // 500: a command line (or AUTH response) over MaxLineLength; the rest of the line is skipped
	ReplyTimeout                       // 421: no command within ReadTimeout; the connection closes
	ReplyConnError                     // 421: the connection failed; it closes
	ReplyInternalError                 // 421: a panic in the session; the connection closes
	ReplyLocalError                    // a session method returned an error that is not an *SMTPError
	ReplyBusy                          // 421: Conn.Reject
	// ReplyCount is the number of Reply values, for a server that checks
	// it words them all.
	ReplyCount
)

// reply asks Server.Replies for r's wording; nil means go-smtp's own.
func (s *Server) reply(c *Conn, r Reply, arg string) *SMTPError {
	if s.Replies == nil {
		return nil
	}
	return s.Replies(c, r, arg)
}

// reply sends the reply for r: the server's wording, else go-smtp's own
// (code, enhCode, text), which each call site keeps as upstream wrote it.
func (c *Conn) reply(r Reply, arg string, code int, enhCode EnhancedCode, text string) {
	if se := c.server.reply(c, r, arg); se != nil {
		code, enhCode, text = se.Code, se.EnhancedCode, se.Message
	}
	c.writeResponse(code, enhCode, text)
}
