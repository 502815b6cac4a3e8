package outbound

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"securerelay/dsn"
	"securerelay/queue"
	"securerelay/smtputil"
)

// DefaultMaxReturnSize is how large a message may be to be returned whole
// with a failure notice (RET=FULL) when BouncerOptions says nothing.
const DefaultMaxReturnSize = 1 << 20

// BouncerOptions configure the DSNs the relay sends.
type BouncerOptions struct {
	// Hostname is the Reporting-MTA; Postmaster the From: of every DSN
	// (MAILER-DAEMON@Hostname if empty).
	Hostname, Postmaster string
	// MaxReturnSize: a failed message the sender asked back whole
	// (RET=FULL) is returned so up to this size, else as its header.
	// 0: DefaultMaxReturnSize.
	MaxReturnSize int64
}

// NewBouncer returns the queue's Bouncer: it builds RFC 3464 DSNs (one per
// kind: failures, delay warnings, success notices) and spools them, with
// the null sender so that a DSN can never cause another DSN. The queue
// calls it only for outbound mail with a non-null sender (inbound mail
// was refused in the dialog instead, and <> must never get a bounce), and
// only for what each recipient asked for (NOTIFY).
func NewBouncer(q func() *queue.Queue, o BouncerOptions) queue.Bouncer {
	if o.MaxReturnSize <= 0 {
		o.MaxReturnSize = DefaultMaxReturnSize
	}
	return func(d *queue.Delivery, reports []queue.Bounce) error {
		byKind := map[string][]queue.Bounce{}
		var kinds []string
		for _, b := range reports {
			k := kindOf(b.Action)
			if byKind[k] == nil {
				kinds = append(kinds, k)
			}
			byKind[k] = append(byKind[k], b)
		}
		var errs []error
		for _, k := range kinds {
			if err := spoolDSN(q(), o, d, k, byKind[k]); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
}

// kindOf groups actions into the notices a sender gets apart: a failure,
// a delay warning, a success (delivered or relayed).
func kindOf(action string) string {
	switch action {
	case queue.ActionDelayed:
		return "delay"
	case queue.ActionDelivered, queue.ActionRelayed:
		return "success"
	}
	return "failure"
}

func spoolDSN(q *queue.Queue, o BouncerOptions, d *queue.Delivery, kind string, reports []queue.Bounce) error {
	env := d.Envelope
	rep := dsn.Report{
		ReportingMTA: o.Hostname,
		Postmaster:   o.Postmaster,
		Sender:       env.From,
		QueueID:      d.ID,
		Arrival:      env.Received,
		EnvID:        env.EnvID,
		Now:          time.Now(),
	}
	// RET=FULL: a failure returns the message whole when it is small
	// enough; everything else returns its header (dsn.Build reads the
	// header off the start of Original).
	limit := int64(64 << 10)
	if kind == "failure" && env.Ret == "FULL" {
		rep.ReturnFull = true
		if d.Size <= o.MaxReturnSize {
			limit = d.Size
		} else {
			rep.TooLargeToReturn = d.Size
		}
	}
	if r, err := d.Open(); err == nil {
		rep.Original, _ = io.ReadAll(io.LimitReader(r, limit))
		r.Close()
	}
	if rep.ReturnFull && rep.TooLargeToReturn == 0 && int64(len(rep.Original)) != d.Size {
		// Not read whole (an I/O error): never return a cut message as
		// if it were the original.
		rep.ReturnFull = false
	}
	for _, b := range reports {
		action := b.Action
		if action == "" {
			action = queue.ActionFailed
		}
		rep.Recipients = append(rep.Recipients, dsn.Recipient{
			Address:           b.Rcpt,
			OriginalRecipient: b.DSN.ORCPT,
			Action:            action,
			Status:            b.Result.Code,
			RemoteMTA:         relayHost(b.Result.Relay),
			Diagnostic:        diagnostic(action, b.Result.Reply),
			Explanation:       b.Result.Explanation,
			LastAttempt:       time.Now(),
		})
	}
	msg, err := dsn.Build(rep)
	if err != nil {
		return fmt.Errorf("building DSN: %w", err)
	}
	id, err := q.Put(queue.Envelope{
		From:   "",
		To:     []string{env.From},
		Origin: queue.OriginLocal,
		Client: "DSN for " + d.ID,
		// RFC 8689 4.4: the DSN returns the original header; it
		// travels under the same requirement.
		RequireTLS: env.RequireTLS,
		// To an internationalised sender (RFC 6531): delivered with
		// SMTPUTF8, or downgraded to A-labels like any message.
		SMTPUTF8: smtputil.NeedsSMTPUTF8(env.From),
	}, bytes.NewReader(msg))
	if err != nil {
		return err
	}
	what := map[string]string{"failure": "sender non-delivery notification", "delay": "sender delay notification",
		"success": "sender delivery status notification"}[kind]
	q.Logger().Info(what, "queue_id", d.ID, "dsn_queue_id", id, "to", env.From, "nrcpt", len(reports))
	return nil
}

// diagnostic is the Diagnostic-Code text: the next hop's reply for a
// failure or delay; for a success our own "accepted after end of DATA" is
// no server's reply and says nothing the action does not.
func diagnostic(action, reply string) string {
	if action == queue.ActionDelivered || action == queue.ActionRelayed {
		return ""
	}
	return reply
}

// relayHost is the host name in a Result.Relay, which reads
// "mx.example.org[192.0.2.1]:25": Remote-MTA wants the name alone (the dsn
// package drops a value that is not a host name).
func relayHost(relay string) string {
	if i := strings.IndexByte(relay, '['); i > 0 {
		return relay[:i]
	}
	return relay
}
