"""A copy of queuectl and its pure-Python dependencies that any user can run.

The venv's interpreter may live where other users cannot reach (pyenv under /root), so tests
that run queuectl as another user, or under systemd as user `queuectl`, run this copy with
the system's /usr/bin/python3 instead.
"""

import shutil
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"


def install_app(base: Path, visible_as: Path | None = None) -> Path:
    """Copy the app into base/app and write base/bin/queuectl; returns that wrapper's path.

    visible_as: where base will be seen by the processes that run it (a bind mount), if not
    at its own path."""
    import click
    import sdnotify

    import queuectl

    for module in (queuectl, click, sdnotify):
        src = Path(module.__file__).parent
        shutil.copytree(src, base / "app" / src.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    seen = visible_as or base
    wrapper = base / "bin" / "queuectl"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={seen}/app exec {SYSTEM_PYTHON} -m queuectl "$@"\n')
    for path in (base, base / "app", base / "bin", wrapper):
        path.chmod(0o755)
    return wrapper
