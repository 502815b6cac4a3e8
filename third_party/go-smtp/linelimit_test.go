package smtp_test

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// securerelay patch 6: MaxLineLength limits command lines as they are read,
// not the bytes read ahead from the connection. A BDAT chunk pipelined
// behind its command, and a DATA line, may be longer: the backend sees
// them (and judges them); the session goes on.
func TestServer_LineLimitMessageData(t *testing.T) {
	be, s, c, scanner := testServerAuthenticated(t)
	defer s.Close()
	defer c.Close()
	long := strings.Repeat("x", 3*s.MaxLineLength)

	io.WriteString(c, "MAIL FROM:<root@nsa.gov>\r\nRCPT TO:<root@gchq.gov.uk>\r\n")
	scanner.Scan()
	scanner.Scan()
	chunk := "Subject: a\r\n\r\n" + long + "\r\n"
	io.WriteString(c, "BDAT "+strconv.Itoa(len(chunk))+" LAST\r\n"+chunk)
	scanner.Scan()
	if !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Fatal("pipelined BDAT chunk with a long line:", scanner.Text())
	}

	io.WriteString(c, "MAIL FROM:<root@nsa.gov>\r\nRCPT TO:<root@gchq.gov.uk>\r\nDATA\r\n")
	scanner.Scan()
	scanner.Scan()
	scanner.Scan()
	if !strings.HasPrefix(scanner.Text(), "354 ") {
		t.Fatal("DATA:", scanner.Text())
	}
	io.WriteString(c, "Subject: b\r\n\r\n"+long+"\r\n.\r\n")
	scanner.Scan()
	if !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Fatal("DATA with a long line:", scanner.Text())
	}
	if len(be.messages) != 2 || !strings.Contains(string(be.messages[1].Data), long+"\r\n") {
		t.Fatalf("backend got %d messages", len(be.messages))
	}

	// A command line is still limited.
	io.WriteString(c, "NOOP "+long+"\r\n")
	scanner.Scan()
	if !strings.HasPrefix(scanner.Text(), "500 ") {
		t.Fatal("over-long command:", scanner.Text())
	}
}

// securerelay patch 7: CommandHook sees every command, also those go-smtp
// answers itself, and its error is the reply instead of the command's.
func TestServer_CommandHook(t *testing.T) {
	var seen []string
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.CommandHook = func(_ *smtp.Conn, cmd string) error {
			seen = append(seen, cmd)
			if cmd == "VRFY" {
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "enough"}
			}
			if cmd == "HELP" {
				return errors.New("plain error")
			}
			return nil
		}
	})
	defer s.Close()
	defer c.Close()
	io.WriteString(c, "noop\r\n")
	scanner.Scan()
	if !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Fatal("NOOP:", scanner.Text())
	}
	io.WriteString(c, "VRFY x\r\n")
	scanner.Scan()
	if scanner.Text() != "421 4.7.0 enough" {
		t.Fatal("VRFY refused by the hook:", scanner.Text())
	}
	io.WriteString(c, "HELP\r\n")
	scanner.Scan()
	if scanner.Text() != "421 4.7.0 plain error" {
		t.Fatal("HELP refused by the hook:", scanner.Text())
	}
	if strings.Join(seen, ",") != "NOOP,VRFY,HELP" {
		t.Fatalf("hook saw %v", seen)
	}
}
