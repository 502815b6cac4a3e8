package e2e

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// asOperator runs the relay's queue command as uid 65534 with the
// setpriv credential flags given (another user than the relay's).
func asOperator(t *testing.T, cred []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", append(append([]string{"--reuid", "65534"}, cred...), append([]string{relayBin, "queue"}, args...)...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("setpriv %v: %v", cred, err)
	}
	return o.String(), e.String(), code
}

// Issue 14: the control socket is "mode 0600 or a configured group": with
// queue.control_group the socket is 0660 with that group, and a member
// who is neither root nor the relay's user lists the queue (read for
// them by the relay) and holds a message, logged as that user; a user
// outside the group is refused and changes nothing.
func TestQueueControlGroup(t *testing.T) {
	requireTool(t, "swaks")
	requireTool(t, "setpriv")
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test acts as another user")
	}
	grp, err := user.LookupGroup("mail") // Debian's, gid 8: nobody (65534) is not in it
	if err != nil {
		t.Skipf("no group mail: %v", err)
	}
	gid, _ := strconv.Atoi(grp.Gid)
	pol := &rcptPolicy{}
	pol.set("dave@example.test", mailboxBusy)
	r := startQueueRelayExtra(t, pol.rcpt, 0, "1h", "  control_group: mail\n")
	mark := r.Mark()
	id := mustSend(t, "--server", r.mx, "--from", "sender@example.org", "--to", "dave@example.test").QueueID()
	r.WaitLog(mark, 10*time.Second, "queue_id="+id, "status=deferred")

	sock := filepath.Join(r.state, "control.sock")
	for _, c := range []struct {
		path string
		mode os.FileMode
		want os.FileMode
	}{{sock, 0o777, 0o660}, {r.state, 0o070, 0o010}} {
		fi, err := os.Stat(c.path)
		if err != nil || fi.Mode().Perm()&c.mode != c.want || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
			t.Fatalf("%s: %v, mode %v gid %v; want group mail (%d) with %o", c.path, err, fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, gid, c.want)
		}
	}
	// The operator reads the config (an admin makes it root:mail 0640)
	// and runs the relay's binary.
	searchableParents(t, r.cfg)
	searchableParents(t, relayBin)
	if err := os.Chown(r.cfg, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(r.cfg, 0o640); err != nil {
		t.Fatal(err)
	}
	member := []string{"--regid", "65534", "--groups", grp.Gid}
	stranger := []string{"--regid", "65534", "--clear-groups"}
	nobody := "uid 65534"
	if u, err := user.LookupId("65534"); err == nil {
		nobody = u.Username
	}

	// The stranger may read the config for this step, so that what
	// refuses it is the socket (and state_dir), not the file.
	if err := os.Chmod(r.cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := asOperator(t, stranger, "hold", id, "--config", r.cfg); code != 1 || !strings.Contains(errOut, "control.sock: dial unix") || !strings.Contains(errOut, "permission denied") {
		t.Errorf("hold by a user outside the group: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := asOperator(t, stranger, "list", "--config", r.cfg); code != 1 || strings.Contains(out, id) {
		t.Errorf("list by a user outside the group: exit %d\n%s%s", code, out, errOut)
	}
	if l := r.queueJSON(t, "--held"); len(l) != 0 {
		t.Fatalf("a stranger's hold changed the queue: %+v", l)
	}
	if err := os.Chmod(r.cfg, 0o640); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := asOperator(t, member, "list", "--config", r.cfg)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "[deferred] dave@example.test: 4.2.0") {
		t.Fatalf("list by a member of the group: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := asOperator(t, member, "hold", id, "--config", r.cfg); code != 0 || !strings.Contains(out, id+": held") {
		t.Fatalf("hold by a member of the group: exit %d\n%s%s", code, out, errOut)
	}
	if l := r.LogLines(`msg="queue control: held"`, "queue_id="+id, "operator="+nobody, "uid=65534", "via=socket"); len(l) != 1 {
		t.Errorf("hold not logged with the member as operator:\n%s", r.log.String())
	}
	if l := r.queueJSON(t, "--held"); len(l) != 1 || l[0].ID != id {
		t.Errorf("after the member's hold: %+v", l)
	}
}
