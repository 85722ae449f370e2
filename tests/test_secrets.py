"""No key secret anywhere but where it is handed over.

One representative run drives every part of the package that sees a key: the
manager (create, list, get, revoke, authenticate, rehash), the WSGI middleware
and the Flask extension (each 401, a 503, success), the command line, and the
SQLite store with its failures (a locked and an absent database). Meanwhile
every log record of every logger is captured at DEBUG (sqlalchemy, werkzeug
and flask included), and the run collects every exception (str, repr and
traceback, chained causes and contexts included), the repr and str of every
object it made, every response's status, headers and body, and the command's
output. The tests below then look for the keys in all of it, and in the bytes
of the SQLite database and its WAL.

A key's secret is what follows its 12-character display prefix
(``key[12:]``). The plaintext may appear in :attr:`IssuedKey.key` and the
stdout of ``vemetric-auth create``, and nowhere else.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import re
import sqlite3
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import CountingHasher, FlakyStore
from flask import Flask, g
from werkzeug.test import Client, TestResponse

from vemetric_auth import (
    ApiKeyMiddleware,
    InMemoryKeyStore,
    InvalidApiKey,
    InvalidApiKeyFormat,
    IssuedKey,
    KeyManager,
    KeyNotFound,
    MalformedAuthorizationHeader,
    MissingApiKey,
    SQLKeyStore,
    StoreUnavailable,
    generate_key,
)
from vemetric_auth.cli import cli
from vemetric_auth.flask import VemetricAuth

KEY_PATTERN = re.compile(r"vem_[a-z0-9]{32}")


def _other_secret(key: str) -> str:
    """The key with the same display prefix and another secret."""
    return key[:12] + generate_key()[12:]


@dataclass
class Evidence:
    """Everything the run wrote, said or kept, to be searched for keys."""

    #: Plaintext keys created by the run (the manager's and the command's).
    issued: list[str] = field(default_factory=list)
    #: Well-formed keys presented but never issued: wrong or unknown secrets.
    presented: list[str] = field(default_factory=list)
    #: (where, text) pairs: reprs, exceptions, responses, command output.
    texts: list[tuple[str, str]] = field(default_factory=list)
    #: The formatted log records, with their attributes.
    logs: list[str] = field(default_factory=list)
    #: Logger names seen, to show the capture worked.
    loggers: set[str] = field(default_factory=set)
    #: The stdout of each create command, where its own key may appear.
    create_outputs: list[tuple[str, str]] = field(default_factory=list)
    #: How many exceptions were collected.
    exceptions: int = 0
    #: Objects the package made, kept to look inside them at the end.
    objects: list[object] = field(default_factory=list)
    database: Path = Path()

    def secrets(self) -> list[str]:
        """Every needle: each issued key and each presented key's secret."""
        needles = [key[12:] for key in self.issued + self.presented]
        return needles + list(self.issued)

    def issue(self, issued: IssuedKey) -> IssuedKey:
        self.issued.append(issued.key)
        self.show(f"IssuedKey {issued.record.name}", issued)
        self.show(f"record {issued.record.name}", issued.record)
        return issued

    def show(self, where: str, obj: object) -> None:
        self.texts.append((f"repr of {where}", repr(obj)))
        self.texts.append((f"str of {where}", str(obj)))
        self.objects.append(obj)

    def raised(
        self,
        where: str,
        expected: type[BaseException] | tuple[type[BaseException], ...],
        call: Callable[[], object],
    ) -> BaseException:
        with pytest.raises(expected) as info:
            call()
        self.exception(where, info.value)
        return info.value

    def exception(self, where: str, error: BaseException) -> None:
        self.exceptions += 1
        self.texts.append(
            (f"traceback of {where}", "".join(traceback.format_exception(error)))
        )
        seen: set[int] = set()
        pending: list[BaseException | None] = [error]
        while pending:
            current = pending.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            self.texts.append((f"str of {where}", str(current)))
            self.texts.append((f"repr of {where}", repr(current)))
            self.texts.append((f"args of {where}", repr(current.args)))
            pending += [current.__cause__, current.__context__]

    def response(self, where: str, response: TestResponse) -> TestResponse:
        self.texts.append((f"response to {where}", response.status))
        self.texts.append((f"headers of {where}", str(response.headers)))
        self.texts.append((f"body of {where}", response.get_data(as_text=True)))
        self.show(f"response to {where}", response)
        return response

    def command(self, where: str, result: Result) -> Result:
        self.texts.append((f"stdout of {where}", result.stdout))
        self.texts.append((f"stderr of {where}", result.stderr))
        if result.exception is not None and not isinstance(
            result.exception, SystemExit
        ):
            self.exception(where, result.exception)
        return result


