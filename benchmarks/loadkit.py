"""Real servers under concurrent load: shared by benchmarks/bench_load.py and
the short load test of the suite, tests/test_load.py.

- :func:`prepare_dataset` fills a store (SQLite file or PostgreSQL database)
  with projects of the Flask example (``examples/flask_app.py``) and their
  keys, some revoked, some of deleted projects, through :class:`KeyManager`.
- :func:`running_server` starts that example app as a subprocess on a free
  loopback port: gunicorn (``-w 2 --threads 4``) or werkzeug's threaded
  server (``python benchmarks/loadkit.py serve-werkzeug``), and always stops it.
  The app is :func:`server_app`: ``create_app`` plus an exempt twin of
  ``GET /v1/project`` doing the same work without a key, for the benchmark.
- :class:`LoadClient` sends a weighted mix of :class:`Case` from client
  threads over persistent ``http.client`` connections, bounded in time and
  count; :func:`send_each` sends a list of cases once each.
- :class:`Checker` says what is wrong with each :class:`Result`: valid keys
  must get 200 and their own project, every bad header the exact 401 of the
  HTTP contract, and nothing a 5xx except the documented 503 while a fault
  is injected.

Stdlib only on the client side; the server side needs Flask, SQLAlchemy and,
for PostgreSQL, psycopg.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from argon2 import PasswordHasher
    from flask import Flask

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
EXAMPLES = ROOT / "examples"
HOST = "127.0.0.1"

REALM = "vemetric"
RETRY_AFTER = "5"
#: The path of the exempt twin of ``/v1/project``; the project id follows.
UNAUTHENTICATED_PREFIX = "/unauthenticated/v1/project/"
_CACHE_TTL_ENV = "LOADKIT_CACHE_TTL"
_RATE_LIMIT_ENV = "LOADKIT_RATE_LIMIT"
_RATE_LIMIT_STORAGE_ENV = "LOADKIT_RATE_LIMIT_STORAGE"
_FLASK_LIMITER_ENV = "LOADKIT_FLASK_LIMITER"
_DB_LATENCY_ENV = "LOADKIT_DB_LATENCY"
_WATCH_ENV = "LOADKIT_WATCH"
#: What a watched server writes to stderr twice a second (see server_app).
WATCH_LINE = re.compile(
    r"LOADKIT-WATCH pid=(\d+) feed_age=(\S+) checked_out=(\d+) of (\d+)"
)

# The HTTP contract (SPEC section 2), written out here rather than imported,
# so that the load tests check the contract and not the implementation.
MISSING = "missing"
MALFORMED = "malformed"
FORMAT = "format"
INVALID = "invalid"
_MESSAGES = {
    MISSING: "Missing API key. Use Authorization: Bearer <key>",
    MALFORMED: "Malformed Authorization header. Use Bearer <key>",
    FORMAT: "Invalid API key format",
    INVALID: "Invalid or revoked API key",
}
_CHALLENGES = {
    MISSING: f'Bearer realm="{REALM}"',
    MALFORMED: f'Bearer realm="{REALM}", error="invalid_request"',
    FORMAT: f'Bearer realm="{REALM}", error="invalid_token"',
    INVALID: f'Bearer realm="{REALM}", error="invalid_token"',
}
_UNAVAILABLE_BODY = {
    "error": {
        "code": "SERVICE_UNAVAILABLE",
        "message": "Authentication is temporarily unavailable",
    }
}
#: What a case expects: the key's project, the exempt twin's project, the
#: health check, or one of the four 401s.
PROJECT = "project"
UNAUTHENTICATED = "unauthenticated"
HEALTH = "health"

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def _random_key(rng: random.Random) -> str:
    return "vem_" + "".join(rng.choice(_ALPHABET) for _ in range(32))


# -- the server side ----------------------------------------------------------


def _flask_app_module() -> Any:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import flask_app

    return flask_app


def server_app() -> Flask:
    """The Flask example, plus an exempt twin of ``GET /v1/project``.

    ``VEMETRIC_AUTH_DATABASE_URL`` names the store (and the projects table);
    ``LOADKIT_CACHE_TTL``, if set, the extension's cache TTL;
    ``LOADKIT_RATE_LIMIT`` and ``LOADKIT_RATE_LIMIT_STORAGE``, if set, the
    rate limit and its storage (else no rate limit: the load runs send far
    more than the example's 100 requests a minute per project); with
    ``LOADKIT_FLASK_LIMITER`` set too, Flask-Limiter counts them per project
    instead of vemetric-auth, for the rate limit benchmark;
    ``LOADKIT_DB_LATENCY``, if set, seconds every SQL statement waits
    before it is sent (a database a network away); with ``LOADKIT_WATCH``
    set, the server writes :data:`WATCH_LINE` to stderr twice a second: the
    age of its manager's last read of the change feed, and the connections
    of its key store's pool checked out (private attributes: a benchmark
    aid). The twin,
    ``GET /unauthenticated/v1/project/<project_id>``, loads the project the
    way the project loader does and answers the same body, without a key: the
    benchmark's "without auth" figure.
    """
    from flask import abort

    flask_app = _flask_app_module()
    if _DB_LATENCY_ENV in os.environ:
        _delay_every_statement(float(os.environ[_DB_LATENCY_ENV]))
    config: dict[str, Any] = {}
    if _CACHE_TTL_ENV in os.environ:
        config["VEMETRIC_AUTH_CACHE_TTL"] = float(os.environ[_CACHE_TTL_ENV])
    rate_limit = os.environ.get(_RATE_LIMIT_ENV) or None
    storage = os.environ.get(_RATE_LIMIT_STORAGE_ENV, "memory://")
    flask_limiter = rate_limit is not None and bool(os.environ.get(_FLASK_LIMITER_ENV))
    config["VEMETRIC_AUTH_RATE_LIMIT"] = None if flask_limiter else rate_limit
    config["VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI"] = storage
    app: Flask = flask_app.create_app(config)
    if os.environ.get(_WATCH_ENV):
        threading.Thread(
            target=_watch, args=(flask_app.auth.keys_for(app),), daemon=True
        ).start()
    if flask_limiter:
        from flask import g
        from flask_limiter import Limiter

        # Registered after the extension: it counts verified requests only.
        Limiter(
            key_func=lambda: g.get("project_id", "-"),
            app=app,
            default_limits=[rate_limit],
            storage_uri=storage,
            strategy="fixed-window",
            headers_enabled=True,
        )

    def unauthenticated_project(project_id: str) -> dict[str, Any]:
        project = flask_app.projects().get(project_id)
        if project is None:
            abort(404)
        return {"project": project}

    app.add_url_rule(
        UNAUTHENTICATED_PREFIX + "<project_id>",
        endpoint="unauthenticated_project",
        view_func=flask_app.auth.exempt(unauthenticated_project),
    )
    return app


def _delay_every_statement(seconds: float) -> None:
    """Every SQL statement of every engine of this process waits *seconds*
    before it is sent, holding its connection, as a round trip would."""
    from sqlalchemy import Engine, event

    def wait(*args: Any) -> None:
        time.sleep(seconds)

    event.listen(Engine, "before_cursor_execute", wait)


def _watch(keys: Any) -> None:
    """Write a :data:`WATCH_LINE` to stderr twice a second, forever."""
    pool = keys._store._engine.pool
    size = pool.size() + max(0, getattr(pool, "_max_overflow", 0))
    while True:
        time.sleep(0.5)
        feed = getattr(keys, "_feed", None)  # None before the manager read it
        age = time.monotonic() - feed.confirmed_at if feed is not None else -1.0
        print(
            f"LOADKIT-WATCH pid={os.getpid()} feed_age={age:.2f} "
            f"checked_out={pool.checkedout()} of {size}",
            file=sys.stderr,
            flush=True,
        )


def _serve_werkzeug() -> None:
    """Serve :func:`server_app` on werkzeug's threaded server, port chosen by
    the system and printed to stderr as ``LISTENING <port>``."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        # No access log: gunicorn writes none by default either, and it
        # would cost the server time the benchmark would count.
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    server = make_server(
        HOST, 0, server_app(), threaded=True, request_handler=QuietHandler
    )
    print(f"LISTENING {server.server_port}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


# -- data ---------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """A key the client uses, and what it belongs to."""

    key: str = field(repr=False)
    key_id: str
    project_id: str


@dataclass
class Dataset:
    """What :func:`prepare_dataset` put in the store."""

    database_url: str
    #: Project id -> the project as ``GET /v1/project`` shows it.
    projects: dict[str, dict[str, Any]]
    valid: list[KeyInfo]
    #: Revoked before any server started.
    revoked: list[KeyInfo]
    #: Keys whose project was deleted: refused by the project loader.
    orphans: list[KeyInfo]

    def all_keys(self) -> list[KeyInfo]:
        return [*self.valid, *self.revoked, *self.orphans]


def cheap_hasher() -> PasswordHasher:
    """argon2's cheapest parameters: keys made with it are rehashed by the
    servers (default parameters) on their first use there."""
    from argon2 import PasswordHasher, profiles

    hasher: PasswordHasher = PasswordHasher.from_parameters(profiles.CHEAPEST)
    return hasher


class KeyAdmin:
    """The parent's view of a store: creates and revokes keys while servers run."""

    def __init__(self, database_url: str) -> None:
        from vemetric_auth import KeyManager, SQLKeyStore

        self.store = SQLKeyStore(database_url)
        self.keys = KeyManager(self.store, hasher=cheap_hasher(), store_timeout=None)

    def create(self, project_id: str, name: str) -> KeyInfo:
        issued = self.keys.create(project_id, name, created_by="loadkit")
        return KeyInfo(issued.key, issued.record.id, project_id)

    def revoke(self, info: KeyInfo) -> None:
        self.keys.revoke(info.key_id, revoked_by="loadkit")

    def close(self) -> None:
        self.store.close()


def prepare_dataset(
    database_url: str,
    *,
    projects: int = 20,
    keys_per_project: int = 2,
    revoked: int = 8,
    orphans: int = 2,
) -> Dataset:
    """Create *projects* projects with *keys_per_project* active keys each, and
    *revoked* revoked keys spread over them; then one more project with
    *orphans* keys, deleted."""
    flask_app = _flask_app_module()
    table = flask_app.Projects(database_url)
    admin = KeyAdmin(database_url)
    try:
        shown: dict[str, dict[str, Any]] = {}
        valid: list[KeyInfo] = []
        gone: list[KeyInfo] = []
        for n in range(projects):
            project_id = f"proj_{n:02d}_{os.urandom(3).hex()}"
            shown[project_id] = table.add(
                project_id, f"Project {n}", f"p{n}.example.com"
            )
            valid.extend(
                admin.create(project_id, f"key {k}") for k in range(keys_per_project)
            )
        owners = list(shown)
        for n in range(revoked):
            info = admin.create(owners[n % len(owners)], f"revoked {n}")
            admin.revoke(info)
            gone.append(info)
        orphan_project = f"proj_deleted_{os.urandom(3).hex()}"
        table.add(orphan_project, "Deleted", "deleted.example.com")
        orphaned = [admin.create(orphan_project, f"orphan {n}") for n in range(orphans)]
        table.delete(orphan_project)
        return Dataset(database_url, shown, valid, gone, orphaned)
    finally:
        admin.close()
        table.engine.dispose()


# -- the servers ----------------------------------------------------------------

GUNICORN = "gunicorn"
WERKZEUG = "werkzeug"
SERVERS = (GUNICORN, WERKZEUG)

_LISTENING = {
    GUNICORN: re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)"),
    WERKZEUG: re.compile(r"LISTENING (\d+)"),
}
_BOOTING = re.compile(r"Booting worker with pid: (\d+)")


