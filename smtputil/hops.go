package smtputil

// HopCounter counts the Received: fields in a message's header as the
// message streams through it (an io.Writer for io.TeeReader). A message
// that has passed too many hops is almost certainly in a mail loop; RFC
// 5321 §6.3 asks relays to detect that by counting Received: fields, and
// Postfix refuses above 50 (hopcount_limit).
//
// Only the header is examined; once the empty line that ends it has gone
// by, Write returns at once, so the cost does not grow with the body.
type HopCounter struct {
	// N is the number of Received: fields seen so far.
	N int

	done    bool
	lineLen int  // octets of the current line so far, CR not counted
	differ  bool // the current line is known not to start with "Received:"
}

const receivedPrefix = "received:"

// Write implements io.Writer; it never fails.
func (h *HopCounter) Write(p []byte) (int, error) {
	if h.done {
		return len(p), nil
	}
	for _, c := range p {
		switch c {
		case '\n':
			if h.lineLen == 0 {
				h.done = true // the empty line that ends the header
				return len(p), nil
			}
			h.lineLen, h.differ = 0, false
			continue
		case '\r':
			continue
		}
		if !h.differ && h.lineLen < len(receivedPrefix) {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != receivedPrefix[h.lineLen] {
				h.differ = true
			} else if h.lineLen == len(receivedPrefix)-1 {
				h.N++
			}
		}
		h.lineLen++
	}
	return len(p), nil
}
