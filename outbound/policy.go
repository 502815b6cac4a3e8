package outbound

import (
	"io"

	"securerelay/queue"
)

// Transform rewrites the bytes that leave for one transaction: the seam for
// DKIM signing and OpenPGP encryption, which must act on exactly what is
// sent and may depend on the session's TLS (tlsInfo is "" in clear text).
// An error defers those recipients.
type Transform func(d *queue.Delivery, t Target, rcpts []string, tlsInfo string, data io.Reader) (io.Reader, error)
