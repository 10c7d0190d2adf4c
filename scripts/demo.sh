#!/bin/sh
# The main job end to end on a throwaway database: enqueue, two workers drain it, a job that
# always fails lands in the dead letter queue.
set -eu
q=${QUEUECTL:-queuectl}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export QUEUECTL_DB="$dir/queue.db"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

say "queuectl config set backoff-base 1.5   # short backoff for the demo: 1.5 s, 2.25 s"
$q config set backoff-base 1.5
say "queuectl enqueue ..."
$q enqueue '{"id":"job1","command":"echo Hello World"}'
$q enqueue '{"id":"job2","command":"sleep 1 && echo slept"}'
$q enqueue --cmd 'date -u +%H:%M:%S' --id job3
$q enqueue '{"id":"flaky","command":"test -e '"$dir"'/seen || { touch '"$dir"'/seen; exit 1; }"}'
$q enqueue '{"id":"always-fails","command":"echo no such luck >&2; exit 7","max_retries":2}'
say "queuectl status"
$q status
say "queuectl --log-format human worker start --count 2 --drain"
$q --log-format human worker start --count 2 --drain
say "queuectl status"
$q status
say "queuectl dlq list"
$q dlq list
