package smtpd_test

import (
	"reflect"
	"strings"
	"testing"

	"securerelay/smtpd"
	"securerelay/smtputil"
)

// Stats counts a session once (a second EHLO after STARTTLS screens
// again but is the same session), under the role's verdict or the check
// that refused the client; refusals by check and reply code, in step
// with Refusals (the log's count); accepted messages and their bytes.
func TestStats(t *testing.T) {
	role := &fakeRole{
		connect: func(st *smtpd.State) error {
			if st.Helo == "denied.test" { // stands for the deny list
				return smtpd.Refuse("deny", smtputil.ClientDenied(st.RemoteIP.String()))
			}
			st.Screen = "listed"
			return nil
		},
		rcpt: func(_ *smtpd.State, to string) (string, error) {
			if strings.HasPrefix(to, "nobody@") {
				return "", smtpd.Refuse("unknown_recipient", smtputil.RecipientUnknown(to))
			}
			return to, nil
		},
	}
	h := start(t, role, nil)

	c := dial(t, h.addr)
	c.ehlo("client.test")
	c.starttls()
	c.ehlo("client.test")
	c.expect("MAIL FROM:<a@client.test>", 250, "")
	c.expect("RCPT TO:<nobody@ours.test>", 550, "5.1.1")
	c.expect("RCPT TO:<b@ours.test>", 250, "")
	if code, text := c.data("Subject: x\r\n\r\nbody\r\n.\r\n"); code != 250 {
		t.Fatalf("DATA: %s", text)
	}
	c.expect("QUIT", 221, "")

	d := dial(t, h.addr)
	d.send("EHLO denied.test")
	if code, text := d.reply(); code != 554 {
		t.Fatalf("EHLO from a denied client: %s", text)
	}

	st := h.srv.Stats()
	if want := map[string]int64{"listed": 1, "deny": 1}; !reflect.DeepEqual(st.Sessions, want) {
		t.Errorf("Sessions = %v, want %v", st.Sessions, want)
	}
	want := map[smtpd.RefusalKey]int64{{Check: "unknown_recipient", Code: 550}: 1, {Check: "deny", Code: 554}: 1}
	if !reflect.DeepEqual(st.Refusals, want) {
		t.Errorf("Refusals = %v, want %v", st.Refusals, want)
	}
	if r := h.srv.Refusals(); r["unknown_recipient"] != 1 || r["deny"] != 1 {
		t.Errorf("the log's counts: %v", r)
	}
	if st.Accepted != 1 || st.AcceptedBytes == 0 {
		t.Errorf("Accepted = %d (%d bytes), want 1", st.Accepted, st.AcceptedBytes)
	}
}
