package milterpeers

import (
	"bufio"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// scan runs one message through the milter at addr with go-milter's
// client, as an MTA would, and returns the final action and the
// modifications.
func scan(t *testing.T, addr, msg string) (*gomilter.Action, []gomilter.ModifyAction) {
	t.Helper()
	network, a, ok := strings.Cut(addr, ":")
	if !ok || network != "unix" {
		t.Fatalf("milter address %q: want unix:/path", addr)
	}
	c := gomilter.NewClient(network, a,
		gomilter.WithReadTimeout(30*time.Second), gomilter.WithWriteTimeout(10*time.Second))
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroQueueId, "4XyZ1abc")
	macros.Set(gomilter.MacroMTAFQDN, "mx.example.net")
	s, err := c.Session(macros)
	if err != nil {
		t.Fatalf("milter session with %s: %v", addr, err)
	}
	defer s.Close()
	step := func(what string, act *gomilter.Action, err error) bool {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return act.Type == gomilter.ActionContinue || act.Type == gomilter.ActionAccept
	}
	if act, err := s.Conn("mail.sender.example", gomilter.FamilyInet, 40123, "192.0.2.7"); !step("connect", act, err) {
		return act, nil
	}
	if act, err := s.Helo("mail.sender.example"); !step("helo", act, err) {
		return act, nil
	}
	if act, err := s.Mail("<alice@sender.example>", ""); !step("mail", act, err) {
		return act, nil
	}
	if act, err := s.Rcpt("<bob@example.net>", ""); !step("rcpt", act, err) {
		return act, nil
	}
	if act, err := s.DataStart(); !step("data", act, err) {
		return act, nil
	}
	hdr, body, _ := strings.Cut(msg, "\r\n\r\n")
	// One field per line: the builders do not fold.
	sc := bufio.NewScanner(strings.NewReader(hdr))
	for sc.Scan() {
		name, value, _ := strings.Cut(sc.Text(), ":")
		if act, err := s.HeaderField(name, strings.TrimPrefix(value, " "), nil); !step("header", act, err) {
			return act, nil
		}
	}
	if act, err := s.HeaderEnd(); !step("eoh", act, err) {
		return act, nil
	}
	if act, err := s.BodyChunk([]byte(body)); !step("body", act, err) {
		return act, nil
	}
	mods, act, err := s.End()
	if err != nil {
		t.Fatalf("end of message: %v", err)
	}
	return act, mods
}

func addedHeaders(mods []gomilter.ModifyAction) map[string]string {
	h := map[string]string{}
	for _, m := range mods {
		if m.Type == gomilter.ActionAddHeader || m.Type == gomilter.ActionInsertHeader {
			h[m.HeaderName] = m.HeaderValue
		}
	}
	return h
}

func gone(pid int) bool { return errors.Is(syscall.Kill(-pid, 0), syscall.ESRCH) }

// TestScanners: both scanners come up, give the verdicts the builders
// promise, add their headers to a clean message, and leave nothing
// behind. A pool hands out one instance per kind.
func TestScanners(t *testing.T) {
	var pool Pool
	defer pool.Close()

	t.Run("rspamd", func(t *testing.T) {
		in := pool.Rspamd(t)
		if again := pool.Rspamd(t); again != in {
			t.Error("the pool started a second rspamd")
		}
		act, _ := scan(t, in.Addr, GTUBEMessage("alice@sender.example", "bob@example.net"))
		if act.Type != gomilter.ActionRejectWithCode || act.SMTPCode != 554 || act.SMTPReply != "554 5.7.1 Gtube pattern" {
			t.Errorf("GTUBE: %v, want 554 5.7.1 Gtube pattern\n%s", act, in.Logs())
		}
		act, mods := scan(t, in.Addr, CleanMessage("alice@sender.example", "bob@example.net"))
		h := addedHeaders(mods)
		if act.Type != gomilter.ActionAccept || !strings.HasPrefix(h["X-Spamd-Result"], "default: False [") ||
			h["X-Rspamd-Queue-Id"] != "4XyZ1abc" {
			t.Errorf("clean: %v, headers %q\n%s", act, h, in.Logs())
		}
	})

	t.Run("clamav", func(t *testing.T) {
		in := pool.Clamav(t)
		act, _ := scan(t, in.Addr, EICARMessage("alice@sender.example", "bob@example.net"))
		if want := "550 5.7.1 Virus found: " + EICARSignature + ".UNOFFICIAL"; act.Type != gomilter.ActionRejectWithCode || act.SMTPReply != want {
			t.Errorf("EICAR: %v, want %s\n%s", act, want, in.Logs())
		}
		act, mods := scan(t, in.Addr, CleanMessage("alice@sender.example", "bob@example.net"))
		if h := addedHeaders(mods); act.Type != gomilter.ActionAccept || h["X-Virus-Status"] != "Clean" {
			t.Errorf("clean: %v, headers %q\n%s", act, h, in.Logs())
		}

		// clamd gone: clamav-milter defers (OnFail Defer).
		if !in.StopDaemon("clamd") || in.StopDaemon("no-such-daemon") {
			t.Fatal("StopDaemon")
		}
		act, _ = scan(t, in.Addr, CleanMessage("alice@sender.example", "bob@example.net"))
		if act.Type != gomilter.ActionTempFail {
			t.Errorf("clean without clamd: %v, want tempfail", act)
		}

		pids := []int{in.procs[0].cmd.Process.Pid, in.procs[1].cmd.Process.Pid}
		pool.Forget("clamav")
		for _, pid := range pids {
			if !gone(pid) {
				t.Errorf("process group %d still there after Forget", pid)
			}
		}
		if _, err := os.Stat(in.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state folder %s: %v, want it removed", in.Dir, err)
		}
		if again := pool.Clamav(t); again == in {
			t.Error("Forget kept the instance")
		}
	})

	// A private instance ends with its test.
	var priv *Instance
	t.Run("private", func(t *testing.T) {
		priv = StartClamav(t)
	})
	if priv == nil {
		t.Skip("no private instance")
	}
	if !gone(priv.procs[1].cmd.Process.Pid) {
		t.Error("the private clamav-milter outlived its test")
	}
	if _, err := os.Stat(priv.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state folder %s: %v, want it removed", priv.Dir, err)
	}
}
