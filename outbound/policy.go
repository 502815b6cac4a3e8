package outbound

import (
	"io"

	"securerelay/queue"
)

// Transform rewrites the bytes that leave for one transaction: the seam for
// DKIM signing, which must act on exactly what is sent (after the OpenPGP
// encryption, when there is one) and may depend on the session's TLS. An
// error defers those recipients.
type Transform func(m *Outgoing) (io.Reader, error)

// Outgoing is one transaction's message as a Transform sees it.
type Outgoing struct {
	Delivery *queue.Delivery
	Target   Target
	// Rcpts are the recipients the next hop accepted for this transaction.
	Rcpts []string
	// TLS describes the session ("TLS1.3 TLS_AES_128_GCM_SHA256"), "" in
	// clear text.
	TLS string
	// Data is the message to send: the spooled copy, or the encrypted or
	// converted one.
	Data io.Reader
	// Reopen reads the same message again from its start (the DKIM signer
	// reads a large message once to sign it and once to send it).
	Reopen func() (io.ReadCloser, error)
	// Encrypted: Data is the OpenPGP-encrypted form of the spooled message.
	Encrypted bool
	// Converted: Data is the 7-bit form of the spooled message, for a next
	// hop without 8BITMIME (package downgrade).
	Converted bool
}