class _Records(logging.Handler):
    """Keeps every record, formatted with its traceback, and its attributes."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.texts: list[str] = []
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.names.add(record.name)
        self.texts.append(self.format(record))
        self.texts.append(repr(vars(record)))


@contextlib.contextmanager
def _every_logger_at_debug(handler: logging.Handler) -> Iterator[None]:
    """Send every logger's records, down to DEBUG, to *handler* on the root."""
    root = logging.getLogger()
    manager = root.manager
    saved_disable = manager.disable
    saved_root = root.level
    saved: dict[str, tuple[int, bool, bool]] = {}
    # sqlalchemy sets its own loggers to WARNING at import; name it here so
    # that it is set to DEBUG even before it logs anything.
    for name in ("sqlalchemy", "werkzeug", "flask", "vemetric_auth", "argon2"):
        logging.getLogger(name)
    loggers = {
        name: logger
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    logging.disable(logging.NOTSET)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    for name, logger in loggers.items():
        saved[name] = (logger.level, logger.propagate, logger.disabled)
        logger.setLevel(logging.DEBUG)
        logger.propagate = True
        logger.disabled = False
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, (level, propagate, disabled) in saved.items():
            logger = loggers[name]
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled
        logging.disable(saved_disable)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ok_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"project {environ['vemetric_auth.project_id']}".encode()]


@dataclass
class Made:
    """The keys of the run: issued ones, and well-formed ones never issued."""

    active: IssuedKey
    revoked: IssuedKey
    orphan: IssuedKey  # its project no longer exists
    wrong: str  # the active key's prefix, another secret
    unknown: str


def _run_manager(
    evidence: Evidence, keys: KeyManager, default_keys: KeyManager
) -> Made:
    active = evidence.issue(
        keys.create("proj_a", "Production dashboard", created_by="alice")
    )
    gone = evidence.issue(keys.create("proj_a", "Revoked key"))
    orphan = evidence.issue(keys.create("proj_gone", "Project deleted"))
    rehashed = evidence.issue(keys.create("proj_a", "Hashed with old parameters"))
    wrong = _other_secret(active.key)
    unknown = generate_key()
    evidence.presented += [wrong, unknown]

    evidence.show("list", keys.list("proj_a"))
    evidence.show("get", keys.get(active.record.id))
    evidence.show("revoke", keys.revoke(gone.record.id, revoked_by="bob"))
    evidence.show("revoke again", keys.revoke(gone.record.id, revoked_by="eve"))
    evidence.show("list all", keys.list("proj_a", include_revoked=True))

    evidence.show("authenticate", keys.authenticate(active.key))
    evidence.show("authenticate cached", keys.authenticate(active.key))
    evidence.show("rehash", default_keys.authenticate(rehashed.key))
    for where, key in (
        ("wrong secret", wrong),
        ("revoked", gone.key),
        ("unknown", unknown),
    ):
        evidence.raised(where, InvalidApiKey, lambda key=key: keys.authenticate(key))
    for where, token in (
        ("one character more", active.key + "x"),
        ("upper case", active.key.upper()),
        ("leading space", " " + active.key),
        ("trailing newline", active.key + "\n"),
        ("one character less", active.key[:-1]),
        ("inside other text", f"key={active.key}"),
    ):
        evidence.raised(
            where, InvalidApiKeyFormat, lambda token=token: keys.authenticate(token)
        )
    # A key pasted where its id belongs is refused without being repeated.
    for where, call in (
        ("get by key", lambda: keys.get(active.key)),
        ("revoke by key", lambda: keys.revoke(active.key)),
        ("get by secret", lambda: keys.get(active.key[4:])),
        ("revoke by prefix", lambda: keys.revoke(active.key[:12])),
    ):
        evidence.raised(where, (ValueError, KeyNotFound), call)
    evidence.raised("get unknown", KeyNotFound, lambda: keys.get("no-such-id"))
    evidence.raised("revoke unknown", KeyNotFound, lambda: keys.revoke("no-such-id"))
    evidence.raised(
        "create with a bad name", ValueError, lambda: keys.create("proj_a", " ")
    )
    return Made(active, gone, orphan, wrong, unknown)


