"""A throwaway Redis server: one ``redis-server`` process on a free loopback port.

Stdlib only. Tests get one through the ``redis_server`` fixture of
:mod:`servers.plugin`; benchmarks use the class directly::

    from servers.redis import RedisServer, find_redis_bin

    if find_redis_bin() is not None:
        with RedisServer() as redis:
            limiter = RateLimiter("100/minute", storage_uri=redis.url)
            ...
            redis.kill()     # a crash: clients get "connection refused"
            redis.start()    # back, empty, on the same port
            redis.freeze()   # SIGSTOP: connections open, no answer
            redis.thaw()

The server listens on 127.0.0.1 only, keeps nothing on disk (no RDB, no AOF)
and writes its log in a private temporary directory removed on cleanup. It
is started, and stopped, by its process id: nothing else on the machine is
touched. :meth:`RedisServer.command` speaks enough of the Redis protocol for
a test to read ``INFO`` or send ``FLUSHALL`` without a client library.

Smoke test, from the repository root: ``PYTHONPATH=tests python -m servers.redis``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import TracebackType
from typing import TypeAlias

from ._process import HOST, find_bin_dir, find_free_port, private_dir, tail

__all__ = ["REDIS_BIN_ENV", "RedisError", "RedisServer", "find_redis_bin"]

REDIS_BIN_ENV = "VEMETRIC_AUTH_REDIS_BIN"
"""Environment variable naming the directory that holds redis-server."""

_REQUIRED_BINARIES = ("redis-server",)
_START_TIMEOUT = 30.0  # seconds for the server to answer PING
_STOP_TIMEOUT = 30.0  # seconds for the process to exit after SIGTERM
_COMMAND_TIMEOUT = 10.0  # seconds for one command()

Reply: TypeAlias = "bytes | int | list[Reply] | None"


class RedisError(Exception):
    """An error reply (``-ERR ...``) of :meth:`RedisServer.command`."""


def find_redis_bin() -> str | None:
    """Return the directory holding ``redis-server``, or None.

    Lookup order: ``$VEMETRIC_AUTH_REDIS_BIN`` (that one only, when set);
    then ``redis-server`` on ``PATH`` (Debian's package puts it in
    ``/usr/bin``).
    """
    return find_bin_dir(_REQUIRED_BINARIES, override_env=REDIS_BIN_ENV)


class RedisServer:
    """One private ``redis-server`` process.

    ``start()`` starts it (and returns once it answers); ``stop()`` ends it
    with SIGTERM, ``kill()`` with SIGKILL (a crash); ``freeze()`` and
    ``thaw()`` send SIGSTOP and SIGCONT. A restart keeps the port (the
    data is gone: nothing is persisted). ``cleanup()`` stops it and removes
    its directory. Used as a context manager it starts on enter and cleans
    up on exit.
    """

    def __init__(
        self,
        redis_bin: str | None = None,
        *,
        port: int | None = None,
        base_dir: str | None = None,
        cluster: bool = False,
    ) -> None:
        resolved = redis_bin if redis_bin is not None else find_redis_bin()
        if resolved is None:
            raise RuntimeError(
                f"redis-server not found; set {REDIS_BIN_ENV} to the directory "
                "that holds it"
            )
        self.redis_bin: str = resolved
        self.host: str = HOST
        self.port: int = port if port is not None else find_free_port()
        self._fixed_port = port is not None
        self._base_dir = base_dir
        self.cluster = cluster
        self._tmpdir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._started_once = False
        self._atexit_registered = False

    # ------------------------------------------------------------------
    # paths / urls

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0 of this server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._process.pid if self.is_running() and self._process else None

    @property
    def log_file(self) -> str:
        """The server's log file."""
        if self._tmpdir is None:
            raise RuntimeError("server has not been started yet")
        return os.path.join(self._tmpdir, "redis.log")

    def log_tail(self, lines: int = 40) -> str:
        """The last *lines* lines of the server log."""
        return "" if self._tmpdir is None else tail(self.log_file, lines)

    # ------------------------------------------------------------------
    # lifecycle

    def start(self) -> None:
        """Start the server if it is not running, and wait until it answers."""
        if self.is_running():
            return
        if self._tmpdir is None:
            self._tmpdir = private_dir(
                "vemetric-redis-", owner=None, base=self._base_dir
            )
            if not self._atexit_registered:
                atexit.register(self._atexit_cleanup)
                self._atexit_registered = True
        attempts = 1 if self._fixed_port or self._started_once else 3
        for attempt in range(attempts):
            try:
                self._spawn()
                self._started_once = True
                return
            except RuntimeError:
                # Lost the race for the port find_free_port() picked; after
                # the first start the port stays (restarts promise it).
                if attempt + 1 == attempts:
                    raise
                self.port = find_free_port()

    def _spawn(self) -> None:
        assert self._tmpdir is not None
        args = [
            os.path.join(self.redis_bin, "redis-server"),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            self._tmpdir,
            "--logfile",
            self.log_file,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        if self.cluster:
            # A fresh node file each start: the node forgets it ever was one.
            nodes = os.path.join(self._tmpdir, "nodes.conf")
            if os.path.exists(nodes):
                os.remove(nodes)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", nodes]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._tmpdir,
        )
        self._frozen = False
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(
                    f"redis-server exited at start on {self.host}:{self.port}\n"
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                if self.command("PING", timeout=1.0) == b"PONG":
                    if self.cluster:
                        self._make_cluster(deadline)
                    return
            except (OSError, RedisError):
                pass
            time.sleep(0.02)
        self._signal(signal.SIGKILL)
        raise RuntimeError(
            f"redis-server did not answer within {_START_TIMEOUT:.0f} s on "
            f"{self.host}:{self.port}\nlog tail:\n{self.log_tail()}"
        )

    def _make_cluster(self, deadline: float) -> None:
        """Give this one node every slot: a cluster of one, enough for a
        cluster client to talk to."""
        self.command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        while time.monotonic() < deadline:
            if self.info("cluster").get("cluster_enabled") == "1":
                state = self.command("CLUSTER", "INFO")
                assert isinstance(state, bytes)
                if b"cluster_state:ok" in state:
                    return
            time.sleep(0.02)
        raise RuntimeError(
            f"the Redis cluster node on port {self.port} never got ready"
        )

    @property
    def cluster_url(self) -> str:
        """The ``redis+cluster://`` URL of this node (started with cluster=True)."""
        return f"redis+cluster://{self.host}:{self.port}"

    def is_running(self) -> bool:
        """Whether the server process is alive (frozen or not)."""
        return self._process is not None and self._process.poll() is None

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` stopped the process (and no thaw since)."""
        return self._frozen and self.is_running()

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    def freeze(self) -> None:
        """SIGSTOP the server: its port still accepts, nothing answers."""
        if not self.is_running():
            raise RuntimeError("the server is not running")
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen server (no-op otherwise)."""
        if self._frozen:
            self._signal(signal.SIGCONT)
            self._frozen = False

    def stop(self) -> None:
        """End the server with SIGTERM and wait for it (no-op if stopped)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """End the server with SIGKILL, like a crash (no-op if stopped)."""
        self._end(signal.SIGKILL)

    def _end(self, signum: signal.Signals) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self.thaw()  # a stopped process would not act on SIGTERM
            process.send_signal(signum)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_STOP_TIMEOUT)
        self._process = None
        self._frozen = False

    def restart(self) -> None:
        """Stop then start again on the same port (empty: nothing persists)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Kill the server and remove its directory."""
        try:
            self.kill()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
            if self._atexit_registered:
                atexit.unregister(self._atexit_cleanup)
                self._atexit_registered = False

    close = cleanup

    def _atexit_cleanup(self) -> None:
        try:
            self.cleanup()
        except Exception as exc:
            print(f"RedisServer: cleanup at exit failed: {exc}", file=sys.stderr)

    # ------------------------------------------------------------------
    # commands

    def command(
        self, *args: str | bytes | int, timeout: float = _COMMAND_TIMEOUT
    ) -> Reply:
        """Send one command on a new connection and return its reply.

        Replies: simple and bulk strings as bytes, integers as int, arrays as
        lists, nil as None. An error reply raises :class:`RedisError`.
        """
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        request = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
        )
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(request)
            with sock.makefile("rb") as reader:
                return _read_reply(reader)

    def flushall(self) -> None:
        """Remove every key of every database."""
        self.command("FLUSHALL")

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a dict (``cmdstat_evalsha`` -> ``calls=3,...``)."""
        reply = self.command("INFO", section)
        assert isinstance(reply, bytes)
        fields: dict[str, str] = {}
        for line in reply.decode().splitlines():
            if line and not line.startswith("#") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value
        return fields

    def command_calls(self) -> dict[str, int]:
        """How many times each command ran since the last ``CONFIG RESETSTAT``,
        by lower-case name (from ``INFO commandstats``)."""
        calls: dict[str, int] = {}
        for name, value in self.info("commandstats").items():
            stats = dict(item.split("=", 1) for item in value.split(","))
            calls[name.removeprefix("cmdstat_")] = int(stats["calls"])
        return calls

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: command counts start again from zero."""
        self.command("CONFIG", "RESETSTAT")

    # ------------------------------------------------------------------
    # context manager

    def __enter__(self) -> RedisServer:
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
            f"RedisServer(redis_bin={self.redis_bin!r}, port={self.port}, "
            f"pid={self.pid}, frozen={self._frozen})"
        )


def _read_reply(reader: object) -> Reply:
    readline = reader.readline  # type: ignore[attr-defined]
    read = reader.read  # type: ignore[attr-defined]
    line: bytes = readline()
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed by the server")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data: bytes = read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [_read_reply(reader) for _ in range(count)]
    raise OSError(f"unexpected reply from Redis: {line!r}")


def _smoke() -> int:
    if find_redis_bin() is None:
        print("redis-server not found", file=sys.stderr)
        return 1
    started = time.monotonic()
    with RedisServer() as server:
        print(f"started in {time.monotonic() - started:.2f}s: {server.url}")
        print(f"PING -> {server.command('PING')!r}")
        print(f"INCR -> {server.command('INCR', 'smoke')!r}")
        server.kill()
        server.start()
        print(f"restarted on {server.port}: GET -> {server.command('GET', 'smoke')!r}")
    return 0


if __name__ == "__main__":
    sys.exit(_smoke())