@dataclass
class ServerProcess:
    """A server started by :func:`running_server`."""

    kind: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: int
    port: int = 0

    def log(self) -> str:
        """The server's stderr so far (gunicorn's log, Flask's tracebacks)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def booted_workers(self) -> list[int]:
        """Pids of the gunicorn workers booted so far (a restarted worker adds
        one); ``[]`` for werkzeug."""
        return [int(pid) for pid in _BOOTING.findall(self.log())]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and everything it started; kill what lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # The server leads a process group of its own (start_new_session):
        # this reaches gunicorn's workers too, should the master have died.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def _gunicorn_command(workers: int, threads: int) -> list[str]:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    command = [
        str(gunicorn),
        "--bind",
        f"{HOST}:0",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
        "--graceful-timeout",
        "5",
        "--pythonpath",
        str(BENCHMARKS),
    ]
    usage = subprocess.run(
        [str(gunicorn), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    if "--no-control-socket" in usage:
        # Newer gunicorns open a control socket in ~/.gunicorn by default.
        command.append("--no-control-socket")
    return [*command, "loadkit:server_app()"]


def gunicorn_available() -> bool:
    return (Path(sys.executable).parent / "gunicorn").exists()


@contextmanager
def running_server(
    kind: str,
    database_url: str,
    workdir: Path,
    *,
    cache_ttl: float | None = None,
    rate_limit: str | None = None,
    rate_limit_storage: str | None = None,
    db_latency: float | None = None,
    watch: bool = False,
    flask_limiter: bool = False,
    workers: int = 2,
    threads: int = 4,
    startup_timeout: float = 60.0,
    pythonpath: str | None = None,
) -> Iterator[ServerProcess]:
    """Run :func:`server_app` under *kind* (``"gunicorn"`` or ``"werkzeug"``)
    on a free loopback port until the block ends; the server is stopped,
    killed if need be, whatever happens. Without *rate_limit*, no rate limit;
    with *flask_limiter*, Flask-Limiter enforces it rather than vemetric-auth.
    With *db_latency*, every SQL statement of the server waits that many
    seconds before it is sent; with *watch*, the server logs its feed and
    pool (see :func:`server_app`).
    *pythonpath*, a directory, comes first on the server's ``PYTHONPATH``:
    one holding another ``vemetric_auth`` (say, an older commit's) is served
    instead of this one.

    Ready means: listening, every gunicorn worker booted, ``/health`` answered.
    """
    if kind == GUNICORN:
        command = _gunicorn_command(workers, threads)
    elif kind == WERKZEUG:
        command = [sys.executable, str(Path(__file__).resolve()), "serve-werkzeug"]
        workers = 1
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")}
    for name in (
        _CACHE_TTL_ENV,
        _RATE_LIMIT_ENV,
        _RATE_LIMIT_STORAGE_ENV,
        _FLASK_LIMITER_ENV,
        _DB_LATENCY_ENV,
        _WATCH_ENV,
    ):
        env.pop(name, None)
    env["VEMETRIC_AUTH_DATABASE_URL"] = database_url
    if cache_ttl is not None:
        env[_CACHE_TTL_ENV] = repr(float(cache_ttl))
    if rate_limit is not None:
        env[_RATE_LIMIT_ENV] = rate_limit
    if rate_limit_storage is not None:
        env[_RATE_LIMIT_STORAGE_ENV] = rate_limit_storage
    if flask_limiter:
        env[_FLASK_LIMITER_ENV] = "1"
    if db_latency is not None:
        env[_DB_LATENCY_ENV] = repr(float(db_latency))
    if watch:
        env[_WATCH_ENV] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [pythonpath, *filter(None, [env.get("PYTHONPATH")])]
        )
    env["PYTHONUNBUFFERED"] = "1"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{kind}-{os.urandom(4).hex()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    server = ServerProcess(kind, process, log_path, workers)
    try:
        server.port = _wait_until_ready(server, startup_timeout)
        yield server
    finally:
        server.stop()


def _wait_until_ready(server: ServerProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    port = 0
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"{server.kind} exited with {server.process.returncode}:\n"
                + server.log_tail()
            )
        text = server.log()
        if not port:
            found = _LISTENING[server.kind].search(text)
            if found:
                port = int(found.group(1))
        if port and (
            server.kind != GUNICORN or len(server.booted_workers()) >= server.workers
        ):
            try:
                status, _, body = _get(port, "/health", timeout=5)
            except OSError:
                status, body = 0, b""
            if status == 200 and json.loads(body) == {"status": "ok"}:
                return port
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.kind} not ready within {timeout} s:\n" + server.log_tail()
    )


def _get(
    port: int, path: str, *, timeout: float
) -> tuple[int, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


# -- the client ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of request and the answer it must get."""

    kind: str
    path: str
    headers: tuple[tuple[str, str], ...]
    #: PROJECT, UNAUTHENTICATED, HEALTH, or one of the 401 cases.
    expect: str
    project_id: str | None = None
    key_id: str | None = None
    #: Whether answering needs the key store (so may be a 503 in a fault).
    touches_store: bool = False

    def __repr__(self) -> str:
        # Headers may hold keys: never in a report.
        return f"<Case {self.kind} {self.path} key_id={self.key_id}>"


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {key}"),)


def valid_cases(dataset: Dataset, keys: Sequence[KeyInfo] | None = None) -> list[Case]:
    """``GET /v1/project`` with each valid key: 200 and its own project."""
    return [
        Case(
            "valid",
            "/v1/project",
            _bearer(info.key),
            PROJECT,
            info.project_id,
            info.key_id,
            touches_store=True,
        )
        for info in (dataset.valid if keys is None else keys)
    ]


def refused_cases(keys: Sequence[KeyInfo], kind: str) -> list[Case]:
    """``GET /v1/project`` with each key, each one refused (401, case 4)."""
    return [
        Case(
            kind,
            "/v1/project",
            _bearer(info.key),
            INVALID,
            info.project_id,
            info.key_id,
            touches_store=True,
        )
        for info in keys
    ]


def unauthenticated_cases(dataset: Dataset) -> list[Case]:
    """The exempt twin of ``/v1/project`` for each project, without a key."""
    return [
        Case(
            "unauthenticated",
            UNAUTHENTICATED_PREFIX + project_id,
            (),
            UNAUTHENTICATED,
            project_id,
            touches_store=False,
        )
        for project_id in dataset.projects
    ]


def garbage_cases(sample_key: str) -> list[Case]:
    """Headers refused before any store or hasher is used (cases 1 to 3)."""
    key_body = sample_key[4:]
    missing = [None, "", "   ", "\t"]
    malformed = [
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer",
        "bearer",
        "Bearer   ",
        f"Token {sample_key}",
        f"Bearer{sample_key}",
        sample_key,
        "Digest username=x",
        "Bearerx vem_x",
    ]
    bad_format = [
        "Bearer vem_short",
        "Bearer VEM_" + key_body,
        "Bearer vem_" + key_body.upper(),
        "Bearer " + sample_key + "a",
        "Bearer " + sample_key[:-1],
        "Bearer key_" + key_body,
        "Bearer vem_" + key_body[:-1] + "!",
        "Bearer " + "a" * 4000,
        f"Bearer {sample_key} extra",
        f"Bearer {sample_key[:20]} {sample_key[20:]}",
        "Bearer vem_" + "\u00e9" * 32,
    ]
    cases = []
    for header in missing:
        headers = () if header is None else (("Authorization", header),)
        cases.append(Case(MISSING, "/v1/project", headers, MISSING))
    # Unknown paths need a key too: a 401, never a 404, without one.
    cases.append(Case(MISSING, "/v1/nowhere", (), MISSING))
    for header in malformed:
        cases.append(
            Case(MALFORMED, "/v1/project", (("Authorization", header),), MALFORMED)
        )
    for header in bad_format:
        cases.append(Case(FORMAT, "/v1/project", (("Authorization", header),), FORMAT))
    return cases


def variant_cases(dataset: Dataset, count: int = 4) -> list[Case]:
    """Valid keys under other spellings of the scheme and spacing: 200."""
    spellings = ["bearer {}", "BEARER {}", "Bearer  {}", "Bearer\t{}", "bEaReR {}  "]
    cases = []
    for n, info in enumerate(dataset.valid[:count]):
        for spelling in spellings:
            cases.append(
                Case(
                    "valid-variant",
                    "/v1/project",
                    (("Authorization", spelling.format(info.key)),),
                    PROJECT,
                    info.project_id,
                    info.key_id,
                    touches_store=True,
                )
            )
        if n == 0:
            cases.append(Case(HEALTH, "/health", (), HEALTH))
    return cases


def mixed_traffic(
    dataset: Dataset, *, unknown: int = 200, seed: int = 1
) -> list[tuple[list[Case], float]]:
    """The mix of the load tests: groups of cases and each group's weight.

    Valid keys over every project, their other spellings, wrong secrets for
    known prefixes, revoked keys, keys of a deleted project, random
    well-formed unknown keys, garbage headers, the exempt health check.
    """
    rng = random.Random(seed)
    wrong = [
        KeyInfo(info.key[:12] + _random_key(rng)[12:], info.key_id, info.project_id)
        for info in dataset.valid
    ]
    strangers = [
        KeyInfo(_random_key(rng), "unknown", "unknown") for _ in range(unknown)
    ]
    garbage = garbage_cases(dataset.valid[0].key)
    return [
        (valid_cases(dataset), 50),
        (variant_cases(dataset), 5),
        (refused_cases(wrong, "wrong-secret"), 7),
        (refused_cases(dataset.revoked, "revoked"), 7),
        (refused_cases(dataset.orphans, "orphan"), 3),
        (refused_cases(strangers, "unknown"), 8),
        ([c for c in garbage if c.expect == MISSING], 4),
        ([c for c in garbage if c.expect == MALFORMED], 5),
        ([c for c in garbage if c.expect == FORMAT], 6),
        ([Case(HEALTH, "/health", (), HEALTH)], 5),
    ]


@dataclass
class Result:
    """One request and its answer (``status`` 0 and ``error`` set if none)."""

    case: Case
    started: float
    ended: float
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


_CLOSED = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class Connection:
    """One persistent connection to the server; reopened when it closes it."""

    def __init__(self, port: int, timeout: float) -> None:
        self._port = port
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def send(self, case: Case) -> Result:
        started = time.monotonic()
        for _ in range(2):
            reused = self._connection is not None
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    HOST, self._port, timeout=self._timeout
                )
            connection = self._connection
            try:
                connection.request("GET", case.path, headers=dict(case.headers))
                response = connection.getresponse()
                body = response.read()
            except _CLOSED as error:
                self.close()
                if reused:
                    # The server closed an idle kept-alive connection (gunicorn
                    # after --keep-alive seconds): try once on a new one. GET is
                    # idempotent; a crashed worker shows in the server's log.
                    self.reconnects += 1
                    continue
                return Result(case, started, time.monotonic(), error=repr(error))
            except (OSError, http.client.HTTPException) as error:
                self.close()
                return Result(case, started, time.monotonic(), error=repr(error))
            if response.will_close:
                self.close()
            return Result(
                case,
                started,
                time.monotonic(),
                response.status,
                response.getheaders(),
                body,
            )
        return Result(case, started, time.monotonic(), error="connection kept closing")