def _run_middleware(
    evidence: Evidence, keys: KeyManager, store: SQLKeyStore, made: Made
) -> None:
    middleware = ApiKeyMiddleware(_ok_app, keys, exempt_paths=["/health"])
    evidence.show("middleware", middleware)
    client = Client(middleware)
    active = made.active.key
    for where, headers in (
        ("no header", {}),
        ("Basic scheme with a key", {"Authorization": f"Basic {active}"}),
        ("Token scheme with a key", {"Authorization": f"Token {active}"}),
        ("Bearer alone", {"Authorization": "Bearer"}),
        ("key without scheme", {"Authorization": active}),
        ("key one character more", _bearer(active + "x")),
        ("key upper case", _bearer(active.upper())),
        ("two tokens", _bearer(f"{active} {active}")),
        ("wrong secret", _bearer(made.wrong)),
        ("revoked", _bearer(made.revoked.key)),
        ("unknown", _bearer(made.unknown)),
        ("success", _bearer(active)),
        ("HEAD success", _bearer(active)),
    ):
        method = "HEAD" if where.startswith("HEAD") else "GET"
        evidence.response(
            f"middleware: {where}", client.open("/v1", method=method, headers=headers)
        )
    # 503: a store that fails, and a store whose database file can not be opened.
    failing = FlakyStore(store)
    failing.failing = True
    failing_keys = KeyManager(failing, hasher=CountingHasher())
    failing_client = Client(ApiKeyMiddleware(_ok_app, failing_keys))
    evidence.show("manager on a failing store", failing_keys)
    response = evidence.response(
        "middleware: failing store", failing_client.get("/v1", headers=_bearer(active))
    )
    assert response.status_code == 503


def _run_flask(evidence: Evidence, keys: KeyManager, made: Made) -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True
    auth = VemetricAuth(app, keys=keys)

    @auth.project_loader
    def load_project(project_id: str) -> dict[str, str] | None:
        return None if project_id == "proj_gone" else {"id": project_id}

    @app.get("/v1/project")
    def project() -> dict[str, Any]:
        return {"project": g.project, "key": g.api_key.prefix}

    evidence.show("extension", auth)
    evidence.show("extension state", app.extensions["vemetric_auth"])
    client = app.test_client()
    active = made.active.key
    expected = {
        "no header": ({}, 401, MissingApiKey.message),
        "Basic scheme with a key": (
            {"Authorization": f"Basic {active}"},
            401,
            MalformedAuthorizationHeader.message,
        ),
        "key one character more": (
            _bearer(active + "x"),
            401,
            InvalidApiKeyFormat.message,
        ),
        "wrong secret": (_bearer(made.wrong), 401, InvalidApiKey.message),
        "revoked": (_bearer(made.revoked.key), 401, InvalidApiKey.message),
        "project gone": (_bearer(made.orphan.key), 401, InvalidApiKey.message),
        "success": (_bearer(active), 200, None),
    }
    for where, (headers, status, message) in expected.items():
        response = evidence.response(
            f"flask: {where}", client.get("/v1/project", headers=headers)
        )
        assert response.status_code == status
        if message is not None:
            assert response.json == {
                "error": {"code": "UNAUTHORIZED", "message": message}
            }


def _run_cli(evidence: Evidence, url: str, missing_url: str) -> None:
    runner = CliRunner()

    def run(*args: str, database_url: str = url) -> Result:
        return runner.invoke(
            cli,
            ["--database-url", database_url, *args],
            env={"VEMETRIC_AUTH_DATABASE_URL": None},
        )

    created: list[dict[str, str]] = []
    for where, extra in (("create", ()), ("create --json", ("--json",))):
        result = run(
            "create",
            "--project",
            "proj_cli",
            "--name",
            where,
            *extra,
            "--created-by",
            "cli",
        )
        assert result.exit_code == 0, result.output
        (key,) = set(KEY_PATTERN.findall(result.stdout))
        evidence.issued.append(key)
        evidence.create_outputs.append((key, result.stdout))
        # Its stdout is the one place the key may be; its stderr is not.
        evidence.texts.append((f"stderr of {where}", result.stderr))
        (record,) = (
            [json.loads(result.stdout)["record"]]
            if extra
            else [
                {"id": line.split()[1]}
                for line in result.stdout.splitlines()
                if line.startswith("id:")
            ]
        )
        created.append({"key": key, "id": record["id"]})

    first, second = created
    for where, args, status in (
        ("list", ("list", "--project", "proj_cli"), 0),
        ("list --all --json", ("list", "--project", "proj_cli", "--all", "--json"), 0),
        ("revoke", ("revoke", first["id"], "--revoked-by", "cli"), 0),
        ("revoke again --json", ("revoke", first["id"], "--json"), 0),
        ("revoke by key", ("revoke", second["key"]), 2),
        ("revoke by prefix", ("revoke", second["key"][:12]), 2),
        ("revoke by secret", ("revoke", second["key"][4:]), 1),
        ("revoke unknown", ("revoke", "no-such-id"), 1),
        ("create, empty name", ("create", "--project", "proj_cli", "--name", ""), 2),
        ("create, empty project", ("create", "--project", "", "--name", "n"), 2),
    ):
        result = evidence.command(f"vemetric-auth {where}", run(*args))
        assert result.exit_code == status, (where, result.output)
    for where, args in (
        ("list on an absent database", ("list", "--project", "proj_cli")),
        ("create on an absent database", ("create", "--project", "p", "--name", "n")),
    ):
        result = evidence.command(
            f"vemetric-auth {where}", run(*args, database_url=missing_url)
        )
        assert result.exit_code == 1, result.output


