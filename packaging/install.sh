#!/bin/sh
# `make install`: the files of the Debian package, without dpkg, for other distributions.
# `make uninstall` (--uninstall): remove them again; the queue in /var/lib/queuectl and the
# user queuectl are kept.
# Usage: packaging/install.sh [--uninstall] DESTDIR PREFIX [PYTHON]
#   PREFIX /usr for a distribution package (with DESTDIR), /usr/local (default) by hand.
#   PYTHON the system interpreter whose click and sdnotify queuectl will use
#          (default /usr/bin/python3); /usr/bin/queuectl runs with it. Override the module
#          directory with PYTHON_SITEDIR=... if PREFIX is not on that Python's path.
set -eu
uninstall=
if [ "${1:-}" = --uninstall ]; then uninstall=1; shift; fi
[ $# -ge 2 ] || { echo "usage: $0 [--uninstall] DESTDIR PREFIX [PYTHON]" >&2; exit 2; }
destdir=$1 prefix=$2 python=${3:-/usr/bin/python3}
repo=$(cd "$(dirname "$0")/.." && pwd)

# The directory on PYTHON's own module path under PREFIX (Debian: /usr/lib/python3/
# dist-packages or /usr/local/lib/python3.X/dist-packages; elsewhere .../site-packages), so
# that `python3 -m queuectl` (how `worker start --foreground` runs workers) finds it too.
sitedir=${PYTHON_SITEDIR:-$("$python" -c '
import sys
prefix = sys.argv[1].rstrip("/") + "/lib/"
found = [p for p in sys.path if p.startswith(prefix) and p.endswith("-packages")]
print(found[0] if found else "")' "$prefix")}
if [ -z "$sitedir" ]; then
  echo "install: $python has no site directory under $prefix/lib; set PYTHON_SITEDIR" >&2
  exit 1
fi
unitdir=$prefix/lib/systemd/system

if [ -n "$uninstall" ]; then
  rm -f "$destdir$prefix/bin/queuectl" "$destdir$unitdir/queuectl-worker@.service" \
    "$destdir$unitdir/queuectl-workers.target" "$destdir$prefix/lib/sysusers.d/queuectl.conf" \
    "$destdir$prefix/lib/tmpfiles.d/queuectl.conf" \
    "$destdir$prefix/share/bash-completion/completions/queuectl" \
    "$destdir$prefix/share/man/man1/queuectl.1" "$destdir$prefix/share/doc/queuectl/README.md" \
    "$destdir$unitdir/queuectl-metrics.service" "$destdir$unitdir/queuectl-metrics.timer" \
    "$destdir$prefix/lib/systemd/catalog/queuectl.catalog" \
    "$destdir$prefix/share/queuectl/prometheus/queuectl.rules.yml" \
    "$destdir$prefix/lib/systemd/system-generators/queuectl-lane-generator" \
    "$destdir/etc/queuectl/lanes/example.conf.sample"
  # the admin's own lane files stay (and with them these directories)
  rmdir "$destdir/etc/queuectl/lanes" "$destdir/etc/queuectl" 2>/dev/null || true
  rmdir "$destdir$prefix/share/doc/queuectl" "$destdir$prefix/share/queuectl/prometheus" \
    "$destdir$prefix/share/queuectl" 2>/dev/null || true
  rm -rf "$destdir$sitedir/queuectl"
  echo "removed queuectl from ${destdir:-/}$prefix (kept: /var/lib/queuectl, user queuectl)"
  exit 0
fi

install -d "$destdir$prefix/bin" "$destdir$sitedir/queuectl/backends" "$destdir$unitdir" \
  "$destdir$prefix/lib/sysusers.d" "$destdir$prefix/lib/tmpfiles.d" \
  "$destdir$prefix/share/bash-completion/completions" "$destdir$prefix/share/doc/queuectl"
install -m 644 "$repo"/queuectl/*.py "$destdir$sitedir/queuectl/"
install -m 644 "$repo"/queuectl/backends/*.py "$destdir$sitedir/queuectl/backends/"
# The same entry point as the package's console script.
cat > "$destdir$prefix/bin/queuectl" <<SCRIPT
#!$python
import sys

from queuectl.main import main

sys.exit(main())
SCRIPT
chmod 755 "$destdir$prefix/bin/queuectl"
# The README is the unit's Documentation= (with the man page).
install -m 644 "$repo/README.md" "$destdir$prefix/share/doc/queuectl/"
for unit in queuectl-worker@.service queuectl-workers.target queuectl-metrics.service \
    queuectl-metrics.timer; do
  sed -e "s|/usr/bin/queuectl|$prefix/bin/queuectl|g" \
      -e "s|file:/usr/share/doc/queuectl/|file:$prefix/share/doc/queuectl/|g" \
      "$repo/systemd/$unit" > "$destdir$unitdir/$unit"
  chmod 644 "$destdir$unitdir/$unit"
done
install -m 644 "$repo/systemd/sysusers.d/queuectl.conf" "$destdir$prefix/lib/sysusers.d/"
install -m 644 "$repo/systemd/tmpfiles.d/queuectl.conf" "$destdir$prefix/lib/tmpfiles.d/"
# journalctl -x explains queuectl's key events (journalctl reads /usr/lib and /usr/local/lib).
install -D -m 644 "$repo/systemd/queuectl.catalog" \
  "$destdir$prefix/lib/systemd/catalog/queuectl.catalog"
# Alert rules for Prometheus' rule_files: (README "Alert rules").
install -D -m 644 "$repo/prometheus/queuectl.rules.yml" \
  "$destdir$prefix/share/queuectl/prometheus/queuectl.rules.yml"

# The lane generator (queuectl/lanes.py itself, on this Python) and the inactive example lane.
# Lane files live in /etc/queuectl/lanes whatever PREFIX is: the generator reads them there.
install -d "$destdir$prefix/lib/systemd/system-generators" "$destdir/etc/queuectl/lanes"
sed -e "1s|^#!.*|#!$python -IS|" "$repo/queuectl/lanes.py" \
  > "$destdir$prefix/lib/systemd/system-generators/queuectl-lane-generator"
chmod 755 "$destdir$prefix/lib/systemd/system-generators/queuectl-lane-generator"
install -m 644 "$repo/systemd/lanes/example.conf.sample" "$destdir/etc/queuectl/lanes/"

extras=$(mktemp -d)
trap 'rm -rf "$extras"' EXIT
PYTHON=$python "$repo/packaging/gen-extras.sh" "$destdir$sitedir" "$extras"
install -m 644 "$extras/queuectl.bash" "$destdir$prefix/share/bash-completion/completions/queuectl"
if [ -f "$extras/queuectl.1" ]; then
  install -d "$destdir$prefix/share/man/man1"
  install -m 644 "$extras/queuectl.1" "$destdir$prefix/share/man/man1/"
fi
echo "installed queuectl into ${destdir:-/}: $prefix/bin/queuectl, $sitedir/queuectl, $unitdir"
if [ -z "$destdir" ]; then
  journalctl --update-catalog 2>/dev/null || true
  echo "next: systemd-sysusers; systemd-tmpfiles --create queuectl.conf; systemctl daemon-reload"
fi