class LoadClient:
    """Client threads sending a weighted mix of cases until stopped.

    Each thread keeps one persistent connection and picks its cases at
    random (seeded). Bounded: every socket operation by *timeout*, the whole
    run by *duration* seconds and *max_requests* requests per thread.
    *connections*, one per thread, are used instead of new ones and left
    open: successive runs then reach the same gunicorn workers alike.
    """

    def __init__(
        self,
        port: int,
        mix: Sequence[tuple[Sequence[Case], float]],
        *,
        threads: int = 8,
        duration: float = 3.0,
        max_requests: int = 100_000,
        timeout: float = 15.0,
        seed: int = 0,
        connections: Sequence[Connection] | None = None,
    ) -> None:
        if connections is not None and len(connections) != threads:
            raise ValueError("one connection per thread")
        self._connections = connections
        self._port = port
        self._groups = [list(cases) for cases, _ in mix if cases]
        self._weights = [weight for cases, weight in mix if cases]
        self._threads = threads
        self._duration = duration
        self._max_requests = max_requests
        self._timeout = timeout
        self._seed = seed
        self._stop = threading.Event()
        self._results: list[list[Result]] = [[] for _ in range(threads)]
        self._reconnects = [0] * threads
        self._workers: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> LoadClient:
        self.started = time.monotonic()
        deadline = self.started + self._duration
        for n in range(self._threads):
            worker = threading.Thread(
                target=self._run, args=(n, deadline), name=f"loadkit-{n}", daemon=True
            )
            self._workers.append(worker)
            worker.start()
        return self

    def _run(self, n: int, deadline: float) -> None:
        rng = random.Random(self._seed * 1000 + n)
        if self._connections is None:
            connection = Connection(self._port, self._timeout)
        else:
            connection = self._connections[n]
        results = self._results[n]
        try:
            while (
                not self._stop.is_set()
                and len(results) < self._max_requests
                and time.monotonic() < deadline
            ):
                group = rng.choices(self._groups, self._weights)[0]
                results.append(connection.send(rng.choice(group)))
        finally:
            if self._connections is None:
                connection.close()
            self._reconnects[n] = connection.reconnects

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> list[Result]:
        """Wait for the threads to finish; return every result, in no order.

        :raises TimeoutError: a thread is still running after *timeout*
            seconds past the end of the run.
        """
        limit = self._duration + self._timeout + 5 if timeout is None else timeout
        deadline = time.monotonic() + limit
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self.stop()
                raise TimeoutError(f"client thread {worker.name} did not finish")
        return [result for results in self._results for result in results]

    def run(self) -> list[Result]:
        """Start, and wait for the end of the run."""
        return self.start().wait()

    @property
    def reconnects(self) -> int:
        return sum(self._reconnects)