def _run_sqlite_failures(
    evidence: Evidence,
    database: Path,
    missing_url: str,
    made: Made,
) -> None:
    active = made.active
    # A database another connection holds the write lock of.
    locked = SQLKeyStore(f"sqlite:///{database}", statement_timeout=0.2)
    evidence.show("store with a short lock timeout", locked)
    locked_keys = KeyManager(locked, hasher=CountingHasher())
    old = evidence.issue(locked_keys.create("proj_a", "Rehashed while locked"))
    default_keys = KeyManager(locked)
    other = sqlite3.connect(database, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        evidence.raised(
            "create while locked",
            StoreUnavailable,
            lambda: locked_keys.create("proj_a", "Never stored"),
        )
        evidence.raised(
            "revoke while locked",
            StoreUnavailable,
            lambda: locked_keys.revoke(active.record.id, revoked_by="mallory"),
        )
        # Readers go on (WAL); the new hash can not be written, and is not
        # needed.
        evidence.show("authenticate while locked", locked_keys.authenticate(active.key))
        evidence.show("rehash while locked", default_keys.authenticate(old.key))
        other.execute("ROLLBACK")
    finally:
        other.close()
        locked.close()
    # A database that can not be opened.
    absent = SQLKeyStore(missing_url)
    evidence.show("store on an absent database", absent)
    absent_keys = KeyManager(absent, hasher=CountingHasher())
    evidence.show("manager on an absent database", absent_keys)
    evidence.raised(
        "authenticate on an absent database",
        StoreUnavailable,
        lambda: absent_keys.authenticate(active.key),
    )
    evidence.raised(
        "create on an absent database",
        StoreUnavailable,
        lambda: absent_keys.create("proj_a", "Nowhere"),
    )
    evidence.raised(
        "list on an absent database",
        StoreUnavailable,
        lambda: absent_keys.list("proj_a"),
    )
    response = evidence.response(
        "middleware on an absent database",
        Client(ApiKeyMiddleware(_ok_app, absent_keys)).get(
            "/v1", headers=_bearer(active.key)
        ),
    )
    assert response.status_code == 503
    absent.close()


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Evidence:
    directory = tmp_path_factory.mktemp("secrets")
    database = directory / "keys.db"
    url = f"sqlite:///{database}"
    missing_url = f"sqlite:///{directory / 'no-such-dir' / 'keys.db'}"
    found = Evidence(database=database)
    records = _Records()
    printed = io.StringIO()
    with (
        _every_logger_at_debug(records),
        contextlib.redirect_stdout(printed),
        contextlib.redirect_stderr(printed),
    ):
        store = SQLKeyStore(url)
        try:
            keys = KeyManager(store, hasher=CountingHasher())
            default_keys = KeyManager(store)  # rehashes the cheap hashes
            found.show("store", store)
            found.show("manager", keys)
            found.show("manager with the default hasher", default_keys)
            made = _run_manager(found, keys, default_keys)
            _run_middleware(found, keys, store, made)
            _run_flask(found, keys, made)
            _run_cli(found, url, missing_url)
            _run_sqlite_failures(found, database, missing_url, made)
        finally:
            store.close()
    found.texts.append(("printed by the package", printed.getvalue()))
    found.logs = records.texts
    found.loggers = records.names
    return found


def _leaks(evidence: Evidence, texts: list[tuple[str, str]]) -> list[str]:
    """Where any secret shows up, as 'where: needle-prefix...'."""
    return [
        f"{where}: {needle[:16]}..."
        for where, text in texts
        for needle in evidence.secrets()
        if needle in text
    ]


# -- the checks ---------------------------------------------------------------------


def test_the_run_saw_what_it_is_meant_to(evidence: Evidence) -> None:
    """The capture worked: records of each layer, errors, responses, keys."""
    assert len(evidence.issued) == 7  # 5 by the manager, 2 by the command
    assert len(evidence.presented) == 2
    assert {"vemetric_auth", "sqlalchemy.engine.Engine"} <= evidence.loggers
    logs = "\n".join(evidence.logs)
    for expected in (
        "vemetric_auth DEBUG authenticated key",
        "vemetric_auth INFO rejected wrong secret",
        "vemetric_auth INFO rehashed key",
        "vemetric_auth WARNING could not store the new hash",
        "vemetric_auth WARNING key store failed",
        "sqlalchemy.engine.Engine INFO INSERT INTO",
        "database is locked",
        "unable to open database file",
    ):
        assert expected in logs, expected
    assert evidence.exceptions >= 20
    texts = "\n".join(text for _, text in evidence.texts)
    assert "Authentication is temporarily unavailable" in texts
    assert "database is locked" in texts
    # The display prefixes are meant to be seen, and are.
    assert evidence.issued[0][:12] in logs


def test_no_secret_in_any_log_record(evidence: Evidence) -> None:
    leaks = _leaks(
        evidence, [(f"log record {n}", t) for n, t in enumerate(evidence.logs)]
    )
    assert leaks == []


def test_no_secret_in_exceptions_reprs_responses_or_command_output(
    evidence: Evidence,
) -> None:
    assert _leaks(evidence, evidence.texts) == []


def test_create_prints_its_own_key_and_no_other(evidence: Evidence) -> None:
    for key, stdout in evidence.create_outputs:
        assert stdout.count(key) == 1
        others = [needle for needle in evidence.secrets() if key[12:] not in needle]
        assert [needle for needle in others if needle in stdout] == []


def test_objects_of_the_package_hold_no_plaintext(evidence: Evidence) -> None:
    """Nothing the package keeps (managers, their caches, stores, middleware,
    extension, records) holds a key, except the IssuedKey handed back."""
    strings = _retained_strings(evidence.objects)
    assert strings, "the walk found nothing: it looks in the wrong place"
    assert _leaks(evidence, [("retained", text) for text in strings]) == []


def test_the_database_file_holds_no_secret(evidence: Evidence) -> None:
    files = [
        path
        for path in evidence.database.parent.iterdir()
        if path.name.startswith(evidence.database.name)
    ]
    assert evidence.database in files
    content = b"".join(path.read_bytes() for path in files)
    # The store did write there: prefixes are stored, secrets are not.
    assert evidence.issued[0][:12].encode() in content
    for needle in evidence.secrets():
        assert needle.encode() not in content


def _retained_strings(roots: list[object]) -> list[str]:
    """Every str and bytes reachable from *roots* through containers and the
    attributes of the package's own objects (IssuedKey excepted)."""
    found: list[str] = []
    seen: set[int] = set()
    pending: list[object] = list(roots)
    while pending:
        obj = pending.pop()
        if id(obj) in seen or isinstance(obj, IssuedKey):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            found.append(obj)
        elif isinstance(obj, (bytes, bytearray)):
            found.append(bytes(obj).decode("latin-1"))
        elif isinstance(obj, dict):
            pending += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            pending += list(obj)
        elif type(obj).__module__.startswith("vemetric_auth"):
            pending += list(getattr(obj, "__dict__", {}).values())
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    pending.append(getattr(obj, slot, None))
    return found


# -- a key pasted where a name, project id or actor belongs ------------------------

PASTED = [
    pytest.param("name", id="name"),
    pytest.param("project_id", id="project_id"),
    pytest.param("created_by", id="created_by"),
    pytest.param("revoked_by", id="revoked_by"),
]


@pytest.mark.parametrize("field", PASTED)
def test_a_key_pasted_into_a_text_field_is_refused_not_stored(
    field: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher())
    existing = keys.create("proj_a", "existing")
    pasted = f"CI key {existing.key}"
    attempts: dict[str, Callable[[], object]] = {
        "name": lambda: keys.create("proj_a", pasted),
        "project_id": lambda: keys.create(pasted, "new key"),
        "created_by": lambda: keys.create("proj_a", "new key", created_by=pasted),
        "revoked_by": lambda: keys.revoke(existing.record.id, revoked_by=pasted),
    }
    with pytest.raises(ValueError, match=r"(?i)API key") as refused:
        attempts[field]()
    assert existing.key[12:] not in str(refused.value)
    stored = keys.list("proj_a", include_revoked=True) + keys.store.list(
        pasted, include_revoked=True
    )
    assert stored == [existing.record]
    assert existing.key[12:] not in caplog.text
