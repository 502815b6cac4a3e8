#!/bin/sh
# Load test: securerelay beside Postfix (and maddy) on this machine, through
# the shared harness (smtp-source 20 sessions × N messages of 4 KiB →
# relay → smtp-sink). Needs root and the harness's Debian packages.
#   bench/run.sh                  # full: N=10000, 3 rounds
#   QUICK=1 bench/run.sh          # ~30 s smoke run
set -eu
here=$(cd "$(dirname "$0")" && pwd)
harness=${BENCH_HARNESS:-$here/../../shared/bench}
(cd "$here/.." && go build -o securerelay ./cmd/securerelay)
export SECURERELAY_BIN="$here/../securerelay"
export CUSTOM_NAME=${CUSTOM_NAME:-securerelay}
export CUSTOM_DKIM=${CUSTOM_DKIM:-1}
export CUSTOM_CMD="exec $here/bench-securerelay.sh"
export CUSTOM_QUEUE_EMPTY="[ \"\$($SECURERELAY_BIN queue count --config \$BENCH_STATE_DIR/securerelay.yaml)\" = 0 ]"
if [ -z "${QUICK:-}" ] && [ -z "${VARIANTS:-}" ]; then
	export VARIANTS=postfix-plain,postfix-dkim,maddy-dkim,maddy-plain,custom
fi
cd "$harness" && exec ./run-bench.sh
