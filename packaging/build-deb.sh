#!/bin/bash
# `make deb`: build the Debian package from a clean copy of this tree into OUTDIR (dist/).
# Installs missing build dependencies with apt (as root), else says what to install.
# Usage: packaging/build-deb.sh [OUTDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Debian's own python3 and tools only: pybuild breaks when another python3 (pyenv, a venv)
# comes first on PATH ("No module named build").
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION || true
export DEBIAN_FRONTEND=noninteractive

# One version everywhere: pyproject.toml, queuectl/__init__.py, debian/changelog.
v_project=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml")
v_module=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/queuectl/__init__.py")
v_debian=$(sed -n '1s/^queuectl (\([^)]*\)).*/\1/p' "$repo/packaging/debian/changelog")
if [ -z "$v_project" ] || [ "$v_project" != "$v_module" ] || [ "$v_project" != "$v_debian" ]; then
  echo "build-deb: versions differ: pyproject.toml '$v_project', queuectl/__init__.py" \
       "'$v_module', packaging/debian/changelog '$v_debian' (add a changelog entry)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/queuectl-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/queuectl-$v_project
mkdir "$src"
# A clean tree: the files git knows or would add (no .venv, build/, dist/, caches, ...).
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
    while IFS= read -r -d '' f; do
      if [ -f "$repo/$f" ] || [ -L "$repo/$f" ]; then printf '%s\0' "$f"; fi
    done | (cd "$repo" && xargs -0 --no-run-if-empty cp -P --parents -t "$src")
else
  tar -C "$repo" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
      --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
      --exclude=.ruff_cache -cf - . | tar -C "$src" -xf -
fi
rm -rf "$src/debian"
cp -a "$repo/packaging/debian" "$src/debian"

if ! (cd "$src" && dpkg-checkbuilddeps) >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    (cd "$src" && dpkg-checkbuilddeps) || true
    echo "build-deb: build dependencies missing (needs dpkg-dev and the above);" \
         "run 'make deb' as root to install them with apt" >&2
    exit 1
  fi
  echo "build-deb: installing build dependencies with apt" >&2
  apt-get update -q
  apt-get install -y -q --no-install-recommends dpkg-dev
  apt-get build-dep -y -q "$src"
fi

(cd "$src" && dpkg-buildpackage -us -uc -b)
deb=queuectl_${v_project}_all.deb
cp "$work/$deb" "$out/$deb"
echo "build-deb: $out/$deb"
