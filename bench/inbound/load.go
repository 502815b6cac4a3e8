package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// message is one of the generated messages, split at the Message-ID's
// local part so that every copy sent gets its own.
type message struct {
	kind      string
	pre, post []byte // CRLF; the SMTP form is dot-stuffed at load time
}

func loadMessages(dir string, kinds []string) ([]*message, error) {
	var out []*message
	for _, k := range kinds {
		raw, err := os.ReadFile(filepath.Join(dir, k+".eml"))
		if err != nil {
			return nil, err
		}
		pre, post, ok := bytes.Cut(raw, []byte(midToken))
		if !ok {
			return nil, fmt.Errorf("%s.eml has no %s", k, midToken)
		}
		out = append(out, &message{kind: k, pre: pre, post: post})
	}
	return out, nil
}

// dotStuff returns the SMTP DATA form of a CRLF message part: a line
// starting with "." gets another one (RFC 5321 §4.5.2). Parts are split
// only inside a header line, never at a line start, except the first.
func dotStuff(p []byte, atLineStart bool) []byte {
	var b bytes.Buffer
	for i, c := range p {
		if c == '.' && ((i == 0 && atLineStart) || (i > 0 && p[i-1] == '\n')) {
			b.WriteByte('.')
		}
		b.WriteByte(c)
	}
	return b.Bytes()
}

// sample is one message sent: what the client saw and when.
type sample struct {
	kind    string
	greet   time.Duration // connect → final 220 line
	eod     time.Duration // end-of-data "." written → reply read
	session time.Duration // connect → QUIT answered
	setup   time.Duration // milters only: connect … RCPT before the data phase
	err     string        // empty: accepted (250)
}

// readReply reads one SMTP reply (all its lines) and returns its code and
// the last line.
func readReply(r *bufio.Reader) (int, string, error) {
	for range 100 {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, strings.TrimSpace(line), err
		}
		if len(line) < 4 {
			return 0, line, fmt.Errorf("malformed reply %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return 0, line, fmt.Errorf("malformed reply %q", line)
		}
		if line[3] == ' ' || line[3] == '\r' || line[3] == '\n' {
			return code, strings.TrimSpace(line), nil
		}
	}
	return 0, "", errors.New("reply of more than 100 lines")
}

// sendSMTP delivers one message in a new session, as smtp-source does
// (no pipelining, one recipient), and times the greeting and the reply to
// the end of data.
func sendSMTP(addr string, m *message, rcpt, id string, timeout time.Duration) (s sample) {
	s.kind = m.kind
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		s.err = err.Error()
		return s
	}
	defer c.Close()
	c.SetDeadline(start.Add(timeout)) //nolint:errcheck // a TCP socket
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriterSize(c, 256<<10)
	step := func(cmd string, want int) bool {
		if cmd != "" {
			w.WriteString(cmd + "\r\n") //nolint:errcheck // Flush reports it
			if err := w.Flush(); err != nil {
				s.err = cmd + ": " + err.Error()
				return false
			}
		}
		code, line, err := readReply(r)
		switch {
		case err != nil:
			s.err = fmt.Sprintf("%s: %v %s", cmdName(cmd), err, line)
		case code != want:
			s.err = fmt.Sprintf("%s: %s", cmdName(cmd), line)
		}
		return s.err == ""
	}
	if !step("", 220) {
		return s
	}
	s.greet = time.Since(start)
	if !step("EHLO "+senderHost, 250) || !step("MAIL FROM:<"+sender+">", 250) ||
		!step("RCPT TO:<"+rcpt+">", 250) || !step("DATA", 354) {
		return s
	}
	w.Write(m.pre)         //nolint:errcheck // Flush reports it
	w.WriteString(id)      //nolint:errcheck
	w.Write(m.post)        //nolint:errcheck
	w.WriteString(".\r\n") //nolint:errcheck
	if err := w.Flush(); err != nil {
		s.err = "data: " + err.Error()
		return s
	}
	t := time.Now()
	if !step("", 250) {
		return s
	}
	s.eod = time.Since(t)
	step("QUIT", 221)
	s.err = "" // a lost QUIT reply does not undo the 250
	s.session = time.Since(start)
	return s
}

