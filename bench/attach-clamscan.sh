#!/bin/sh
# The attachment policy's cost beside a virus scanner's (issue 15): the
# same three messages (4 KiB text, 9 MiB ZIP of 1,000 files, 25 MiB) go
# through attach.Inspect (go test -bench) and through clamscan with a tiny
# local database (the EICAR signatures the tests use; nothing is
# downloaded), which parses the MIME structure and unpacks the ZIP too.
# clamscan's own start (loading the database) is measured on an empty
# file and shown apart.
#   bench/attach-clamscan.sh        # 5 clamscan runs per file
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/db"
printf 'Local.EICAR.Test.String:0:*:%s\n' "$(printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' | od -An -tx1 | tr -d ' \n')" >"$work/db/local.ndb"
(cd "$here" && ATTACH_BENCH_DIR="$work" go test -count=1 -run '^TestWriteBenchFiles$' ./attach/ >/dev/null)
: >"$work/empty.eml"
runs=${RUNS:-5}
echo "== clamscan (ClamAV $(clamscan --version | cut -d/ -f1 | cut -d' ' -f2)), $runs runs each: wall s, user+sys s, peak RSS KiB (median run)"
for f in empty.eml text-4k.eml zip1000.eml message25.eml; do
	i=0
	: >"$work/times"
	while [ $i -lt "$runs" ]; do
		/usr/bin/time -f '%e %U %S %M' -o "$work/t" clamscan --no-summary --database="$work/db" --max-filesize=100M --max-scansize=400M "$work/$f" >/dev/null
		awk '{printf "%.3f %.3f %d\n", $1, $2+$3, $4}' "$work/t" >>"$work/times"
		i=$((i + 1))
	done
	sort -n "$work/times" | awk -v f="$f" -v n="$runs" 'NR==int((n+1)/2){printf "%-14s %s s wall, %s s cpu, %s KiB\n", f, $1, $2, $3}'
done
echo "== attach.Inspect (go test -bench)"
(cd "$here" && go test -run XXX -bench 'InspectText|InspectZip1000|InspectMessage25|InspectDOCX' -benchtime 2s -count 3 ./attach/ | grep '^Benchmark')
(cd "$here" && go test -count=1 -run 'TestInspectPeakRSS$' -v ./attach/ | grep 'peak RSS')