def send_each(
    port: int, cases: Sequence[Case], *, threads: int = 4, timeout: float = 15.0
) -> list[Result]:
    """Send every case once, from *threads* threads, each on a new connection
    (so that gunicorn's workers share them); return the results."""
    results: list[Result] = []
    lock = threading.Lock()
    queue = list(cases)

    def run() -> None:
        while True:
            with lock:
                if not queue:
                    return
                case = queue.pop()
            connection = Connection(port, timeout)
            try:
                result = connection.send(case)
            finally:
                connection.close()
            with lock:
                results.append(result)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout * (len(cases) + 1)
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            raise TimeoutError("send_each did not finish")
    return results


# -- the checker ----------------------------------------------------------------


@dataclass
class Checker:
    """Tells what is wrong with a result, given what happened meanwhile.

    :param dataset: Where expected projects come from.
    :param cache_ttl: The servers' cache TTL: a key revoked by another process
        may still be served that long (plus *slack*).
    :param faults: Windows (monotonic start, end) while the store was down; a
        request overlapping one (end plus *fault_grace*) may get the 503.
    :param revocations: key id -> (monotonic time before, after) revoking it
        while the servers ran.
    """

    dataset: Dataset
    cache_ttl: float = 60.0
    slack: float = 1.5
    faults: list[tuple[float, float]] = field(default_factory=list)
    fault_grace: float = 1.0
    revocations: dict[str, tuple[float, float]] = field(default_factory=dict)

    def in_fault(self, result: Result) -> bool:
        return any(
            result.ended >= start and result.started <= end + self.fault_grace
            for start, end in self.faults
        )

    def problem(self, result: Result) -> str | None:
        """What is wrong with *result*, or ``None`` if it is right."""
        case = result.case
        if result.error is not None:
            return f"no answer: {result.error}"
        status = result.status
        if status == 503:
            if not case.touches_store:
                return "503 for a request that needs no key store"
            if not self.in_fault(result):
                return "503 while no fault was injected"
            return self._unavailable_problem(result)
        expect = case.expect
        if expect == PROJECT and case.key_id in self.revocations:
            before, after = self.revocations[case.key_id]
            if result.ended < before:
                expect = PROJECT
            elif result.started > after + self.cache_ttl + self.slack:
                expect = INVALID
            else:
                expect = PROJECT if status == 200 else INVALID
        if expect in (PROJECT, UNAUTHENTICATED):
            assert case.project_id is not None
            return self._project_problem(result, case.project_id)
        if expect == HEALTH:
            if status != 200:
                return f"health check answered {status}"
            return _json_problem(result, {"status": "ok"})
        return self._unauthorized_problem(result, expect)

    def _project_problem(self, result: Result, project_id: str) -> str | None:
        if result.status != 200:
            return f"expected 200, got {result.status}: {result.body[:200]!r}"
        if result.header("content-type") != ["application/json"]:
            return f"content type {result.header('content-type')}"
        try:
            body = json.loads(result.body)
        except ValueError:
            return f"not JSON: {result.body[:200]!r}"
        project = body.get("project") if isinstance(body, dict) else None
        if isinstance(project, dict) and project.get("id") != project_id:
            return f"ANOTHER PROJECT'S DATA: expected {project_id}, got {project.get('id')}"
        if body != {"project": self.dataset.projects[project_id]}:
            return f"wrong body: {result.body[:300]!r}"
        return None

    def _unauthorized_problem(self, result: Result, expect: str) -> str | None:
        if result.status != 401:
            return (
                f"expected 401 ({expect}), got {result.status}: {result.body[:200]!r}"
            )
        wrong = _json_problem(
            result, {"error": {"code": "UNAUTHORIZED", "message": _MESSAGES[expect]}}
        )
        if wrong is not None:
            return f"401 ({expect}): {wrong}"
        if result.header("www-authenticate") != [_CHALLENGES[expect]]:
            return f"WWW-Authenticate {result.header('www-authenticate')} ({expect})"
        if result.header("cache-control") != ["no-store"]:
            return f"Cache-Control {result.header('cache-control')}"
        return None

    def _unavailable_problem(self, result: Result) -> str | None:
        wrong = _json_problem(result, _UNAVAILABLE_BODY)
        if wrong is not None:
            return f"503: {wrong}"
        if result.header("retry-after") != [RETRY_AFTER]:
            return f"Retry-After {result.header('retry-after')}"
        if result.header("www-authenticate"):
            return "503 with a WWW-Authenticate challenge"
        return None

    def check(self, results: Sequence[Result]) -> Report:
        """Check every result."""
        report = Report()
        for result in results:
            report.add(result, self.problem(result))
        return report


