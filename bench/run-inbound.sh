#!/bin/bash
# The inbound benchmark: securerelay's whole inbound pipeline beside Postfix
# 3.7 with postscreen, the same checks and the same two milters, on this
# machine, in the same run, offline and on loopback only.
#
#   bench/run-inbound.sh             # N=3000 per run, 3 rounds
#   QUICK=1 bench/run-inbound.sh     # N=600, 1 round: a smoke run
#   bench/run-inbound.sh stop        # stop what KEEP=1 left running
#
# What runs (each in its own cgroup, for the CPU accounting):
#   DNS      inboundbench dns on $DNS_IP:53: the sender's MX, SPF, DKIM key
#            and DMARC, our MX, a DNSBL and the client's PTR
#   rspamd   and clamd + clamav-milter: the offline instances the tests use
#            (internal/milterpeers), shared by every variant
#   postfix  bench/inbound/postfix.sh (postscreen, restrictions, milters)
#   securerelay  bench/inbound/securerelay.sh
# and per run: the Go load client (N messages, a text message and one with
# a PDF in turn, $SESSIONS sessions, a new connection per message, from
# 127.0.0.1, which both screens have passed in the warm-up) → relay →
# smtp-sink on $SINK.
#
# Variants (VARIANTS, comma-separated; default all five):
#   postfix, securerelay          the full pipelines
#   postfix-nomilter, securerelay-nomilter   the same without the milters
#   securerelay-noauth            securerelay without SPF/DKIM/DMARC, which
#                                 this Postfix does not check either
#   milters                       the scanners alone, driven by a milter
#                                 client: their own time at end of data
# Each round has a load phase (N messages over SESSIONS sessions: msg/s,
# CPU, memory) and a latency phase (LATENCY_N messages over
# LATENCY_SESSIONS, default 1: end-of-data latency without queueing).
# Other settings: N, ROUNDS, WARMUP (per variant), SESSIONS, MESSAGES
# (text,pdf), LOADER=smtp-source (Postfix's load generator, no latency
# figures), OUT (results folder), KEEP=1 (leave everything running),
# CPUPROFILE=1 (securerelay writes a Go CPU profile, cpu-VARIANT.pprof in OUT).
# Needs root (port 53, cgroups, a mount namespace for Postfix's resolver)
# and: postfix, rspamd, clamav-daemon, clamav-milter, Go.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	N=${N:-600}; ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-60}; LATENCY_N=${LATENCY_N:-100}
fi
N=${N:-3000}; ROUNDS=${ROUNDS:-3}; WARMUP=${WARMUP:-200}; SESSIONS=${SESSIONS:-20}
LATENCY_N=${LATENCY_N:-400}; LATENCY_SESSIONS=${LATENCY_SESSIONS:-1}
VARIANTS=${VARIANTS:-postfix,securerelay,milters,postfix-nomilter,securerelay-nomilter,securerelay-noauth}
MESSAGES=${MESSAGES:-text,pdf}
LOADER=${LOADER:-go}
STATE=${STATE:-/tmp/securerelay-bench-inbound}
OUT=${OUT:-/tmp/securerelay-bench-inbound-results/$(date +%Y%m%d-%H%M%S)}
# Ports of their own, so that the shared harness (10025-10045) can run at
# the same time.
DNS_IP=${DNS_IP:-127.0.10.53}
SINK=127.0.0.1:10126
PF_PORT=10125 PF_NM_PORT=10127 SR_PORT=10145 SR_NM_PORT=10147 SR_NA_PORT=10149

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (port 53, cgroups, Postfix in a mount namespace)"
PATH=$PATH:/usr/sbin:/sbin
for t in postfix postscreen smtp-sink smtp-source rspamd clamd clamav-milter unshare go; do
	command -v "$t" >/dev/null || [ -x "/usr/lib/postfix/sbin/$t" ] || die "missing $t"
done

# A cgroup per daemon (v1 cpuacct, else v2), so that the CPU of processes
# that come and go (Postfix's smtpd, cleanup, smtp) is counted.
cgroup_for() {
	local d
	for d in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
		if [ -f "$d/cpuacct.usage" ] || [ -f "$d/cgroup.controllers" ]; then
			if mkdir -p "$d/sr-inbound-$1" 2>/dev/null && [ -w "$d/sr-inbound-$1/cgroup.procs" ]; then
				echo "$d/sr-inbound-$1"; return 0
			fi
		fi
	done
}

# start_bg NAME CMD...: CMD in its own session and cgroup, in the
# background; its PID in $STATE/NAME.pid, its output in $STATE/NAME.log.
start_bg() {
	local name=$1 cg; shift
	cg=$(cgroup_for "$name")
	echo "$cg" > "$STATE/$name.cgroup"
	if [ -n "$cg" ]; then
		setsid sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@" </dev/null >"$STATE/$name.log" 2>&1 &
	else
		setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
	fi
	echo $! > "$STATE/$name.pid"
}

