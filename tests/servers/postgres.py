"""A throwaway PostgreSQL server: a private cluster in a temporary directory.

Stdlib only. Tests get one through the ``postgres_server`` fixture of
:mod:`servers.plugin`; benchmarks use the class directly::

    from servers.postgres import PostgresServer, find_pg_bin

    if find_pg_bin() is not None:
        with PostgresServer() as pg:
            engine = sqlalchemy.create_engine(pg.url)
            ...
            pg.restart()  # an outage and its recovery (same port, same data)

The server listens on 127.0.0.1 only (trust auth, superuser ``postgres``) on a
free port, with its unix socket, data directory and log inside a private
temporary directory that is removed on cleanup. When running as root, the
PostgreSQL binaries run as the ``postgres`` system user (PostgreSQL refuses to
run as root) and the temporary directory is owned by that user.

Smoke test, from the repository root: ``PYTHONPATH=tests python -m servers.postgres``.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from types import TracebackType
from typing import Literal

from ._process import (
    HOST,
    find_bin_dir,
    find_free_port,
    has_executables,
    private_dir,
    run,
    service_user,
    tail,
)

__all__ = [
    "PG_BIN_ENV",
    "PostgresServer",
    "StopMode",
    "find_pg_bin",
]

PG_BIN_ENV = "VEMETRIC_AUTH_PG_BIN"
"""Environment variable naming the directory that holds initdb/pg_ctl."""

StopMode = Literal["smart", "fast", "immediate"]

_SYSTEM_USER = "postgres"  # OS account used to run the server when we are root
_DB_SUPERUSER = "postgres"  # database superuser created by initdb -U
_REQUIRED_BINARIES = ("initdb", "pg_ctl")
_CMD_TIMEOUT = 120.0  # seconds, for any single initdb / pg_ctl / createdb call
_PG_CTL_WAIT = 60  # seconds, pg_ctl -t
_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def find_pg_bin() -> str | None:
    """Return the directory holding ``initdb`` and ``pg_ctl``, or None.

    Lookup order: ``$VEMETRIC_AUTH_PG_BIN``; ``initdb`` on ``PATH``; then the
    newest ``/usr/lib/postgresql/*/bin`` (Debian's layout).
    """
    return find_bin_dir(
        _REQUIRED_BINARIES,
        override_env=PG_BIN_ENV,
        candidates="/usr/lib/postgresql/*/bin",
    )


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory.

    ``start()`` creates the cluster on first use (initdb) and starts it;
    ``stop()`` stops it but keeps the data; ``restart()`` is stop + start on
    the same data directory and port; ``cleanup()`` stops it and removes
    the temporary directory.  Used as a context manager it starts on enter
    and cleans up on exit.
    """

    def __init__(
        self,
        pg_bin: str | None = None,
        *,
        port: int | None = None,
        base_dir: str | None = None,
        max_connections: int = 200,
    ) -> None:
        resolved = pg_bin if pg_bin is not None else find_pg_bin()
        if resolved is None or not has_executables(resolved, _REQUIRED_BINARIES):
            raise RuntimeError(
                "PostgreSQL binaries (initdb, pg_ctl) not found; set "
                f"{PG_BIN_ENV} to the directory that holds them"
            )
        self.pg_bin: str = resolved
        self.port: int = port if port is not None else find_free_port()
        self._fixed_port = port is not None
        self.host: str = HOST
        self.user: str = _DB_SUPERUSER
        self.max_connections = max_connections
        self._base_dir = base_dir
        # The system user to run the binaries as: "postgres" when we are root.
        self._system_user = service_user(_SYSTEM_USER)
        self._tmpdir: str | None = None
        self._initialized = False
        self._started_once = False
        self._atexit_registered = False

    # ------------------------------------------------------------------
    # paths / urls

    @property
    def tmpdir(self) -> str:
        """The private temporary directory (raises before the first start)."""
        if self._tmpdir is None:
            raise RuntimeError("server has not been started yet")
        return self._tmpdir

    @property
    def data_dir(self) -> str:
        """The cluster's data directory (``PGDATA``)."""
        return os.path.join(self.tmpdir, "data")

    @property
    def socket_dir(self) -> str:
        """Where the server puts its unix socket (the private temp dir)."""
        return self.tmpdir

    @property
    def log_file(self) -> str:
        """The server log written by ``pg_ctl -l``."""
        return os.path.join(self.tmpdir, "postgres.log")

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (no secrets in it)."""
        if self._tmpdir is None:
            return ""
        return tail(self.log_file, lines)

    # ------------------------------------------------------------------
    # subprocess helpers

    def _bin(self, name: str) -> str:
        path = os.path.join(self.pg_bin, name)
        if os.path.isfile(path):
            return path
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"{name} not found in {self.pg_bin} or on PATH")
        return found

    def _env(self) -> dict[str, str]:
        # Drop PG* variables so nothing redirects the tools to another server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        return env

    def _run(
        self, args: list[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool, as the postgres system user if we are root."""
        proc = run(
            args,
            cwd=self.tmpdir,
            env=self._env(),
            user=self._system_user,
            timeout=_CMD_TIMEOUT,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"command failed with exit code {proc.returncode}: "
                f"{shlex.join(args)}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n"
                f"server log tail:\n{self.log_tail()}"
            )
        return proc

    # ------------------------------------------------------------------
    # lifecycle

    def _make_tmpdir(self) -> None:
        self._tmpdir = private_dir(
            "vemetric-pg-", owner=self._system_user, base=self._base_dir
        )
        if not self._atexit_registered:
            atexit.register(self._atexit_cleanup)
            self._atexit_registered = True

    def _initdb(self) -> None:
        self._run(
            [
                self._bin("initdb"),
                "-D",
                self.data_dir,
                "-A",
                "trust",
                "-U",
                _DB_SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "-N",  # --no-sync
            ]
        )
        # Belt and braces: only loopback TCP (and the private socket) is used.
        hba = os.path.join(self.data_dir, "pg_hba.conf")
        with open(hba, "w", encoding="utf-8") as fh:
            fh.write("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        self._initialized = True

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {shlex.quote(self.socket_dir)}",
                f"-c listen_addresses={self.host}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                f"-c max_connections={self.max_connections}",
            ]
        )
        return self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                self.data_dir,
                "-w",
                "-t",
                str(_PG_CTL_WAIT),
                "-o",
                options,
                "-l",
                self.log_file,
                "start",
            ],
            check=False,
        )

    def start(self) -> None:
        """Create the cluster if needed and start the server (idempotent)."""
        if self._tmpdir is None:
            self._make_tmpdir()
        if not self._initialized:
            self._initdb()
        if self.is_running():
            return
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            proc = self._pg_ctl_start()
            if proc.returncode == 0:
                self._started_once = True
                return
            log = self.log_tail(60)
            port_clash = "could not bind" in log or "already in use" in log
            # After the first successful start the port must stay stable
            # (restart() promises the same port), so only re-pick before that.
            if port_clash and attempt + 1 < attempts and not self._started_once:
                # Lost the race for the port picked by find_free_port().
                self.port = find_free_port()
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on {self.host}:{self.port} "
                f"(pg_ctl exit code {proc.returncode})\n"
                f"pg_ctl stdout:\n{proc.stdout}\npg_ctl stderr:\n{proc.stderr}\n"
                f"server log tail:\n{log}"
            )

    def is_running(self) -> bool:
        """True if the postmaster for our data directory is running."""
        if self._tmpdir is None or not self._initialized:
            return False
        proc = self._run(
            [self._bin("pg_ctl"), "-D", self.data_dir, "status"], check=False
        )
        return proc.returncode == 0

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping the data directory (no-op if stopped)."""
        if not self.is_running():
            return
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                self.data_dir,
                "-w",
                "-t",
                str(_PG_CTL_WAIT),
                "-m",
                mode,
                "stop",
            ]
        )

    def stop_now(self) -> None:
        """Stop immediately (like a crash: no checkpoint, clients cut off)."""
        self.stop("immediate")

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop then start again on the same data directory and port."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server (fast, falling back to immediate) and delete it."""
        if self._tmpdir is None:
            return
        try:
            try:
                self.stop("fast")
            except (RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._initialized = False
            if self._atexit_registered:
                atexit.unregister(self._atexit_cleanup)
                self._atexit_registered = False

    close = cleanup

    def _atexit_cleanup(self) -> None:
        # Interpreter exit: report, but never mask the real exit status.
        try:
            self.cleanup()
        except Exception as exc:
            print(f"PostgresServer: cleanup at exit failed: {exc}", file=sys.stderr)

    # ------------------------------------------------------------------
    # databases

    def create_database(self, name: str) -> str:
        """Create a fresh database ``name`` and return its SQLAlchemy URL."""
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid database name: {name!r}")
        self._run(
            [
                self._bin("createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                _DB_SUPERUSER,
                name,
            ]
        )
        return self.url_for(name)

    # ------------------------------------------------------------------
    # context manager

    def __enter__(self) -> PostgresServer:
        # __exit__ does not run when __enter__ raises: clean up here instead.
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return (
            f"PostgresServer(pg_bin={self.pg_bin!r}, port={self.port}, "
            f"tmpdir={self._tmpdir!r})"
        )


def _smoke() -> int:
    pg_bin = find_pg_bin()
    if pg_bin is None:
        print("PostgreSQL binaries not found", file=sys.stderr)
        return 1
    print(f"pg_bin: {pg_bin}")
    psql = os.path.join(pg_bin, "psql")
    if not os.path.isfile(psql):
        psql = shutil.which("psql") or "psql"
    t0 = time.monotonic()
    with PostgresServer(pg_bin) as pg:
        print(f"started in {time.monotonic() - t0:.2f}s: {pg.url}")
        print(f"tmpdir: {pg.tmpdir}")
        tmpdir = pg.tmpdir
        out = subprocess.run(
            [
                psql,
                "-X",
                "-h",
                pg.host,
                "-p",
                str(pg.port),
                "-U",
                pg.user,
                "-d",
                "postgres",
                "-Atc",
                "select 1",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        print(f"psql select 1 -> {out.stdout.strip()}")
        print(f"created: {pg.create_database('smoke_db')}")
        t1 = time.monotonic()
        pg.restart()
        print(f"restarted in {time.monotonic() - t1:.2f}s, running={pg.is_running()}")
    print(f"stopped; tmpdir removed: {not os.path.exists(tmpdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(_smoke())
