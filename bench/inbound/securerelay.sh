#!/bin/sh
# securerelay as an inbound MX for the benchmark (bench/run-inbound.sh):
# writes the config and execs the relay, so that the PID (and the cgroup
# the caller started this in) is the relay's own.
#   screening: pregreet 6 s and a DNSBL (postscreen's tests), the pass cache
#   envelope: sender_fqdn, recipient_fqdn, sender_domain, unknown_recipient
#   content: SPF/DKIM/DMARC (inbound.auth; AUTH=0: off), then every stage
#            that is on by default, then rspamd and clamav-milter
#            (MILTERS=0: none)
# Env: STATE (fresh folder), PORT, SINK, DNS (ip:port), RECIPIENTS (file),
# RSPAMD, CLAMAV (unix:/path), MILTERS and AUTH (1/0), BIN (the securerelay
# binary).
set -eu
conf=$STATE/securerelay.yaml
mkdir -p "$STATE"
content=""
if [ "${MILTERS:-1}" != 0 ]; then
	content="  content:
    milters:
      - {name: rspamd, address: \"$RSPAMD\"}
      - {name: clamav, address: \"$CLAMAV\"}"
fi
cat > "$conf" <<CONF
hostname: mx.inbound.example
postmaster: postmaster@inbound.example
state_dir: $STATE
dns: {resolver: "$DNS"}
# The default level: a line per message received and delivered, as
# Postfix logs (its postlogd and syslog formatting count in its CPU).
log: {level: info}
listeners:
  - name: mx
    address: "127.0.0.1:$PORT"
    role: inbound
    limits:
      max_connections: 1000
      # The load comes from one client, a new connection per message: far
      # above the defaults of 300 a minute, which would refuse it (Postfix
      # has no rate limit by default). The counting itself stays on.
      max_connection_rate_per_client: 10000000
      max_message_rate_per_client: 10000000
      max_recipient_rate_per_client: 10000000
domains:
  inbound.example:
    deliver_to: "smtp://$SINK"
    recipients: {file: "$RECIPIENTS"}
inbound:
  screen:
    pregreet: 6s
    cache_ttl: 1h
    dnsbl:
      threshold: 3
      lists: [{zone: dnsbl.example, weight: 3}]
  checks: {sender_fqdn: reject, recipient_fqdn: reject, sender_domain: reject, unknown_recipient: reject}
  auth: {enabled: $( [ "${AUTH:-1}" != 0 ] && echo true || echo false )}
$content
outbound:
  starttls: "off"
CONF
"$BIN" check-config --config "$conf" >&2
exec "$BIN" serve --config "$conf"
