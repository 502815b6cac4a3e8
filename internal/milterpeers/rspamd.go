package milterpeers

import (
	"os"
	"path/filepath"
	"strconv"

	"securerelay/internal/loopback"
)

// rspamdOffline are the rspamd modules that need Redis, DNS, HTTP maps or
// remote services; each is disabled so that no scan leaves the machine or
// waits for a time-out.
var rspamdOffline = []string{
	"fuzzy_check", "rbl", "surbl", "spf", "dkim", "dmarc", "arc", "asn", "hfilter", "emails",
	"phishing", "multimap", "mid", "whitelist", "rspamd_update", "reputation", "dcc",
	"url_redirector", "replies", "neural", "ratelimit", "greylist", "history_redis", "mx_check",
	"external_services", "antivirus", "metadata_exporter", "clickhouse", "elastic", "p0f", "bimi",
	"dkim_signing", "external_relay", "spamassassin", "maillist", "once_received", "metric_exporter",
	"aws_s3", "trie", "spamtrap",
}

// RspamdHeaders are the fields rspamd's milter_headers module is told to
// add (X-Spam-Level only when the score is above zero).
var RspamdHeaders = []string{"X-Spamd-Result", "X-Rspamd-Server", "X-Rspamd-Queue-Id", "X-Spam-Level",
	"X-Spam-Status", "Authentication-Results"}

func startRspamd(bin string) (*Instance, error) {
	return launch("milterpeers-rspamd-", "_rspamd", func(in *Instance, uid, gid int) error {
		return setupRspamd(in, uid, gid, bin)
	})
}

func setupRspamd(in *Instance, uid, gid int, bin string) error {
	dir := in.Dir
	local := filepath.Join(dir, "conf")
	dbdir, rundir, logdir := filepath.Join(dir, "db"), filepath.Join(dir, "run"), filepath.Join(dir, "log")
	if err := mkdirs(uid, gid, dbdir, rundir, logdir); err != nil {
		return err
	}
	// A Unix socket in our own folder: a TCP port picked "free" could be
	// taken by another test process before rspamd binds it (this made CI
	// dial a stranger's listener and then find nothing there).
	sock := filepath.Join(rundir, "milter.sock")
	// Nothing listens there: a lookup some module still attempts fails at
	// once instead of leaving the machine.
	deadDNS, err := loopback.Free()
	if err != nil {
		return err
	}
	files := map[string]string{
		// The stock rules and scores (common.conf), and only the workers
		// below: no controller, no fuzzy storage, the normal worker off
		// its stock port 11333 (which clamav-milter setups use).
		"rspamd.conf": `.include "$CONFDIR/common.conf"
options {
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}
worker "rspamd_proxy" {
    bind_socket = "` + sock + ` mode=0666";
    milter = yes;
    timeout = 120s;
    count = 1;
    spam_header = "X-Spam";
    reject_message = "Spam message rejected";
    upstream "local" { default = yes; self_scan = yes; }
}
`,
		"conf/local.d/options.inc": `filters = "chartable,regexp";
dns { nameserver = ["127.0.0.1:` + strconv.Itoa(deadDNS) + `"]; timeout = 0.5s; retransmits = 1; }
`,
		// The stock MIME type map starts with an https URL.
		"conf/override.d/mime_types.conf": `file = ["${CONFDIR}/maps.d/mime_types.inc"];` + "\n",
		// Every test client is 127.0.0.1, which rspamd counts as local and
		// would add no headers for.
		"conf/local.d/milter_headers.conf": `use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-level", "x-spam-status", "authentication-results"];
skip_local = false;
skip_authenticated = false;
`,
		"conf/local.d/redis.conf": "servers = \"\";\n",
	}
	for _, m := range rspamdOffline {
		files["conf/local.d/"+m+".conf"] = "enabled = false;\n"
	}
	if err := writeFiles(dir, files); err != nil {
		return err
	}
	argv := []string{bin, "-f", "-c", filepath.Join(dir, "rspamd.conf"),
		"--var=CONFDIR=/etc/rspamd", "--var=LOCAL_CONFDIR=" + local,
		"--var=DBDIR=" + dbdir, "--var=RUNDIR=" + rundir, "--var=LOGDIR=" + logdir}
	if os.Geteuid() == 0 {
		if uid != 0 {
			argv = append(argv, "-u", "_rspamd", "-g", "_rspamd")
		} else {
			argv = append(argv, "-i") // no service user: let the workers run as root
		}
	}
	if err := in.run("rspamd", filepath.Join(logdir, "rspamd.log"), dialable("unix", sock), argv...); err != nil {
		return err
	}
	in.Addr = "unix:" + sock
	return nil
}