def _json_problem(result: Result, expected: object) -> str | None:
    if result.header("content-type") != ["application/json"]:
        return f"content type {result.header('content-type')}"
    try:
        body = json.loads(result.body)
    except ValueError:
        return f"not JSON: {result.body[:200]!r}"
    if body != expected:
        return f"body {result.body[:300]!r}"
    return None


@dataclass
class Report:
    """Counts of checked results, and the problems found."""

    total: int = 0
    #: (case kind, status) -> count.
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    problems: list[tuple[Result, str]] = field(default_factory=list)

    def add(self, result: Result, problem: str | None) -> None:
        self.total += 1
        self.answers[(result.case.kind, result.status)] += 1
        if problem is not None:
            self.problems.append((result, problem))

    def merge(self, other: Report) -> None:
        self.total += other.total
        self.answers.update(other.answers)
        self.problems.extend(other.problems)

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.answers}

    def count(self, status: int) -> int:
        return sum(n for (_, code), n in self.answers.items() if code == status)

    def summary(self, limit: int = 15) -> str:
        """Counts per case kind and status, then the first problems."""
        lines = [f"{self.total} responses, {len(self.problems)} wrong"]
        for (kind, status), count in sorted(self.answers.items()):
            lines.append(f"  {kind:<16} {status:>3}: {count}")
        grouped = Counter(
            (result.case.kind, problem) for result, problem in self.problems
        )
        for (kind, problem), count in grouped.most_common(limit):
            lines.append(f"  WRONG x{count} [{kind}] {problem}")
        return "\n".join(lines)


def keys_in(text: str, dataset: Dataset) -> list[str]:
    """Key ids of the dataset whose plaintext key appears in *text*."""
    return [info.key_id for info in dataset.all_keys() if info.key in text]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve-werkzeug"])
    parser.parse_args(argv)
    _serve_werkzeug()


if __name__ == "__main__":
    main()
