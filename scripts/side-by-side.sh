#!/bin/sh
# side-by-side.sh FIRST [LABEL: COMMAND]...
# Runs shell commands at once: FIRST in the foreground, printing as it goes; each other into
# a log that is printed after FIRST ends, under "== LABEL". Exits non-zero if any command
# did (for pytest that includes exit 5, no test collected). `make test` and `make test-fast`
# use it for the parts of the suite that mostly wait on timers and child processes.
first=$1
shift
logs=$(mktemp -d)
trap 'rm -rf "$logs"; exit 130' INT TERM
n=0
pids=
for part in "$@"; do
    n=$((n + 1))
    sh -c "exec ${part#*: }" >"$logs/$n" 2>&1 &
    pids="$pids $!"
done
sh -c "$first"
status=$?
n=0
for pid in $pids; do
    n=$((n + 1))
    wait "$pid" || status=1
    eval "part=\${$n}"
    echo "== ${part%%: *}"
    cat "$logs/$n"
done
rm -rf "$logs"
exit $status
