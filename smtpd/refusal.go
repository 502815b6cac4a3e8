package smtpd

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/emersion/go-smtp"
)

// Refusal is a reply refusing something, together with the check that
// refused it. Roles return one instead of logging and counting
// themselves: smtpd writes the one log line of every refusal on every
// listener ("reject") and counts it (Server.Refusals), so that all
// refusals share one vocabulary:
//
//	msg=reject listener= conn_id= client= stage= check= code= dsn= reply=
//	helo= from= rcpt= (at RCPT) queue_id= (from DATA on) count=
//	…the check's own keys
//
// Check is the name of the setting that refused (sender_fqdn, dnsbl,
// max_connections_per_client…), or, for a rule that is always on, the
// rule's name (relay, address_syntax…); the count goes under the same
// name.
type Refusal struct {
	Check string
	Reply *smtp.SMTPError
	// Attrs are what the check saw (key, value pairs), logged after the
	// common keys; they must not repeat one of them.
	Attrs []any
	// Level is the log level; the zero value is Info. A refusal the
	// admin must look at (a loop, a filter that deleted recipients) is
	// logged as a warning.
	Level slog.Level
}

// Refuse returns the refusal of reply by check, with what the check saw.
func Refuse(check string, reply *smtp.SMTPError, attrs ...any) *Refusal {
	return &Refusal{Check: check, Reply: reply, Attrs: attrs}
}

// RefuseErr is Refuse for an error that may be a bare reply (as
// smtputil.ReversePath returns): a bare reply becomes the refusal of
// check, nil stays nil, anything else passes unchanged (smtpd answers it
// as a local error).
func RefuseErr(check string, err error, attrs ...any) error {
	if se, ok := err.(*smtp.SMTPError); ok {
		return Refuse(check, se, attrs...)
	}
	return err
}

// Error is the reply's text, as for a bare reply.
func (r *Refusal) Error() string { return r.Reply.Error() }

// Unwrap gives the reply to errors.As.
func (r *Refusal) Unwrap() error { return r.Reply }

// CheckOf returns the check named by a Refusal in err's chain, "" when
// there is none.
func CheckOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Check
	}
	return ""
}

// dsnOf is the enhanced code as logged (dsn=5.7.1).
func dsnOf(se *smtp.SMTPError) string {
	return fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
}
