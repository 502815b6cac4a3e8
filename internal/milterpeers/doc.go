// Package milterpeers starts real content scanners for tests: rspamd in
// milter mode and clamav-milter in front of clamd, each as a private,
// offline instance on a free loopback port with its own configuration and
// state in a temporary folder. It also builds the messages those scanners
// react to (GTUBE, an EICAR attachment) and a clean one.
//
// # Use
//
//	addr := milterpeers.Rspamd(t)   // "inet:127.0.0.1:PORT"; stopped when t ends
//	addr := milterpeers.Clamav(t)
//
//	in := milterpeers.StartClamav(t) // the instance: Logs, StopDaemon("clamd"), …
//
//	var peers milterpeers.Pool        // one instance per kind for a whole package
//	in := peers.Rspamd(t)             // started on first use
//	defer peers.Close()               // in TestMain, after m.Run
//
// The daemons are looked up on PATH and in the sbin folders Debian uses.
// When one is missing the test is skipped, or fails under CI=true (the
// project's rule: CI installs them, see test.sh). Every wait is bounded
// (120 s per daemon to listen); a daemon that exits during start-up fails
// the start at once, with the end of its log.
//
// # Setup, and why
//
// The configuration follows /work/shared/notes/milter-peers.md (Debian 12:
// rspamd 3.4, clamav 1.4.6), where each choice is explained:
//
//   - rspamd runs its proxy worker with milter = yes and self_scan inside
//     a default upstream (a worker-level self_scan crashes the proxy at
//     end of body). Every module that needs Redis, DNS, HTTP maps or other
//     services is disabled, and its resolver points at a loopback port
//     where nothing listens, so nothing leaves the machine and no scan
//     waits for a time-out. milter_headers adds X-Spamd-Result,
//     X-Rspamd-Server, X-Rspamd-Queue-Id, X-Spam-Level, X-Spam-Status and
//     Authentication-Results also for local clients (skip_local = false,
//     since every test client is 127.0.0.1). GTUBE is refused with
//     "554 5.7.1 Gtube pattern".
//   - clamd gets no downloaded database: two local signatures for the
//     EICAR test file (a body pattern and the MD5 of the exact 68 bytes)
//     are written at start. ClamAV appends ".UNOFFICIAL" to the names of
//     such signatures, and clamav-milter refuses with
//     "550 5.7.1 Virus found: Local.EICAR.Test.String.UNOFFICIAL"
//     (RejectMsg "Virus found: %v"; without it the text names no virus).
//     OnFail Defer: with clamd gone, clamav-milter answers TEMPFAIL.
//   - As root, the daemons drop privileges to their Debian service users
//     (_rspamd, clamav); the state folder is made theirs.
//   - Each daemon runs in the foreground in its own process group, which
//     is signalled as a whole (rspamd forks workers), and gets SIGKILL if
//     the test process dies first. clamav-milter lingers about 5 s after
//     SIGTERM; nothing here needs a clean shutdown, so it is killed after
//     2 s.
//
// Start-up costs: rspamd listens after about 7 s on an idle 2-core
// machine, 20-30 s when other test binaries load it, and compiles its
// hyperscan database for a few seconds more in the background (scans
// meanwhile use PCRE); clamd with two signatures and clamav-milter take
// 0.2-0.3 s together. Hence Pool, for packages whose tests share one
// instance.
//
// # What it deliberately does not do
//
//   - Touch the system services or /var/lib: nothing is installed,
//     enabled or downloaded, and the stock configuration is only read.
//   - Offer Bayes, fuzzy hashes, RBLs or amavisd-new: they need Redis,
//     the network or a large setup, and the verdicts the tests need come
//     from GTUBE and a local signature.
//   - Reuse state between test runs: every instance starts from an empty
//     folder, so a run cannot depend on an earlier one.
package milterpeers