func cmdName(cmd string) string {
	if cmd == "" {
		return "reply"
	}
	name, _, _ := strings.Cut(cmd, " ")
	return name
}

// smtpForm returns the messages in their SMTP DATA form.
func smtpForm(msgs []*message) []*message {
	out := make([]*message, len(msgs))
	for i, m := range msgs {
		out[i] = &message{kind: m.kind, pre: dotStuff(m.pre, true), post: dotStuff(m.post, false)}
	}
	return out
}

// runLoad sends n messages over `sessions` parallel workers, message i
// being msgs[i%len] to recipient i, with Message-ID local part tag.i. send
// does one message; the samples come back in no particular order.
func runLoad(n, sessions int, msgs []*message, tag string, send func(m *message, rcpt, id string) sample) []sample {
	var next atomic.Int64
	out := make([]sample, n)
	var wg sync.WaitGroup
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				out[i] = send(msgs[i%len(msgs)], rcptAddr(i), fmt.Sprintf("%s.%d", tag, i))
			}
		}()
	}
	wg.Wait()
	return out
}

// milterMessage is a message as an MTA hands it to milters: header fields
// (our Received first, as both relays add one) and the body.
type milterMessage struct {
	kind   string
	fields [][2]string // name, value without the space after the colon; folds as LF TAB
	body   []byte
}

func milterForm(m *message, rcpt, id string) (*milterMessage, error) {
	raw := string(m.pre) + id + string(m.post)
	hdr, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		return nil, errors.New("message without a body")
	}
	mm := &milterMessage{kind: m.kind, body: []byte(body)}
	mm.fields = append(mm.fields, [2]string{"Received", "from " + senderHost + " (" + senderHost + " [127.0.0.1])\n\tby mx." + rcptDomain +
		" with ESMTP id " + id + "\n\tfor <" + rcpt + ">; " + time.Now().UTC().Format(time.RFC1123Z)})
	for _, line := range strings.Split(hdr, "\r\n") {
		if line != "" && (line[0] == ' ' || line[0] == '\t') && len(mm.fields) > 1 {
			mm.fields[len(mm.fields)-1][1] += "\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("header line %q", line)
		}
		mm.fields = append(mm.fields, [2]string{name, strings.TrimPrefix(value, " ")})
	}
	return mm, nil
}

