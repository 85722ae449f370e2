"""What every throwaway server shares: where its binaries are, a free loopback
port, a private directory, and running its binaries as an unprivileged user
when the tests run as root (CI does; PostgreSQL refuses to run as root).

Stdlib only.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

HOST = "127.0.0.1"


def in_ci() -> bool:
    """Whether this is a CI run (``CI=true``): there a missing server fails the
    tests that need it, instead of skipping them."""
    return os.environ.get("CI", "").lower() == "true"


def has_executables(directory: str, names: Sequence[str]) -> bool:
    """Whether *directory* holds every one of the executables *names*."""
    return all(
        os.path.isfile(os.path.join(directory, name))
        and os.access(os.path.join(directory, name), os.X_OK)
        for name in names
    )


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); non-numeric versions sort first.
    parts = re.findall(r"\d+", Path(path).parent.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def find_bin_dir(
    names: Sequence[str], *, override_env: str, candidates: str | None = None
) -> str | None:
    """Return the directory holding every one of the executables *names*, or None.

    Lookup order: the directory named by the environment variable
    *override_env* (that one only, when it is set); the directory of
    ``names[0]`` on ``PATH``, symlinks resolved first (so that a
    ``/usr/local/bin/initdb`` link to ``/usr/lib/postgresql/15/bin`` yields
    the real directory, with its sibling tools); then the newest directory
    matching the glob *candidates*, newest by the version number in its
    parent's name.
    """
    override = os.environ.get(override_env)
    if override:
        return os.path.abspath(override) if has_executables(override, names) else None
    found = shutil.which(names[0])
    if found is not None:
        for directory in (
            os.path.dirname(os.path.realpath(found)),
            os.path.dirname(os.path.abspath(found)),
        ):
            if has_executables(directory, names):
                return directory
    if candidates is not None:
        matching = [d for d in glob.glob(candidates) if has_executables(d, names)]
        if matching:
            return max(matching, key=_version_key)
    return None


def find_free_port(host: str = HOST) -> int:
    """Return a currently free TCP port on *host* (bind to port 0, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def service_user(name: str) -> str | None:
    """The system user to run a server's binaries as: *name* when we are root,
    else None (run them as ourselves)."""
    return name if os.geteuid() == 0 else None


def _traversable_by_others(path: str) -> bool:
    """True if every ancestor of *path* has the world-execute bit."""
    current = Path(path).resolve()
    for directory in (current, *current.parents):
        try:
            mode = os.stat(directory).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def private_dir(prefix: str, *, owner: str | None, base: str | None = None) -> str:
    """Make a private temporary directory, owned by the user *owner* if given.

    That user must be able to reach it: when the system's temporary directory
    is not traversable by others (a root's ``TMPDIR`` under ``/root``), it is
    made under ``/tmp`` instead.
    """
    if base is None:
        base = tempfile.gettempdir()
        if owner is not None and not _traversable_by_others(base):
            # mkdtemp() still makes a private, unpredictable directory.
            base = "/tmp"  # noqa: S108
    directory = tempfile.mkdtemp(prefix=prefix, dir=base)
    if owner is not None:
        shutil.chown(directory, user=owner, group=owner)
    return directory


def run(
    args: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    user: str | None,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a server's tool, as the system user *user* if given (we are root),
    without a terminal; its output is captured, its exit status not checked."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
        group=user,
        # Root's supplementary groups are dropped along with root.
        extra_groups=None if user is None else [],
    )


def tail(path: str, lines: int = 40) -> str:
    """The last *lines* lines of the text file *path*, or why it is unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            content = fh.readlines()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "".join(content[-lines:])