# stop_bg NAME: TERM to its process group, bounded wait, KILL; then
# whatever is left in its cgroup, by PID.
stop_bg() {
	local name=$1 pid cg p
	[ -s "$STATE/$name.pid" ] || return 0
	pid=$(cat "$STATE/$name.pid")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL -- "-$pid" 2>/dev/null || true
	fi
	cg=$(cat "$STATE/$name.cgroup" 2>/dev/null || true)
	if [ -n "$cg" ] && [ -r "$cg/cgroup.procs" ]; then
		for p in $(cat "$cg/cgroup.procs"); do kill -KILL "$p" 2>/dev/null || true; done
	fi
	rm -f "$STATE/$name.pid"
}

wait_for() {  # seconds, description, test command...
	local secs=$1 what=$2; shift 2
	for _ in $(seq 1 $((secs * 10))); do "$@" && return 0; sleep 0.1; done
	die "$what not ready after ${secs}s"
}
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pf_env() {
	export BASE=$STATE/postfix PF_PORT PF_NM_PORT SINK DNS_IP RECIPIENTS=$STATE/data/recipients.txt
	export CGROUP RSPAMD CLAMAV
}

stop_all() {
	local n
	for n in securerelay securerelay-nomilter securerelay-noauth rspamd clamav dns; do stop_bg "$n"; done
	if [ -d "$STATE/postfix/etc" ]; then BASE=$STATE/postfix "$here/inbound/postfix.sh" stop || true; fi
}
cleanup() {
	local rc=$?
	if [ "${KEEP:-0}" != 1 ]; then
		stop_all
		# written by the relay when it stops (CPUPROFILE=1)
		for n in securerelay securerelay-nomilter securerelay-noauth; do
			cp "$STATE/$n/cpu.pprof" "$OUT/cpu-$n.pprof" 2>/dev/null || true
		done
	fi
	exit $rc
}

mkdir -p "$STATE"
stop_all   # leftovers of an earlier run (or of KEEP=1)
if [ "${1:-}" = stop ]; then log "stopped"; exit 0; fi
trap cleanup EXIT
rm -rf "$STATE/data" "$STATE/postfix" "$STATE"/securerelay* "$STATE"/*.json
mkdir -p "$STATE/bin" "$OUT"

log "building securerelay and inboundbench"
(cd "$root" && go build -o "$STATE/bin/securerelay" ./cmd/securerelay && go build -o "$STATE/bin/inboundbench" ./bench/inbound)
bench=$STATE/bin/inboundbench
"$bench" gen "$STATE/data"

port_open "$DNS_IP" 53 && die "something already answers on $DNS_IP:53"
start_bg dns "$bench" dns "$DNS_IP:53" "$STATE/data/zone.txt"
wait_for 10 "DNS server" port_open "$DNS_IP" 53

log "starting rspamd, clamd and clamav-milter (rspamd takes 10-30 s)"
start_bg rspamd "$bench" scanner rspamd "$STATE/rspamd.json"
start_bg clamav "$bench" scanner clamav "$STATE/clamav.json"
wait_for 180 "rspamd" test -s "$STATE/rspamd.json"
wait_for 60 "clamav" test -s "$STATE/clamav.json"
addr_of() { sed 's/.*"addr":"\([^"]*\)".*/\1/' "$1"; }
RSPAMD=$(addr_of "$STATE/rspamd.json") CLAMAV=$(addr_of "$STATE/clamav.json")
log "milters: rspamd $RSPAMD, clamav $CLAMAV"

case ",$VARIANTS," in *,postfix*)
	CGROUP=$(cgroup_for postfix); echo "$CGROUP" > "$STATE/postfix.cgroup"
	pf_env
	"$here/inbound/postfix.sh" start
	log "postfix $(postconf -d -h mail_version) up on 127.0.0.1:$PF_PORT (and :$PF_NM_PORT without milters)"
esac

start_relay() {  # name port milters auth
	local prof=""
	[ "${CPUPROFILE:-0}" = 1 ] && prof=$STATE/$1/cpu.pprof
	start_bg "$1" env SECURERELAY_CPUPROFILE="$prof" STATE="$STATE/$1" PORT="$2" MILTERS="$3" AUTH="$4" SINK="$SINK" DNS="$DNS_IP:53" \
		RECIPIENTS="$STATE/data/recipients.txt" RSPAMD="$RSPAMD" CLAMAV="$CLAMAV" BIN="$STATE/bin/securerelay" \
		"$here/inbound/securerelay.sh"
	wait_for 30 "$1" port_open 127.0.0.1 "$2"
	log "$1 up on 127.0.0.1:$2"
}
case ",$VARIANTS," in *,securerelay,*) start_relay securerelay $SR_PORT 1 1 ;; esac
case ",$VARIANTS," in *,securerelay-nomilter,*) start_relay securerelay-nomilter $SR_NM_PORT 0 1 ;; esac
case ",$VARIANTS," in *,securerelay-noauth,*) start_relay securerelay-noauth $SR_NA_PORT 1 0 ;; esac