// scanMilters is the scanners' own time for one message: what an MTA that
// had nothing else to do would wait at the end of data. It opens a session
// with each milter and goes through connect, HELO, MAIL, RCPT and DATA
// (timed apart as setup, which Postfix does before the data arrives),
// then, timed, hands the message to each milter in turn (headers, body,
// end of message) as Postfix's cleanup and securerelay do, and waits for
// each verdict.
func scanMilters(addrs []string, m *message, rcpt, id string) (s sample) {
	s.kind = m.kind
	mm, err := milterForm(m, rcpt, id)
	if err != nil {
		s.err = err.Error()
		return s
	}
	start := time.Now()
	var sessions []*gomilter.ClientSession
	defer func() {
		for _, ss := range sessions {
			ss.Close() //nolint:errcheck // QUIT on a finished session
		}
	}()
	for _, a := range addrs {
		network, path, _ := strings.Cut(a, ":")
		macros := gomilter.NewMacroBag()
		macros.Set(gomilter.MacroMTAFQDN, "mx."+rcptDomain)
		macros.Set(gomilter.MacroDaemonName, "mx."+rcptDomain)
		macros.Set(gomilter.MacroQueueId, id)
		macros.Set(gomilter.MacroMailAddr, sender)
		macros.Set(gomilter.MacroRcptAddr, rcpt)
		c := gomilter.NewClient(network, path, gomilter.WithReadTimeout(2*time.Minute), gomilter.WithWriteTimeout(30*time.Second))
		ss, err := c.Session(macros)
		if err != nil {
			s.err = a + ": " + err.Error()
			return s
		}
		sessions = append(sessions, ss)
		ok := func(act *gomilter.Action, err error) bool {
			if err != nil {
				s.err = a + ": " + err.Error()
				return false
			}
			if act.Type != gomilter.ActionContinue && act.Type != gomilter.ActionAccept {
				s.err = fmt.Sprintf("%s: action %c before the data", a, act.Type)
				return false
			}
			return true
		}
		if !ok(ss.Conn(senderHost, gomilter.FamilyInet, 40000, "127.0.0.1")) || !ok(ss.Helo(senderHost)) ||
			!ok(ss.Mail("<"+sender+">", "")) || !ok(ss.Rcpt("<"+rcpt+">", "")) || !ok(ss.DataStart()) {
			return s
		}
	}
	s.setup = time.Since(start)
	t := time.Now()
	// Each milter sees the header changes of the ones before it, as an
	// MTA hands them on (Postfix's milter_message: "Each milter sees the
	// result of any changes made by a preceding milter"): clamav-milter
	// scans rspamd's added fields too, one round trip each.
	fields := mm.fields
	for i, ss := range sessions {
		if !ss.ProtocolOption(gomilter.OptNoHeaders) {
			lead := ""
			if ss.ProtocolOption(gomilter.OptHeaderLeadingSpace) {
				lead = " "
			}
			for _, f := range fields {
				if _, err := ss.HeaderField(f[0], lead+f[1], nil); err != nil {
					s.err = addrs[i] + ": header: " + err.Error()
					return s
				}
				if ss.Skip() {
					break
				}
			}
		}
		if _, err := ss.HeaderEnd(); err != nil {
			s.err = addrs[i] + ": end of header: " + err.Error()
			return s
		}
		mods, act, err := ss.BodyReadFrom(bytes.NewReader(mm.body))
		if err != nil {
			s.err = addrs[i] + ": body: " + err.Error()
			return s
		}
		fields = applyHeaderMods(fields, mods)
		if act.Type != gomilter.ActionContinue && act.Type != gomilter.ActionAccept {
			s.err = fmt.Sprintf("%s: verdict %c %d %s", addrs[i], act.Type, act.SMTPCode, act.SMTPReply)
			return s
		}
	}
	s.eod = time.Since(t)
	s.session = time.Since(start)
	return s
}

// applyHeaderMods applies a milter's header changes to fields, as the
// next milter in an MTA's chain sees them: an added field goes last, an
// inserted one at its index (1-based, 0 first), a changed one replaces
// the index-th field of that name (an empty value deletes it).
func applyHeaderMods(fields [][2]string, mods []gomilter.ModifyAction) [][2]string {
	out := slices.Clone(fields)
	for _, m := range mods {
		value := strings.TrimPrefix(strings.ReplaceAll(m.HeaderValue, "\r\n", "\n"), " ")
		switch m.Type {
		case gomilter.ActionAddHeader:
			out = append(out, [2]string{m.HeaderName, value})
		case gomilter.ActionInsertHeader:
			at := min(max(int(m.HeaderIndex)-1, 0), len(out))
			out = slices.Insert(out, at, [2]string{m.HeaderName, value})
		case gomilter.ActionChangeHeader:
			n := 0
			for j, f := range out {
				if !strings.EqualFold(f[0], m.HeaderName) {
					continue
				}
				if n++; n == int(m.HeaderIndex) {
					if value == "" {
						out = slices.Delete(out, j, j+1)
					} else {
						out[j][1] = value
					}
					break
				}
			}
		}
	}
	return out
}
