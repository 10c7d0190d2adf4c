"""The Debian package on a clean Debian 12, installed and used as an admin would.

One module-scoped setup does the slow parts once: `make deb` builds the package; a pristine
Debian 12 root made by debootstrap (minbase plus systemd, dbus and python3) is copied; the
copy's own systemd boots as PID 1 of fresh namespaces (systemd_ns.NamespacedSystemd, with
the copy as the root filesystem); apt installs the package inside, so python3-click and
python3-sdnotify come from Debian 12, and every test below runs
queuectl on Debian's versions of them. The tests then run in file order as one admin's
session: look at the install, start four workers, enqueue as a member of group queuectl,
refuse an outsider, reinstall, remove, reinstall, purge. Then the last release, 0.1.0, built
from commit OLD_COMMIT of this repository's own history, is installed on the same (purged)
root and upgraded to this version while four workers drain 1,000 jobs, and downgraded again
to show that 0.1.0 refuses the migrated database without touching it.

The pristine root is cached between runs in $QUEUECTL_TEST_ROOTFS (default
/var/cache/queuectl-test/bookworm-root), built with debootstrap from the Debian mirror of
this machine's apt sources when missing or invalid (about a minute), and never modified
afterwards: each run works on its own copy, deleted at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd_ns import NamespacedSystemd, require_systemd_or_skip
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
SUITE = "bookworm"
ROOTFS_CACHE = Path(os.environ.get("QUEUECTL_TEST_ROOTFS", "/var/cache/queuectl-test/bookworm-root"))
INCLUDE = ("systemd", "dbus", "python3")
# Downloaded into the cached root's apt cache, so that installing the package (which pulls
# them in from Debian's indexes, as for any admin) needs no network on a warm cache.
# (python3-structlog: 0.1.0, the release the upgrade test starts from, depends on it;
# python3-psycopg2, with libpq5: the package recommends it, so apt installs it too, and
# test_deb_postgres.py's workers use it.)
PREFETCH = ("python3-click", "python3-structlog", "python3-sdnotify", "python3-psycopg2")
# Written last into a complete cache; a cache without it (or with another recipe) is rebuilt.
CACHE_STAMP = ".queuectl-test-rootfs"
CACHE_RECIPE = (f"3 {SUITE} minbase include={','.join(INCLUDE)} clean apt-lists"
                f" prefetch={','.join(PREFETCH)}")
# What the versions of Debian 12 are; the package must work with exactly these.
DEBIAN_VERSIONS = {"python3-click": "8.1.3", "python3-sdnotify": "0.3.1"}
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
             "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"}
WORKERS = "queuectl-worker@*"
DEB_INSIDE = f"/root/queuectl_{VERSION}_all.deb"
# The last release: its package is built from this commit of the repository's history.
OLD_COMMIT = "4803595472b53bb6b556acc8a7390596e12ad85a"
OLD_VERSION = "0.1.0"
OLD_DEB_INSIDE = f"/root/queuectl_{OLD_VERSION}_all.deb"
STATE_DIR = "/var/lib/queuectl"
GENERATOR = "/usr/lib/systemd/system-generators/queuectl-lane-generator"
LANE_UNIT = "queuectl-worker@box:1.service"
LANE_FILE = "/etc/queuectl/lanes/box.conf"


# -- can this run here? ----------------------------------------------------------------------
def _require(ok: bool, reason: str) -> None:
    """Skip with `reason` unless ok; with QUEUECTL_REQUIRE_SYSTEMD=1 (CI) fail instead, as
    systemd_ns.require_systemd_or_skip() does, so a silently skipped test cannot pass CI."""
    if ok:
        return
    if os.environ.get("QUEUECTL_REQUIRE_SYSTEMD") == "1":
        pytest.fail(f"QUEUECTL_REQUIRE_SYSTEMD=1 but the package test cannot run: {reason}")
    pytest.skip(reason)


def _missing(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t, path=CLEAN_ENV["PATH"]) is None]


def debian_mirror() -> str | None:
    """The Debian archive URI this machine's apt uses for SUITE (deb822 .sources or
    one-line .list files), so that no mirror is ever written into the project."""
    if os.environ.get("QUEUECTL_TEST_MIRROR"):
        return os.environ["QUEUECTL_TEST_MIRROR"]
    apt = Path("/etc/apt")
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:  # continuation line
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if (SUITE in fields.get("suites", "").split() and "deb" in fields.get("types", "").split()
                    and fields.get("enabled", "yes").lower() != "no" and fields.get("uris")):
                return fields["uris"].split()[0]
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return None


# -- the cached pristine root ----------------------------------------------------------------
def _cache_is_valid(root: Path) -> bool:
    stamp = root / CACHE_STAMP
    return (stamp.is_file() and stamp.read_text().strip() == CACHE_RECIPE
            and (root / "lib/systemd/systemd").exists() and (root / "usr/bin/python3").exists())


def _in_private_mounts(script: str, *args: str, timeout: float) -> None:
    """Run a shell script in a private mount namespace: whatever it mounts (debootstrap mounts
    /proc and /sys in its target) vanishes with it, even if it is killed."""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork",
                             "--kill-child", "/bin/sh", "-ec", script, "sh", *args],
                            env=CLEAN_ENV, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, errors="replace", timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"building the Debian root failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def cached_root() -> Path:
    """The pristine root, (re)built when missing or invalid. A lock serialises test runs."""
    ROOTFS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOTFS_CACHE.parent / f".{ROOTFS_CACHE.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _cache_is_valid(ROOTFS_CACHE):
            return ROOTFS_CACHE
        # Only a root this test made (it has the stamp, maybe of an older recipe) is replaced.
        _require(not ROOTFS_CACHE.exists() or (ROOTFS_CACHE / CACHE_STAMP).is_file()
                 or not any(ROOTFS_CACHE.iterdir()),
                 f"{ROOTFS_CACHE} exists but was not made by this test: remove it or set "
                 "QUEUECTL_TEST_ROOTFS to another directory")
        mirror = debian_mirror()
        _require(mirror is not None, f"no '{SUITE}' Debian mirror in /etc/apt sources to "
                 f"debootstrap {ROOTFS_CACHE} from")
        new = ROOTFS_CACHE.with_name(ROOTFS_CACHE.name + ".new")
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir()
        try:
            _in_private_mounts(
                'debootstrap --variant=minbase --include="$3" "$2" "$1" "$4"\n'
                'mount -t proc proc "$1/proc"\n'
                'chroot "$1" apt-get clean\n'  # debootstrap's own downloads: 50 MB per copy
                'chroot "$1" apt-get update -q\n'
                # the package's dependencies, downloaded only; then the stamp: cache complete
                'chroot "$1" apt-get install -y -q --download-only $5\n'
                'echo "$6" > "$1/$7"\n',
                str(new), SUITE, ",".join(INCLUDE), str(mirror), " ".join(PREFETCH),
                CACHE_RECIPE, CACHE_STAMP, timeout=1200)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        if ROOTFS_CACHE.exists() or ROOTFS_CACHE.is_symlink():
            shutil.rmtree(ROOTFS_CACHE)
        new.rename(ROOTFS_CACHE)
        return ROOTFS_CACHE


# -- booting a root ----------------------------------------------------------------------------
# PID 1 of the new PID/mount/UTS/IPC/cgroup namespaces that systemd_ns.NamespacedSystemd makes
# ($1 = root directory): API file systems of its own inside the root, then pivot_root into it
# and become its systemd. As in systemd_ns.py, /proc/sys is read-only (no host sysctls),
# /dev/console is /dev/null, and the cgroup2 mount shows only this run's cgroup. /dev is a
# private tmpfs (no host device nodes beyond the basic ones, no /dev/log on the host). The
# network namespace is the host's: apt inside reaches the mirror if it must.
_BOOT_SCRIPT = """set -e
cd "$1"
mount -n --make-rprivate /
mount -n --bind . .
cd "$1"
mount -n -t proc proc proc
mount -n --bind -o ro proc/sys proc/sys
mount -n -t sysfs -o ro,nosuid,nodev,noexec sysfs sys
mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 sys/fs/cgroup
mount -n -t tmpfs -o mode=755,nosuid,size=16m tmpfs dev
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  name=${node%%:*} nums=${node#*:}
  mknod -m 666 "dev/$name" c "${nums%:*}" "${nums#*:}"
done
mkdir dev/pts dev/shm
mount -n -t devpts -o newinstance,ptmxmode=0666,mode=0620,nosuid,noexec devpts dev/pts
ln -s pts/ptmx dev/ptmx
mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs dev/shm
ln -s /proc/self/fd dev/fd
ln -s /proc/self/fd/0 dev/stdin; ln -s /proc/self/fd/1 dev/stdout; ln -s /proc/self/fd/2 dev/stderr
touch dev/console
mount -n --bind /dev/null dev/console
mount -n -t tmpfs -o mode=755,nosuid,nodev tmpfs run
mkdir run/oldroot
pivot_root . run/oldroot
cd /
umount -n -l /run/oldroot
rmdir /run/oldroot
exec env -i container=queuectl-deb-test /lib/systemd/systemd --unit=multi-user.target
"""


class BootedRoot(NamespacedSystemd):
    """A root directory whose own systemd runs as PID 1 of private namespaces."""

    nsenter_namespaces = ("-m", "-u", "-i", "-p", "-C")  # all it has (the network is the host's)
    start_timeout = 60.0
    stop_timeout = 15.0
    run_timeout = 120.0
    probe_timeout = 10.0

    def __init__(self, root: Path, name: str = "") -> None:
        """`name`: tells the cgroups of several roots booted at once apart."""
        super().__init__(f"queuectl-deb-{os.getpid()}{name and '-' + name}", env=CLEAN_ENV)
        self.root = root

    def _boot_command(self) -> list[str]:
        return ["/bin/sh", "-c", _BOOT_SCRIPT, "boot", str(self.root)]


class Admin:
    """The booted Debian 12 with queuectl installed, driven as an admin and users would."""

    def __init__(self, host: BootedRoot) -> None:
        self.host = host

    def sh(self, script: str, user: str = "root", **kw: Any) -> subprocess.CompletedProcess[str]:
        """A command line typed in a login shell of `user` (bash, so {1..4} works)."""
        if user == "root":
            return self.host.run("bash", "-lc", script, **kw)
        return self.host.run("runuser", "-l", user, "-s", "/bin/bash", "-c", script, **kw)

    def queuectl(self, user: str, *args: str, check: bool = True,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.sh(shlex.join(["queuectl", *args]), user, check=check, input=input)

    def json(self, user: str, *args: str) -> Any:
        return json.loads(self.queuectl(user, *args).stdout)

    def wait_job(self, job_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (j := self.json("alice", "show", job_id))["state"] == state and j,
                        timeout, f"job {job_id} to be {state}", every=0.2)

    def apt(self, *args: str) -> subprocess.CompletedProcess[str]:
        """apt-get as an admin runs it. If the cached index names packages the mirror no
        longer has, one `apt-get update` and a second try."""
        result = self.host.run("apt-get", "-y", "-q", *args, timeout=300)
        if result.returncode != 0 and "Failed to fetch" in result.stderr:
            self.host.run("apt-get", "update", "-q", check=True, timeout=300)
            result = self.host.run("apt-get", "-y", "-q", *args, timeout=300)
        assert result.returncode == 0, f"apt-get {shlex.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.systemctl(*args, check=check)

    def prop(self, unit: str, name: str) -> str:
        return self.host.show(unit, name)

    def active(self, n: int) -> str:
        return self.prop(f"queuectl-worker@{n}.service", "ActiveState")

    def exists(self, path: str) -> bool:
        return self.host.run("test", "-e", path).returncode == 0

    def stat(self, path: str) -> str:
        return self.host.run("stat", "-c", "%U:%G %a", path, check=True).stdout.strip()

    def events(self, *match: str) -> list[dict[str, Any]]:
        out = self.host.journalctl("-u", WORKERS, "-o", "json", *match, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- fixtures --------------------------------------------------------------------------------
# Each package is built once per session, whichever module asks first (test_deb_postgres.py
# installs the same one and a release of its own): keyed by commit, "" for the working tree.
_BUILT: dict[str, Path] = {}


def _require_build_tools() -> None:
    missing = _missing("dpkg-checkbuilddeps", "dpkg-buildpackage")
    _require(os.geteuid() == 0 or not missing,
             f"building the package needs {', '.join(missing)} (make deb as root installs them)")


def this_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb`, into a directory of this run (dist/ is left alone); once per session."""
    if "" in _BUILT:
        return _BUILT[""]
    _require_build_tools()
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(["make", "-C", str(REPO), "deb", f"DIST={out}"], capture_output=True,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", timeout=900)
    assert result.returncode == 0, f"make deb failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    debs = list(out.glob("queuectl_*_all.deb"))
    assert len(debs) == 1, f"expected one package in {out}, found {debs}"
    _BUILT[""] = debs[0]
    return debs[0]


def release_deb(commit: str, version: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package of a release, built by that release's own `make deb` from `commit` (git
    archive: the repository is left alone); once per session. The commit must be in this
    clone's history: a shallow clone fails here rather than skipping the upgrade test."""
    if commit in _BUILT:
        return _BUILT[commit]
    _require_build_tools()
    present = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                             capture_output=True, text=True)
    if present.returncode != 0:
        pytest.fail(f"commit {commit} (queuectl {version}, a release an upgrade test "
                    f"starts from) is not in the history of {REPO}: fetch the full history "
                    f"(git fetch --unshallow) ({present.stderr.strip()})")
    src = tmp_path_factory.mktemp(f"queuectl-{version}")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    out = tmp_path_factory.mktemp(f"dist-{version}")
    result = subprocess.run(["make", "-C", str(src), "deb", f"DIST={out}"], capture_output=True,
                            stdin=subprocess.DEVNULL, text=True, errors="replace", timeout=900)
    assert result.returncode == 0, \
        f"make deb of {version} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    built = out / f"queuectl_{version}_all.deb"
    assert built.is_file(), f"{commit} did not build {built.name}: {list(out.iterdir())}"
    _BUILT[commit] = built
    return built


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This version's package (this_deb)."""
    return this_deb(tmp_path_factory)


@pytest.fixture(scope="module")
def old_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package of the last release, 0.1.0 (release_deb of OLD_COMMIT)."""
    return release_deb(OLD_COMMIT, OLD_VERSION, tmp_path_factory)


def require_booting() -> Path:
    """Skip (fail under QUEUECTL_REQUIRE_SYSTEMD=1) unless a Debian root can be booted here;
    the pristine root, built if needed."""
    require_systemd_or_skip()
    missing = _missing("debootstrap", "unshare", "nsenter", "chroot")
    _require(not missing, f"missing tools: {', '.join(missing)} (apt-get install debootstrap)")
    return cached_root()


def copy_root(pristine: Path, root: Path, hostname: str, debs: list[Path]) -> None:
    """A copy of the pristine root to boot, named `hostname`, with `debs` in /root."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(pristine), str(root)], check=True)
    (root / "etc/hostname").write_text(f"{hostname}\n")
    # /dev/console is /dev/null here: a getty on it would only fail and restart
    (root / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
    for package in debs:
        shutil.copy2(package, root / "root" / package.name)


def assert_left_nothing(host: BootedRoot) -> None:
    """After host.stop(): no cgroup and no mount of the root left on the machine."""
    assert not host.cgroup.exists(), f"cgroup {host.cgroup} left behind"
    mounts = Path("/proc/self/mounts").read_text()
    assert str(host.root) not in mounts, "mounts left behind under the test root"


@pytest.fixture(scope="module")
def admin(deb: Path, old_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    pristine = require_booting()
    base = Path(tempfile.mkdtemp(prefix="queuectl-deb-", dir=tmp_path_factory.getbasetemp()))
    host = BootedRoot(base / "root")
    try:
        copy_root(pristine, host.root, "debtest", [deb, old_deb])
        host.start()
        admin = Admin(host)
        admin.apt("install", DEB_INSIDE)  # apt resolves its dependencies from Debian 12
        yield admin
    finally:
        host.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert_left_nothing(host)


# -- the package itself (no boot needed) ---------------------------------------------------------
def test_lintian_reports_no_errors_and_readme_lists_every_warning(deb: Path) -> None:
    _require(not _missing("lintian"), "lintian is not installed (apt-get install lintian)")
    result = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True,
                            stdin=subprocess.DEVNULL, text=True, env=CLEAN_ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr  # 1: errors, 2: lintian failed
    tags = re.findall(r"^([EW]): queuectl[^:]*: (\S+)", result.stdout, re.MULTILINE)
    assert not [t for t in tags if t[0] == "E"], result.stdout
    install_section = _readme_install_section()
    undocumented = sorted({t for level, t in tags if level == "W" and t not in install_section})
    assert not undocumented, f"lintian warnings not explained in the README: {undocumented}"


def _readme_install_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Install\n")
    return text[start:text.index("\n## ", start + 1)]


def test_package_version_is_the_project_version(deb: Path) -> None:
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                            capture_output=True, text=True, check=True).stdout
    assert fields.split() == ["Package:", "queuectl", "Version:", VERSION, "Architecture:", "all"]


def test_make_install_installs_the_same_files_as_the_package(deb: Path, tmp_path: Path) -> None:
    has_click = Path("/usr/bin/python3").exists() and subprocess.run(
        ["/usr/bin/python3", "-c", "import click"], capture_output=True).returncode == 0
    _require(has_click and not _missing("help2man"),
             "make install needs /usr/bin/python3 with click and help2man "
             "(apt-get install python3-click help2man)")
    dest = tmp_path / "dest"
    result = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}", "PREFIX=/usr"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    def normal(path: str) -> str:  # bookworm's units live in /lib, merged with /usr/lib
        path = path.removeprefix("./").removesuffix(".gz")
        return "usr/" + path if path.startswith("lib/") else path

    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    packaged = subprocess.run(["tar", "-t"], input=listing, capture_output=True,
                              check=True).stdout.decode().split()
    from_deb = {normal(p) for p in packaged if not p.endswith("/")
                and "/share/doc/" not in p and ".dist-info/" not in p}
    installed = {str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir()
                 and not str(p.relative_to(dest)).startswith("usr/share/doc/")}
    assert installed == from_deb
    # the unit's documentation is where this PREFIX put it
    unit = (dest / "usr/lib/systemd/system/queuectl-worker@.service").read_text()
    assert "Documentation=man:queuectl(1) file:/usr/share/doc/queuectl/README.md\n" in unit
    assert (dest / "usr/share/doc/queuectl/README.md").read_text() == \
        (REPO / "README.md").read_text()
    # the generator runs on the Python given (here the default), without site
    generator = dest / "usr/lib/systemd/system-generators/queuectl-lane-generator"
    assert generator.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"
    assert os.access(generator, os.X_OK)
    # the alert rules where README "Alert rules" says (the package: the set compared above)
    assert (dest / "usr/share/queuectl/prometheus/queuectl.rules.yml").read_text() == \
        (REPO / "prometheus/queuectl.rules.yml").read_text()
    site = dest / "usr/lib/python3/dist-packages"
    version = subprocess.run([str(dest / "usr/bin/queuectl"), "--version"], capture_output=True,
                             text=True, env={**CLEAN_ENV, "PYTHONPATH": str(site)})
    assert version.stdout.strip() == f"queuectl, version {VERSION}", version.stderr


# -- on the booted Debian 12 -----------------------------------------------------------------
@pytest.mark.slow
def test_install_creates_user_state_directory_and_enables_no_worker(admin: Admin) -> None:
    for package, version in DEBIAN_VERSIONS.items():
        installed = admin.host.run("dpkg-query", "-W", "-f=${Version}", package).stdout
        assert installed.startswith(version), f"{package} {installed}: not Debian 12's {version}"
    assert admin.host.run("dpkg-query", "-W", "-f=${Status}", "queuectl").stdout == \
        "install ok installed"
    user = admin.host.run("getent", "passwd", "queuectl", check=True).stdout.split(":")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/queuectl" and user[6].strip() == \
        "/usr/sbin/nologin"
    admin.host.run("getent", "group", "queuectl", check=True)
    assert admin.stat("/var/lib/queuectl") == "queuectl:queuectl 2770"
    assert admin.sh("queuectl --version").stdout.strip() == f"queuectl, version {VERSION}"
    assert admin.exists("/lib/systemd/system/queuectl-worker@.service")
    assert admin.exists("/usr/share/man/man1/queuectl.1.gz")
    # the unit's Documentation= names only what the package installs
    docs = shlex.split(admin.prop("queuectl-worker@1.service", "Documentation"))
    assert docs == ["man:queuectl(1)", "file:/usr/share/doc/queuectl/README.md"]
    assert admin.exists("/usr/share/doc/queuectl/README.md")
    assert admin.exists("/usr/share/queuectl/prometheus/queuectl.rules.yml")
    # the lane generator, and an example lane that is not active (only *.conf are)
    assert admin.stat(GENERATOR) == "root:root 755"
    assert admin.exists("/etc/queuectl/lanes/example.conf.sample")
    # the admin chooses N: no instance enabled or running; the (empty) target is enabled
    assert admin.sh(f"systemctl list-units --all --plain --no-legend '{WORKERS}'").stdout == ""
    assert not admin.exists("/etc/systemd/system/queuectl-workers.target.wants")
    assert admin.systemctl("is-enabled", "queuectl-workers.target").stdout.strip() == "enabled"


def test_four_workers_start_and_a_group_member_runs_jobs(admin: Admin) -> None:
    admin.sh("systemctl start queuectl-worker@{1..4}", check=True)  # as an admin types it
    for n in (1, 2, 3, 4):
        assert admin.active(n) == "active"  # Type=notify: active means READY=1 came
        unit = f"queuectl-worker@{n}.service"  # idle: checked and registered
        wait_for(lambda: admin.prop(unit, "StatusText") == "idle", 30, f"{unit} idle")  # noqa: B023
    admin.sh("useradd --create-home --groups queuectl alice", check=True)
    # no --db, no environment: the default finds the system queue
    assert admin.json("alice", "info")["database"] == "/var/lib/queuectl/queue.db"
    assert admin.queuectl("alice", "enqueue", '{"id":"hello","command":"echo Hello World"}'
                          ).stdout.strip() == "hello"
    admin.queuectl("alice", "enqueue", "--cmd", "id -un", "--id", "whoami")
    jobs = "\n".join(json.dumps({"id": f"batch{i}", "command": f"echo {i}"}) for i in range(20))
    admin.queuectl("alice", "enqueue", "--file", "-", input=jobs)
    status = wait_for(lambda: (s := admin.json("alice", "status"))["completed"] == 22 and s,
                      30, "22 completed jobs", every=0.2)
    assert status["active_workers"] == 4 and status["dead"] == 0
    hello = admin.json("alice", "show", "hello")
    assert hello["history"][0]["output"] == "Hello World\n"
    assert admin.json("alice", "show", "whoami")["history"][0]["output"] == "queuectl\n"
    # the journal shows them, as `journalctl -u 'queuectl-worker@*'` for a person
    text = admin.host.run("journalctl", "--no-pager", "-u", WORKERS, check=True).stdout
    assert "hello" in text and "echo Hello World" in text
    per_job = [e["EVENT"] for e in admin.events("JOB_ID=hello")]
    assert per_job == ["job_claimed", "job_succeeded"]
    workers = {e["WORKER"] for e in admin.events("EVENT=job_succeeded")}
    assert all(w.startswith("debtest@") for w in workers)


def test_bash_completion_completes_commands(admin: Admin) -> None:
    script = ("source /usr/share/bash-completion/completions/queuectl\n"
              "fn=$(complete -p queuectl | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')\n"
              "COMP_WORDS=(queuectl dlq r); COMP_CWORD=2; $fn queuectl; echo \"${COMPREPLY[*]}\"\n"
              "COMPREPLY=(); COMP_WORDS=(queuectl en); COMP_CWORD=1; $fn queuectl\n"
              "echo \"${COMPREPLY[*]}\"")
    lines = admin.sh(script, "alice", check=True).stdout.splitlines()
    assert lines == ["retry", "enqueue"]


def test_a_user_outside_the_group_is_refused_clearly(admin: Admin) -> None:
    admin.sh("useradd --create-home bob", check=True)
    before = admin.json("alice", "status")
    for args in (("enqueue", "--cmd", "touch /tmp/pwned"), ("status",)):
        result = admin.queuectl("bob", *args, check=False)
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("queuectl: error:")
        assert "/var/lib/queuectl/queue.db" in result.stderr
        assert "permission denied" in result.stderr.lower()
        assert "group queuectl" in result.stderr  # and what to do about it
        assert "Traceback" not in result.stderr
    assert admin.json("alice", "status") == before


def test_a_lane_file_runs_its_workers_as_its_user_after_daemon_reload(admin: Admin) -> None:
    # The numbered workers serve every queue and keep running: (re)started after the file
    # (they read the lane files at start), they leave box to its lane, which runs as lanebot.
    admin.sh("useradd --system --no-create-home lanebot && install -d -o lanebot /srv/box && "
             f"printf '%s\\n' '[Lane]' 'Queues=box' '[Service]' 'User=lanebot' "
             f"'ReadWritePaths=/srv/box' > {LANE_FILE} && "
             "systemctl daemon-reload && "
             "systemctl restart queuectl-workers.target queuectl-worker@{1..4}", check=True)
    assert all(admin.active(n) == "active" for n in (1, 2, 3, 4))
    assert admin.prop(LANE_UNIT, "ActiveState") == "active"
    assert admin.prop(LANE_UNIT, "User") == "lanebot"
    # box's lane stopped: its urgent job waits while the numbered workers run a later one
    admin.systemctl("stop", LANE_UNIT)
    admin.queuectl("alice", "enqueue", "--queue", "box", "--id", "boxed", "--priority", "10",
                   "--cmd", "id -un > /srv/box/who; cat /srv/box/who")
    admin.queuectl("alice", "enqueue", "--queue", "side", "--id", "beside", "--cmd", "true")
    beside = admin.wait_job("beside", "completed")
    assert beside["worker"].rsplit("@", 1)[1] in ("1", "2", "3", "4")  # a numbered worker
    assert admin.json("alice", "show", "boxed")["state"] == "pending"
    admin.systemctl("start", LANE_UNIT)
    job = admin.wait_job("boxed", "completed")
    assert job["history"][0]["output"] == "lanebot\n" and job["worker"].endswith("@box:1")
    [row] = [r for r in admin.json("alice", "queue", "list") if r["queue"] == "box"]
    assert row["lanes"] == [{"lane": "box", "user": "lanebot", "workers": 1, "file": LANE_FILE}]
    # the later tests count only their own jobs
    for queue in ("box", "side"):
        admin.queuectl("alice", "purge", "--state", "completed", "--queue", queue)


def test_reinstall_restarts_running_workers_only_and_loses_no_job(admin: Admin) -> None:
    admin.systemctl("enable", "queuectl-worker@1.service", "queuectl-worker@2.service")
    admin.systemctl("stop", "queuectl-worker@2.service")  # enabled, but stopped on purpose
    before = {n: admin.prop(f"queuectl-worker@{n}.service", "MainPID") for n in (1, 3, 4)}
    lane_pid = admin.prop(LANE_UNIT, "MainPID")
    admin.queuectl("alice", "enqueue", "--id", "long", "--cmd",
                   "sleep 3; echo survived > /var/lib/queuectl/long.txt")
    admin.wait_job("long", "processing")
    admin.apt("install", "--reinstall", DEB_INSIDE)  # the maintainer scripts of an upgrade
    for n, pid in before.items():
        assert admin.active(n) == "active"
        assert admin.prop(f"queuectl-worker@{n}.service", "MainPID") != pid, f"@{n} not restarted"
    assert admin.active(2) == "inactive", "an upgrade started a worker the admin had stopped"
    # the lane's instance too, on the new code and still as its file says
    assert admin.prop(LANE_UNIT, "ActiveState") == "active"
    assert admin.prop(LANE_UNIT, "MainPID") not in ("0", lane_pid)
    assert admin.prop(LANE_UNIT, "User") == "lanebot"
    long = admin.wait_job("long", "completed")
    assert long["attempts"] == 1  # it finished during the graceful restart
    assert admin.sh("cat /var/lib/queuectl/long.txt", check=True).stdout == "survived\n"
    assert admin.json("alice", "status")["completed"] == 23


def test_remove_keeps_the_queue_and_a_reinstall_finds_the_jobs(admin: Admin) -> None:
    admin.apt("remove", "queuectl")
    assert not admin.exists("/usr/bin/queuectl")
    assert all(admin.active(n) in ("inactive", "") for n in (1, 2, 3, 4)), "workers still run"
    assert admin.exists("/var/lib/queuectl/queue.db")
    assert admin.stat("/var/lib/queuectl") == "queuectl:queuectl 2770"
    admin.apt("install", DEB_INSIDE)
    done = {j["id"] for j in admin.json("alice", "list", "--state", "completed")}
    assert {"hello", "whoami", "long"} <= done and len(done) == 23
    # the workers the admin had enabled are still chosen: they come back with the target
    assert admin.systemctl("is-enabled", "queuectl-worker@1.service",
                           check=False).stdout.strip() == "enabled"
    admin.systemctl("start", "queuectl-workers.target")
    assert admin.active(1) == "active" and admin.active(2) == "active"
    assert admin.prop(LANE_UNIT, "ActiveState") == "active"  # its file is still there
    admin.queuectl("alice", "enqueue", "--id", "after-reinstall", "--cmd", "true")
    admin.wait_job("after-reinstall", "completed")


def test_purge_removes_the_queue_and_every_trace_of_the_workers(admin: Admin) -> None:
    admin.apt("purge", "queuectl")
    assert not admin.exists("/var/lib/queuectl")
    assert not admin.exists("/etc/systemd/system/queuectl-workers.target.wants")
    leftovers = admin.sh("find /etc/systemd /lib/systemd/system -name 'queuectl*'").stdout
    assert leftovers == ""
    assert admin.sh(f"systemctl list-units --plain --no-legend '{WORKERS}'").stdout.strip() == ""
    # the package's example is gone; the admin's own lane file stays, unused without the
    # generator (removed here so that the next test starts from a clean root)
    assert not admin.exists(GENERATOR)
    assert not admin.exists("/etc/queuectl/lanes/example.conf.sample")
    assert admin.exists(LANE_FILE)
    admin.sh("rm -r /etc/queuectl && userdel lanebot && rm -r /srv/box", check=True)


# -- from the last release to this one, under a live queue ---------------------------------------
# Every job writes a start and an end line, so the log shows how often each one ran and finished.
RUNS_LOG = f"{STATE_DIR}/runs.log"
SHORT_JOB = (f'echo "start $QUEUECTL_JOB_ID" >> {RUNS_LOG}; sleep 0.2; '
             f'echo "end $QUEUECTL_JOB_ID" >> {RUNS_LOG}')
# Runs until the test creates RELEASE (after the upgrade): certainly running when it starts.
RELEASE = f"{STATE_DIR}/release"
HOLD_JOB = (f'echo "start $QUEUECTL_JOB_ID" >> {RUNS_LOG}; '
            f'while [ ! -e {RELEASE} ]; do sleep 0.1; done; echo "end $QUEUECTL_JOB_ID" >> {RUNS_LOG}')


def spawned(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history rows of attempts whose command ran, so wrote a start line in RUNS_LOG: not
    one a stopping worker (0.1.0 to this version) released because it had claimed it, with
    its last completion, just as the stop came."""
    return [r for r in rows if r.get("error") != "worker shutdown before it started"]


# Fails its first attempt, succeeds the retry: a history of two attempts.
FLAKY_JOB = (f'if [ -e {STATE_DIR}/$QUEUECTL_JOB_ID.tried ]; then echo again; '
             f'else touch {STATE_DIR}/$QUEUECTL_JOB_ID.tried; echo first; exit 3; fi')
SHORT = [f"j{i:04d}" for i in range(1000)]
HOLD = ["hold1", "hold2"]
FLAKY = ["flaky1", "flaky2", "flaky3"]
DOOMED = ["doomed1", "doomed2"]
# The columns of schema 1 (0.1.0): a migration may add columns, never change these.
JOB_COLUMNS_V1 = ("id", "command", "state", "attempts", "max_retries", "priority", "timeout",
                  "run_at", "created_at", "updated_at", "worker", "lease_expires_at", "started_at",
                  "finished_at", "exit_code", "last_error")
ATTEMPT_COLUMNS_V1 = ("seq", "job_id", "attempt", "worker", "started_at", "finished_at", "outcome",
                      "exit_code", "error", "output")
# One read transaction on the live database (WAL: it never blocks the workers), as JSON.
_SNAPSHOT = """
import json, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=30,
                     isolation_level=None)
db.row_factory = sqlite3.Row
db.execute("BEGIN")
def rows(sql):
    return [{k: (r[k].hex() if isinstance(r[k], bytes) else r[k]) for k in r.keys()}
            for r in db.execute(sql)]
print(json.dumps({
    "user_version": db.execute("PRAGMA user_version").fetchone()[0],
    "jobs": {j["id"]: j for j in rows("SELECT * FROM jobs")},
    "attempts": rows("SELECT * FROM attempts ORDER BY seq"),
    "config": {c["key"]: c["value"] for c in rows("SELECT * FROM config")},
}))
db.execute("COMMIT")
"""


def db_snapshot(admin: Admin) -> dict[str, Any]:
    result = admin.host.run("python3", "-c", _SNAPSHOT, f"{STATE_DIR}/queue.db", check=True)
    return json.loads(result.stdout)


def history(snap: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return [a for a in snap["attempts"] if a["job_id"] == job_id]


def v1(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    return {c: row[c] for c in columns}


@pytest.mark.slow
def test_upgrade_from_the_last_release_under_a_live_queue_loses_nothing(admin: Admin) -> None:
    # 0.1.0 on the purged root, four workers. They are started through a drop-in giving them
    # `--grace 2` (not 30 s) for the job they run when stopped, so that the upgrade interrupts
    # the hold jobs quickly; the drop-in is gone before the upgrade, so the new workers start
    # from the packaged unit as it is.
    admin.apt("install", OLD_DEB_INSIDE)
    assert admin.sh("queuectl --version").stdout.strip() == f"queuectl, version {OLD_VERSION}"
    dropin = "/etc/systemd/system/queuectl-worker@.service.d"
    admin.sh(f"mkdir -p {dropin} && printf '%s\\n' '[Service]' 'ExecStart=' "
             "'ExecStart=/usr/bin/queuectl worker run --name %H@%i --grace 2' "
             f"> {dropin}/grace.conf && systemctl daemon-reload && "
             "systemctl start queuectl-worker@{1..4} && "
             f"rm -r {dropin} && systemctl daemon-reload && "
             "systemctl enable queuectl-worker@5",  # enabled, not running: must stay stopped
             check=True)
    for n in (1, 2, 3, 4):
        pid = admin.prop(f"queuectl-worker@{n}.service", "MainPID")
        argv = admin.host.run("cat", f"/proc/{pid}/cmdline", check=True).stdout.split("\0")
        assert argv[-3:-1] == ["--grace", "2"], argv
    admin.queuectl("alice", "config", "set", "max-retries", "5")
    admin.queuectl("alice", "config", "set", "backoff-base", "1.5")
    extras = ([{"id": i, "command": HOLD_JOB, "priority": 10} for i in HOLD]
              + [{"id": i, "command": FLAKY_JOB, "priority": 5} for i in FLAKY]
              + [{"id": i, "command": "echo doomed; exit 7", "priority": 5, "max_retries": 0}
                 for i in DOOMED])
    admin.queuectl("alice", "enqueue", "--file", "-",
                   input="".join(json.dumps(j) + "\n" for j in extras))
    admin.queuectl("alice", "enqueue", "--file", "-",
                   input="".join(json.dumps({"id": i, "command": SHORT_JOB}) + "\n" for i in SHORT))

    def mid_drain() -> dict[str, Any] | None:
        snap = db_snapshot(admin)
        states = {i: j["state"] for i, j in snap["jobs"].items()}
        done = sum(states[i] == "completed" for i in SHORT)
        ready = (all(states[i] == "processing" for i in HOLD) and done >= 150
                 and all(states[i] == "completed" for i in FLAKY)
                 and all(states[i] == "dead" for i in DOOMED))
        return snap if ready else None

    before = wait_for(mid_drain, 300, "0.1.0 to be mid-drain, the hold jobs running", every=0.5)
    assert before["user_version"] == 1
    pids = {n: admin.prop(f"queuectl-worker@{n}.service", "MainPID") for n in (1, 2, 3, 4)}

    # the upgrade, as an admin types it
    upgrade = admin.sh(f"cd /root && apt install -y ./{Path(DEB_INSIDE).name}", timeout=600)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    admin.sh(f"touch {RELEASE}", check=True)
    assert admin.sh("queuectl --version").stdout.strip() == f"queuectl, version {VERSION}"
    left = sum(before["jobs"][i]["state"] != "completed" for i in SHORT)
    assert left >= 100, f"only {left} jobs were left when the upgrade started: not mid-drain"

    # the four workers run again, in new processes started after the new code was unpacked;
    # the one the admin had not started is still stopped
    new_pids = {n: admin.prop(f"queuectl-worker@{n}.service", "MainPID") for n in (1, 2, 3, 4)}
    for n in (1, 2, 3, 4):
        assert admin.active(n) == "active"
        assert new_pids[n] not in ("0", pids[n]), f"@{n} was not restarted"
    assert admin.active(5) == "inactive", "an upgrade started a worker the admin had not started"
    unpacked_at = float(admin.host.run("python3", "-c", (
        "import os, sys, time\n"
        "age = time.time() - os.stat(sys.argv[1]).st_ctime\n"
        "print(time.monotonic() - age)"),
        "/usr/lib/python3/dist-packages/queuectl/__init__.py", check=True).stdout)
    for n in (1, 2, 3, 4):
        started = int(admin.prop(f"queuectl-worker@{n}.service",
                                 "ExecMainStartTimestampMonotonic")) / 1e6
        assert started > unpacked_at, f"@{n} started before {VERSION}'s files were unpacked"
        argv = admin.host.run("cat", f"/proc/{new_pids[n]}/cmdline", check=True).stdout
        assert "\0--grace\x0030\0" in argv, f"@{n} did not start from the packaged unit: {argv}"
    code_version = admin.host.run("python3", "-c", "import queuectl; print(queuectl.__version__)",
                                  check=True).stdout.strip()
    assert code_version == VERSION

    # the rest of the queue drains on the new code
    wait_for(lambda: (s := admin.json("alice", "status"))["completed"] == len(SHORT + HOLD + FLAKY)
             and s["dead"] == len(DOOMED), 600, "every job to finish after the upgrade", every=1)
    for n, pid in new_pids.items():
        ran = admin.events("EVENT=job_succeeded", f"_PID={pid}")
        assert ran, f"the restarted @{n} (pid {pid}) ran no job"
    after = db_snapshot(admin)
    schema = admin.host.run("python3", "-c", "from queuectl.backends.sqlite_schema import "
                            "SCHEMA_VERSION; print(SCHEMA_VERSION)", check=True).stdout.strip()
    assert after["user_version"] == int(schema) > 1, "the schema was not migrated"

    # every job, its history and the settings survived the migration
    assert set(after["jobs"]) == set(before["jobs"]) == set(SHORT + HOLD + FLAKY + DOOMED)
    for job_id, old in before["jobs"].items():
        new = after["jobs"][job_id]
        for column in ("command", "max_retries", "priority", "timeout", "created_at"):
            assert new[column] == old[column], f"{job_id}: {column} changed"
        if old["state"] in ("completed", "dead"):
            assert v1(new, JOB_COLUMNS_V1) == v1(old, JOB_COLUMNS_V1), f"{job_id} changed"
    old_rows = {a["seq"]: a for a in before["attempts"]}
    new_rows = {a["seq"]: a for a in after["attempts"]}
    for seq, old in old_rows.items():
        assert seq in new_rows, f"history row {old} lost"
        if old["finished_at"] is not None:
            assert v1(new_rows[seq], ATTEMPT_COLUMNS_V1) == v1(old, ATTEMPT_COLUMNS_V1)
        else:  # the attempt running then has ended since
            assert v1(new_rows[seq], ATTEMPT_COLUMNS_V1[:5]) == v1(old, ATTEMPT_COLUMNS_V1[:5])
    assert {k: after["config"].get(k) for k in before["config"]} == before["config"]
    assert set(before["config"]) >= {"max-retries", "backoff-base"}
    assert admin.queuectl("alice", "config", "get", "max-retries").stdout.strip() == "5"
    assert admin.queuectl("alice", "config", "get", "backoff-base").stdout.strip() == "1.5"

    # each job finished exactly once; one the upgrade interrupted ran again once, its history
    # says so and the interrupted attempt cost no retry
    runs = admin.host.run("cat", RUNS_LOG, check=True).stdout.split("\n")
    starts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    for line in filter(None, runs):
        what, job_id = line.split()
        (starts if what == "start" else ends)[job_id] += 1
    interrupted = []
    for job_id in SHORT + HOLD:
        job, rows = after["jobs"][job_id], history(after, job_id)
        outcomes = [a["outcome"] for a in rows]
        assert job["state"] == "completed", (job_id, job, outcomes)
        assert outcomes in (["completed"], ["interrupted", "completed"]), (job_id, outcomes)
        assert starts[job_id] == len(spawned(rows)), (job_id, starts[job_id], rows)
        # a job stopped between its last line and its exit may have finished its work twice;
        # one that was not interrupted (and a hold job: it cannot end early) exactly once
        assert ends[job_id] == 1 or (ends[job_id] == 2 and job_id not in HOLD
                                     and outcomes[0] == "interrupted"), (job_id, ends[job_id])
        assert job["attempts"] == 1, f"{job_id}: attempts {job['attempts']} after {outcomes}"
        if outcomes[0] == "interrupted":
            assert "shutdown" in (rows[0]["error"] or ""), rows[0]
            interrupted.append(job_id)
    assert set(HOLD) <= set(interrupted), "the jobs running at the upgrade were not interrupted"
    for job_id in FLAKY:
        assert [a["outcome"] for a in history(after, job_id)] == ["failed", "completed"]
        assert after["jobs"][job_id]["attempts"] == 2 and after["jobs"][job_id]["max_retries"] == 5
    for job_id in DOOMED:
        assert [a["outcome"] for a in history(after, job_id)] == ["failed"]
        assert after["jobs"][job_id]["attempts"] == 1 and after["jobs"][job_id]["exit_code"] == 7
    print(f"upgrade: {left} of {len(SHORT)} jobs left when it started, "
          f"{len(interrupted)} interrupted and run again: {sorted(interrupted)}")


# Workers stopping at once can leave the WAL unfolded (a connection folds it into queue.db on
# close only when it finds itself the last one open); the next opener of any version folds
# it, which changes the bytes and no row. The test folds it first, as the only opener, so
# that the bytes compared are the queue's.
_FOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
"""

_HASHES = """
import hashlib, os, sys
for name in sorted(os.listdir(sys.argv[1])):
    if name.startswith("queue.db") and not name.endswith("-shm"):
        with open(os.path.join(sys.argv[1], name), "rb") as f:
            print(name, hashlib.sha256(f.read()).hexdigest())
"""


def test_the_last_release_refuses_the_migrated_database_and_changes_nothing(admin: Admin) -> None:
    # the admin stops the workers and downgrades; the queue's files (not the -shm index, which
    # any reader rewrites) are compared byte for byte before and after 0.1.0 touches them
    admin.sh(f"systemctl stop '{WORKERS}.service'", check=True)
    admin.host.run("python3", "-c", _FOLD, f"{STATE_DIR}/queue.db", check=True)
    before = admin.host.run("python3", "-c", _HASHES, STATE_DIR, check=True).stdout
    assert "queue.db " in before and "queue.db-wal" not in before, before
    downgrade = admin.sh(f"cd /root && apt install -y --allow-downgrades ./{Path(OLD_DEB_INSIDE).name}",
                         timeout=600)
    assert downgrade.returncode == 0, downgrade.stdout + downgrade.stderr
    assert admin.sh("queuectl --version").stdout.strip() == f"queuectl, version {OLD_VERSION}"
    for args in (("status",), ("enqueue", "--cmd", "true"), ("list",)):
        result = admin.queuectl("alice", *args, check=False)
        assert result.returncode == 1 and result.stdout == "", (args, result)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("queuectl: error:"), \
            (args, result.stderr)
        assert "newer than this queuectl understands" in result.stderr, result.stderr
        assert "upgrade queuectl" in result.stderr
    # a worker of 0.1.0 does not start on it either, and says why in one journal line
    start = admin.systemctl("start", "queuectl-worker@1.service", check=False)
    assert start.returncode != 0, "a 0.1.0 worker started on the migrated database"
    admin.systemctl("stop", "queuectl-worker@1.service", check=False)
    journal = admin.host.journalctl("-u", "queuectl-worker@1.service", "-o", "json",
                                    check=True).stdout
    said = [str(json.loads(line).get("MESSAGE", "")) for line in journal.splitlines() if line]
    assert any("newer than this queuectl understands" in m for m in said), said[-10:]
    after = admin.host.run("python3", "-c", _HASHES, STATE_DIR, check=True).stdout
    assert after == before, f"0.1.0 changed the database:\n{before}\n{after}"
