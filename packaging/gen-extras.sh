#!/bin/sh
# Files generated from the CLI itself, for the Debian package and `make install`:
#   OUTDIR/queuectl.bash   bash completion (click's own script, asks queuectl on each <Tab>)
#   OUTDIR/queuectl.1      man page from --help (skipped if help2man is missing, unless
#                          --require-man)
# Usage: gen-extras.sh SITEDIR OUTDIR [--require-man]
# SITEDIR is the directory holding the queuectl package to run, with $PYTHON (default
# python3) and that Python's click, so the completion script matches the click in use.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 SITEDIR OUTDIR [--require-man]" >&2; exit 2; }
mkdir -p "$2"
site=$(cd "$1" && pwd) out=$(cd "$2" && pwd) require_man=${3:-}
python=${PYTHON:-python3}
[ -f "$site/queuectl/__init__.py" ] || { echo "$0: no queuectl package in $site" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A wrapper that runs the package under test from an empty directory, so a queuectl/
# source directory in the current directory can never be imported instead.
cat > "$tmp/queuectl" <<WRAPPER
#!/bin/sh
cd "$tmp" && PYTHONPATH="$site" exec "$python" -m queuectl "\$@"
WRAPPER
chmod 755 "$tmp/queuectl"

_QUEUECTL_COMPLETE=bash_source "$tmp/queuectl" > "$out/queuectl.bash"
grep -q '^ *complete .* queuectl$' "$out/queuectl.bash" || {
  echo "$0: unexpected bash completion script:" >&2; cat "$out/queuectl.bash" >&2; exit 1; }

if command -v help2man >/dev/null 2>&1; then
  # click prints "queuectl, version X": give help2man the bare version
  version=$("$tmp/queuectl" --version | sed -n 's/^queuectl, version //p')
  help2man --no-info --version-string="$version" --section=1 --source=queuectl \
    --name="durable job queue for shell commands, with systemd workers" \
    --include=/dev/stdin --output="$out/queuectl.1" "$tmp/queuectl" <<'MAN'
[FILES]
.TP
.I /var/lib/queuectl/queue.db
The system-wide queue, used when the directory /var/lib/queuectl exists (writable by
group queuectl).
.TP
.I queuectl-worker@.service
The systemd unit of one worker per instance: \fBsystemctl start queuectl-worker@{1..4}\fR.
[SEE ALSO]
.BR systemctl (1),
.BR journalctl (1),
.BR systemd-sysusers (8),
.BR systemd-tmpfiles (8)
.PP
Every command has \fB\-\-help\fR, e.g. \fBqueuectl enqueue \-\-help\fR.
MAN
elif [ "$require_man" = --require-man ]; then
  echo "$0: help2man not found" >&2; exit 1
else
  echo "$0: help2man not found: no man page generated" >&2
fi
