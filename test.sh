#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script).
#
# 1. Installs the Debian packages the integration tests talk to, where they
#    are missing (needs root, as CI has; otherwise it says what to install).
# 2. gofmt, go vet, staticcheck.
# 3. go test -race over every package, integration tests included.
#
# With CI=true a missing tool makes the tests that need it fail instead of
# skip.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages: swaks (SMTP client; the two Perl TLS modules for its
# --tls, which --no-install-recommends leaves out), postfix (smtp-source/smtp-sink,
# the load tools; a private instance as next and previous hop for DSN and
# 8BITMIME), openssl (s_client against STARTTLS), and the independent
# DKIM verifiers: python3-dkim (dkimverify; python3-nacl for Ed25519) and
# OpenDKIM (opendkim-testmsg; opendkim -V says which algorithms it has),
# rbldnsd as a real DNSBL server, the content scanners the milter client
# talks to (rspamd; clamav-daemon + clamav-milter, with a local signature
# made by the test, never downloaded), and testssl.sh against our STARTTLS.
# OpenPGP (encrypt/): gnupg makes the recipients' keys, the OPENPGPKEY
# records and the WKD hashes and decrypts what we encrypt; sq (Sequoia) and
# rnp decrypt it too, as independent implementations.
# The attachment policy (attach/): zip and 7z (p7zip-full) make the
# archives its tests send, beside tar and gzip, which every system has.
# The Debian package test (test/e2e/deb_test.go) installs the .deb with
# dpkg: its dependencies adduser and init-system-helpers, and systemd for
# systemd-analyze verify of the unit.
# dovecot-lmtpd (pulls dovecot-core: dovecot, doveadm): a private Dovecot
# LMTP server as the real downstream of an inbound domain (issue 14's held
# message was found with one).
PKGS=(swaks libnet-ssleay-perl libio-socket-ssl-perl postfix openssl ca-certificates python3-dkim python3-nacl opendkim opendkim-tools rbldnsd
	rspamd clamav clamav-daemon clamav-milter testssl.sh
	gnupg sq rnp
	zip p7zip-full tar gzip
	adduser init-system-helpers systemd
	dovecot-lmtpd)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		echo "== installing Debian packages: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		# postfix must not configure or start a system MTA on port 25:
		# the tests bind 127.0.0.x:25 themselves.
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		# Nor may any package start its system service (a Dovecot, rspamd
		# or clamd left running for good, Dovecot on imap 143 once
		# dovecot-imapd comes along): invoke-rc.d and deb-systemd-invoke
		# ask policy-rc.d, and 101 means "not now". Container images often
		# have one already; ours goes as soon as apt-get is done. The
		# tests run private instances of postfix, dovecot, rspamd, clamd.
		ours_policy=
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			ours_policy=1
			printf '#!/bin/sh\n# test.sh: no service starts while it installs packages\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 755 /usr/sbin/policy-rc.d
			trap 'rm -f /usr/sbin/policy-rc.d' EXIT
		fi
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
		if [ -n "$ours_policy" ]; then
			rm -f /usr/sbin/policy-rc.d
			trap - EXIT
		fi
	else
		echo "== not root: cannot install ${missing[*]}; tests that need them will skip (or fail with CI=true)"
	fi
fi
# smtp-source and smtp-sink live outside PATH on Debian.
export PATH="$PATH:/usr/sbin:/usr/lib/postfix/sbin"

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted"
	exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
# The race detector multiplies memory, so the peak-RSS bound of encrypting a
# 25 MiB message (under 3x the message; issue 12) is checked without it.
echo "== go test (encrypt peak RSS, without -race)"
go test -count=1 -run 'TestEncryptPeakRSS$' ./encrypt/
# The patched go-smtp is its own module, outside ./...; its tests cover
# our patches (third_party/README.md).
echo "== go test -race (third_party/go-smtp)"
# TestServerAcceptErrorHandling races in upstream's test itself (Close
# right after handing Accept a permanent error; Serve may return nil).
(cd third_party/go-smtp && go test -race -count=1 -timeout 5m -skip '^TestServerAcceptErrorHandling$' ./...)
# The copied go-msgauth is its own module too (third_party/README.md).
echo "== go test -race (third_party/go-msgauth)"
(cd third_party/go-msgauth && go test -race -count=1 -timeout 5m ./...)