sr_probe() { echo "[ \"\$($STATE/bin/securerelay queue count --config $STATE/$1/securerelay.yaml)\" = 0 ]"; }
pf_probe="[ -z \"\$(find $STATE/postfix/queue/incoming $STATE/postfix/queue/active $STATE/postfix/queue/deferred $STATE/postfix/queue/maildrop -type f 2>/dev/null | head -1)\" ]"
pf_reload="postfix -c $STATE/postfix/etc reload >/dev/null 2>&1"
json() { sed 's/\\/\\\\/g; s/"/\\"/g'; }
cat > "$STATE/spec.json" <<JSON
{
 "sink": "$SINK", "dns": "$DNS_IP:53", "dns_cgroup": "$(cat "$STATE/dns.cgroup")",
 "scanners": {
  "rspamd": {"info": "$STATE/rspamd.json", "cgroup": "$(cat "$STATE/rspamd.cgroup")"},
  "clamav": {"info": "$STATE/clamav.json", "cgroup": "$(cat "$STATE/clamav.cgroup")"}
 },
 "variants": [
  {"name": "postfix", "addr": "127.0.0.1:$PF_PORT", "cgroup": "$(cat "$STATE/postfix.cgroup" 2>/dev/null)",
   "queue_empty": "$(echo "$pf_probe" | json)", "before": "$pf_reload", "scans": true},
  {"name": "postfix-nomilter", "addr": "127.0.0.1:$PF_NM_PORT", "cgroup": "$(cat "$STATE/postfix.cgroup" 2>/dev/null)",
   "queue_empty": "$(echo "$pf_probe" | json)", "before": "$pf_reload"},
  {"name": "securerelay", "addr": "127.0.0.1:$SR_PORT", "cgroup": "$(cat "$STATE/securerelay.cgroup" 2>/dev/null)",
   "queue_empty": "$(sr_probe securerelay | json)", "scans": true, "auth": true},
  {"name": "securerelay-nomilter", "addr": "127.0.0.1:$SR_NM_PORT", "cgroup": "$(cat "$STATE/securerelay-nomilter.cgroup" 2>/dev/null)",
   "queue_empty": "$(sr_probe securerelay-nomilter | json)", "auth": true},
  {"name": "securerelay-noauth", "addr": "127.0.0.1:$SR_NA_PORT", "cgroup": "$(cat "$STATE/securerelay-noauth.cgroup" 2>/dev/null)",
   "queue_empty": "$(sr_probe securerelay-noauth | json)", "scans": true},
  {"name": "milters"}
 ]
}
JSON

{
	echo "date: $(date -Is)  commit: $(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD || echo '+dirty')"
	echo "kernel: $(uname -r)  cpus: $(nproc)  mem: $(free -m | awk '/Mem/{print $2}') MiB  load average: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
	echo "fsync latency of $STATE: $("$bench" fsync "$STATE")"
	echo "postfix $(postconf -d -h mail_version), $(rspamd --version 2>/dev/null | head -1), $(clamd --version 2>/dev/null), $(go version)"
	echo "N=$N ROUNDS=$ROUNDS WARMUP=$WARMUP SESSIONS=$SESSIONS LATENCY_N=$LATENCY_N LATENCY_SESSIONS=$LATENCY_SESSIONS VARIANTS=$VARIANTS MESSAGES=$MESSAGES LOADER=$LOADER"
} | tee "$OUT/env.txt" >&2

rc=0
"$bench" run -spec "$STATE/spec.json" -data "$STATE/data" -out "$OUT" -variants "$VARIANTS" \
	-n "$N" -rounds "$ROUNDS" -warmup "$WARMUP" -sessions "$SESSIONS" -messages "$MESSAGES" -loader "$LOADER" \
	-latency-n "$LATENCY_N" -latency-sessions "$LATENCY_SESSIONS" || rc=$?
cp "$STATE/spec.json" "$STATE/data/zone.txt" "$OUT/" 2>/dev/null || true
cp "$STATE/postfix/etc/main.cf" "$OUT/postfix-main.cf" 2>/dev/null || true
cp "$STATE/postfix/etc/master.cf" "$OUT/postfix-master.cf" 2>/dev/null || true
tail -c 2000000 "$STATE/postfix/log/maillog" > "$OUT/postfix-maillog" 2>/dev/null || true
for n in securerelay securerelay-nomilter securerelay-noauth; do
	cp "$STATE/$n/securerelay.yaml" "$OUT/$n.yaml" 2>/dev/null || true
	tail -c 1000000 "$STATE/$n.log" > "$OUT/$n.log" 2>/dev/null || true
done
log "results in $OUT (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
exit $rc
