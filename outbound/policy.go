package outbound

import (
	"io"

	"securerelay/queue"
)

// TLSLevel is what a destination requires of the connection, in RFC 7435
// terms. The per-destination TLS policy (YAML partner rules, MTA-STS, DANE)
// is its own issue; it plugs in through EngineOptions.TLSLevel. The engine
// already guarantees the one rule that must never break: a level above
// TLSMay is never met by a clear-text session, whatever the peer offers.
type TLSLevel int

// Levels, weakest first.
const (
	// TLSNone never uses STARTTLS.
	TLSNone TLSLevel = iota
	// TLSMay uses STARTTLS when offered and falls back to clear text when
	// it is not offered or the handshake fails (opportunistic).
	TLSMay
	// TLSEncrypt requires STARTTLS (certificate not verified); without
	// it the delivery is deferred, never sent in clear.
	TLSEncrypt
)

func (l TLSLevel) String() string {
	switch l {
	case TLSNone:
		return "none"
	case TLSMay:
		return "may"
	case TLSEncrypt:
		return "encrypt"
	}
	return "unknown"
}

// Transform rewrites the bytes that leave for one transaction: the seam for
// DKIM signing and OpenPGP encryption, which must act on exactly what is
// sent and may depend on the session's TLS (tlsInfo is "" in clear text).
// An error defers those recipients.
type Transform func(d *queue.Delivery, t Target, rcpts []string, tlsInfo string, data io.Reader) (io.Reader, error)
