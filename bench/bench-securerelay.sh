#!/bin/sh
# CUSTOM_CMD target for ../shared/bench/run-bench.sh: writes a securerelay
# config from the harness's BENCH_* variables and execs the relay, so that
# the harness measures the relay process itself.
#
# The relay runs with production durability (fsync of file and directory
# before every 250) and DKIM-signs with the harness key unless
# CUSTOM_DKIM=0 (then compare with postfix-plain).
set -eu
bin=${SECURERELAY_BIN:-$(dirname "$0")/../securerelay}
conf=$BENCH_STATE_DIR/securerelay.yaml
mkdir -p "$BENCH_STATE_DIR"
cat > "$conf" <<CONF
hostname: relay.bench.test
state_dir: $BENCH_STATE_DIR
dns: {resolver: "127.0.0.1:53"}
log: {level: warn}
listeners:
  - name: bench
    address: "$BENCH_LISTEN"
    role: outbound
    trusted_networks: [127.0.0.0/8]
    auth: "off"
    limits: {max_connections: 1000}
outbound:
  starttls: "off"
  routes:
    - {match: "*", next_hop: "smtp://$BENCH_SINK"}
CONF
if [ "${CUSTOM_ENCRYPT:-0}" != 0 ]; then
	# The encrypt-then-sign path: every message to the harness's
	# recipients (rcpt@partner.test) is encrypted to one pinned key
	# (CUSTOM_ENCRYPT_ALGO: cv25519, the default, or rsa3072), then
	# DKIM-signed like the rest.
	export GNUPGHOME="$BENCH_STATE_DIR/gnupg"
	mkdir -p -m 700 "$GNUPGHOME"
	primary=ed25519 sub=cv25519
	if [ "${CUSTOM_ENCRYPT_ALGO:-cv25519}" = rsa3072 ]; then
		primary=rsa3072 sub=rsa3072
	fi
	gpg --batch --pinentry-mode loopback --passphrase '' --quick-gen-key 'Bench <rcpt@partner.test>' $primary cert,sign never 2>/dev/null
	fpr=$(gpg --with-colons --list-keys rcpt@partner.test | awk -F: '/^fpr/ {print $10; exit}')
	gpg --batch --pinentry-mode loopback --passphrase '' --quick-add-key "$fpr" $sub encr never 2>/dev/null
	fpr=$(gpg --with-colons --list-keys rcpt@partner.test | awk -F: '/^fpr/ {print $10; exit}')
	gpg --armor --export rcpt@partner.test > "$BENCH_STATE_DIR/partner.asc"
	cat >> "$conf" <<CONF
  tls:
    policies:
      - match: partner.test
        level: none
        encrypt: always
        key_sources: [pinned]
        keys: [{fingerprint: "$fpr", file: "$BENCH_STATE_DIR/partner.asc"}]
CONF
fi
if [ "${CUSTOM_DKIM:-1}" != 0 ]; then
	cat >> "$conf" <<CONF
domains:
  $BENCH_DKIM_DOMAIN:
    dkim: [{selector: $BENCH_DKIM_SELECTOR, key: "$BENCH_DKIM_KEY"}]
CONF
fi
exec "$bin" serve --config "$conf"
