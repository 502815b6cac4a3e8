package outbound

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"time"

	"securerelay/dsn"
	"securerelay/queue"
	"securerelay/smtputil"
)

// NewBouncer returns the queue's Bouncer: it builds an RFC 3464 DSN for the
// permanently failed recipients and spools it, with the null sender so that
// a DSN can never cause another DSN. The queue calls it only for outbound
// mail with a non-null sender (inbound mail was refused in the dialog
// instead, and <> must never get a bounce).
func NewBouncer(q func() *queue.Queue, hostname, postmaster string) queue.Bouncer {
	return func(d *queue.Delivery, failed []queue.Bounce) error {
		var orig []byte
		if r, err := d.Open(); err == nil {
			orig, _ = io.ReadAll(io.LimitReader(r, 64<<10))
			r.Close()
		}
		rep := dsn.Report{
			ReportingMTA: hostname,
			Postmaster:   postmaster,
			Sender:       d.Envelope.From,
			QueueID:      d.ID,
			Arrival:      d.Envelope.Received,
			Original:     orig,
			Now:          time.Now(),
		}
		for _, f := range failed {
			rep.Recipients = append(rep.Recipients, dsn.Recipient{
				Address:     f.Rcpt,
				Action:      "failed",
				Status:      f.Result.Code,
				RemoteMTA:   relayHost(f.Result.Relay),
				Diagnostic:  f.Result.Reply,
				Explanation: f.Result.Explanation,
				LastAttempt: time.Now(),
			})
		}
		msg, err := dsn.Build(rep)
		if err != nil {
			return fmt.Errorf("building DSN: %w", err)
		}
		id, err := q().Put(queue.Envelope{
			From:   "",
			To:     []string{d.Envelope.From},
			Origin: queue.OriginLocal,
			Client: "DSN for " + d.ID,
			// RFC 8689 4.4: the DSN returns the original header; it
			// travels under the same requirement.
			RequireTLS: d.Envelope.RequireTLS,
			// To an internationalised sender (RFC 6531): delivered with
			// SMTPUTF8, or downgraded to A-labels like any message.
			SMTPUTF8: smtputil.NeedsSMTPUTF8(d.Envelope.From),
		}, bytes.NewReader(msg))
		if err != nil {
			return err
		}
		q().Logger().Info("sender non-delivery notification", "queue_id", d.ID, "dsn_queue_id", id, "to", d.Envelope.From)
		return nil
	}
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
