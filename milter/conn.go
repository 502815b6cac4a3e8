package milter

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// maxPacket bounds one packet from a milter. libmilter sends body
// replacements in chunks of at most 64 KiB (1 MiB with SMFIP_MDS_1M); all
// other replies are short strings.
const maxPacket = 1<<20 + 64

// guardConn sits between go-milter and the socket. It follows the packet
// framing of what the milter sends (4-byte length, then the packet) and
// fails the read before go-milter sees a length it must not act on: zero
// (go-milter v0.10.1 indexes the empty packet and panics) or more than
// maxPacket (it would allocate up to 512 MiB). It also caps the total a
// milter may send in one conversation, because go-milter collects all
// end-of-message replies, body replacements included, in memory before it
// returns them. It coalesces writes: go-milter writes each packet's
// header and data separately, plus a macro packet before most events, so
// without it one event costs up to four write system calls (and four TCP
// segments); with it, small writes wait in wbuf until the next read or a
// large write, which goes out with them in one writev. And it counts
// bytes, for the benchmarks.
type guardConn struct {
	net.Conn
	budget       int64 // bytes the milter may still send
	writeTimeout time.Duration
	wbuf         []byte
	vec          net.Buffers // reused, so that a writev allocates nothing

	rmem []byte // the read buffer, rbufSize
	rbuf []byte // what is left of it to hand out
	rerr error  // the error of the read that filled it

	hdr    [4]byte
	hdrN   int
	remain uint32 // bytes left in the current packet

	// Only the conversation's goroutine reads and writes, so the
	// counters need no lock.
	read, written int64
}

// rbufSize is the read buffer: go-milter reads each packet's 4-byte
// length and then its data, two reads (and, unbuffered, two system calls)
// per reply; most replies are a few bytes and arrive together.
const rbufSize = 4 << 10

func (c *guardConn) Read(p []byte) (int, error) {
	if len(c.rbuf) > 0 {
		n := copy(p, c.rbuf)
		c.rbuf = c.rbuf[n:]
		return n, nil
	}
	if c.rerr != nil {
		// The error of the read that filled the buffer, after its data.
		err := c.rerr
		c.rerr = nil
		return 0, err
	}
	if err := c.flush(nil); err != nil {
		return 0, err
	}
	if len(p) >= rbufSize {
		n, err := c.Conn.Read(p)
		if ferr := c.check(p[:n]); ferr != nil {
			return 0, ferr
		}
		return n, err
	}
	if c.rmem == nil {
		c.rmem = make([]byte, rbufSize)
	}
	n, err := c.Conn.Read(c.rmem)
	if ferr := c.check(c.rmem[:n]); ferr != nil {
		return 0, ferr
	}
	k := copy(p, c.rmem[:n])
	c.rbuf = c.rmem[k:n]
	if len(c.rbuf) > 0 {
		c.rerr = err
		return k, nil
	}
	return k, err
}

// check counts and checks the bytes b as they arrive from the milter,
// before go-milter sees any of them.
func (c *guardConn) check(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	c.read += int64(len(b))
	if c.budget -= int64(len(b)); c.budget < 0 {
		return fmt.Errorf("milter sent more than its byte budget for one message")
	}
	return c.scan(b)
}

func (c *guardConn) scan(b []byte) error {
	for len(b) > 0 {
		if c.remain > 0 {
			k := min(uint32(len(b)), c.remain)
			c.remain -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hdrN:], b)
		c.hdrN += k
		b = b[k:]
		if c.hdrN < 4 {
			return nil
		}
		c.hdrN = 0
		l := binary.BigEndian.Uint32(c.hdr[:])
		switch {
		case l == 0:
			return fmt.Errorf("milter sent a packet of length 0")
		case l > maxPacket:
			return fmt.Errorf("milter sent a packet of %d bytes (limit %d)", l, maxPacket)
		}
		c.remain = l
	}
	return nil
}

const wbufSize = 4 << 10

var wbufPool = sync.Pool{New: func() any { b := make([]byte, 0, wbufSize); return &b }}

func (c *guardConn) Write(p []byte) (int, error) {
	if len(c.wbuf)+len(p) <= wbufSize {
		if c.wbuf == nil {
			c.wbuf = (*wbufPool.Get().(*[]byte))[:0]
		}
		c.wbuf = append(c.wbuf, p...)
		return len(p), nil
	}
	if err := c.flush(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush writes wbuf and then p, in one writev, within the write time-out
// (go-milter's own deadline only covers the Write calls it makes).
func (c *guardConn) flush(p []byte) error {
	if len(c.wbuf) == 0 && len(p) == 0 {
		return nil
	}
	if c.writeTimeout > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
		defer c.Conn.SetWriteDeadline(time.Time{})
	}
	var n int64
	var err error
	if len(c.wbuf) == 0 {
		var k int
		k, err = c.Conn.Write(p)
		n = int64(k)
	} else {
		c.vec = append(c.vec[:0], c.wbuf, p)
		n, err = c.vec.WriteTo(c.Conn)
	}
	c.written += n
	c.wbuf = c.wbuf[:0]
	return err
}

// Close sends what is still buffered (the QUIT), then closes.
func (c *guardConn) Close() error {
	ferr := c.flush(nil)
	if c.wbuf != nil {
		// A pointer to a variable of its own: putting &c.wbuf would hand
		// the pool this field, which the next line sets to nil (so the
		// pool only ever gave out nil, and the next conversation read a
		// field this one writes).
		b := c.wbuf[:0]
		wbufPool.Put(&b)
		c.wbuf = nil
	}
	if err := c.Conn.Close(); err != nil {
		return err
	}
	return ferr
}

// dialer is a go-milter Dialer for one conversation: it dials with the
// caller's context and keeps the connection, so that the conversation can
// close it when the context ends and read its counters.
type dialer struct {
	ctx          context.Context
	timeout      time.Duration
	writeTimeout time.Duration
	budget       int64
	conn         *guardConn
}

func (d *dialer) Dial(network, addr string) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.timeout}
	c, err := nd.DialContext(d.ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.conn = &guardConn{Conn: c, budget: d.budget, writeTimeout: d.writeTimeout}
	return d.conn, nil
}

// parseAddress turns a milter socket address into a network and address
// for net.Dial. It accepts Postfix's forms ("unix:/path", "inet:host:port",
// "inet6:[::1]:port"), Sendmail's ("inet:port@host", "local:/path") and
// the plain ones ("host:port", "/path").
func parseAddress(s string) (network, addr string, err error) {
	scheme, rest, ok := strings.Cut(s, ":")
	switch {
	case strings.HasPrefix(s, "/"):
		return "unix", s, nil
	case ok && (scheme == "unix" || scheme == "local"):
		if rest == "" {
			return "", "", fmt.Errorf("milter address %q: empty socket path", s)
		}
		return "unix", rest, nil
	case ok && (scheme == "inet" || scheme == "inet6"):
		if port, host, ok := strings.Cut(rest, "@"); ok {
			rest = net.JoinHostPort(host, port)
		}
		if _, _, err := net.SplitHostPort(rest); err != nil {
			return "", "", fmt.Errorf("milter address %q: %v", s, err)
		}
		return "tcp", rest, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", "", fmt.Errorf("milter address %q: want unix:/path, inet:host:port or host:port", s)
	}
	return "tcp", s, nil
}
