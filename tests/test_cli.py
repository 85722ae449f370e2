from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from vemetric_auth import ApiKey, KeyManager, SQLKeyStore, is_valid_format
from vemetric_auth.cli import cli, main

KEY_PATTERN = re.compile(r"vem_[a-z0-9]{32}")
RECORD_FIELDS = [field.name for field in ApiKey.__dataclass_fields__.values()]
SCRIPT = Path(sys.executable).parent / "vemetric-auth"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def run(database: Path) -> Any:
    """Run ``vemetric-auth --database-url <tmp db> ARGS...`` in-process."""

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        environment: dict[str, str | None] = {"VEMETRIC_AUTH_DATABASE_URL": None}
        environment.update(env or {})
        return CliRunner().invoke(
            cli, ["--database-url", f"sqlite:///{database}", *args], env=environment
        )

    return run


def stored(database: Path, project_id: str) -> list[ApiKey]:
    store = SQLKeyStore(f"sqlite:///{database}")
    try:
        return store.list(project_id, include_revoked=True)
    finally:
        store.close()


def create_json(run: Any, project: str = "proj_1", name: str = "CI") -> dict[str, Any]:
    result = run("create", "--project", project, "--name", name, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_create_prints_the_key_once_and_its_record(run: Any, database: Path) -> None:
    result = run(
        "create", "--project", "proj_1", "--name", " Prod dash ", "--created-by", "al"
    )
    assert result.exit_code == 0
    assert result.stderr == ""
    keys = KEY_PATTERN.findall(result.stdout)
    assert len(keys) == 1
    (record,) = stored(database, "proj_1")
    assert keys[0].startswith(record.prefix[:-3])
    for expected in (record.id, "proj_1", "Prod dash", record.prefix, "al", "active"):
        assert expected in result.stdout
    # The key works.
    keys_manager = KeyManager(SQLKeyStore(f"sqlite:///{database}"))
    try:
        assert keys_manager.authenticate(keys[0]) == record
    finally:
        keys_manager.store.close()  # type: ignore[attr-defined]


def test_create_json_is_one_document_of_key_and_record(
    run: Any, database: Path
) -> None:
    document = create_json(run)
    assert list(document) == ["key", "record"]
    assert is_valid_format(document["key"])
    record = document["record"]
    assert list(record) == RECORD_FIELDS
    (stored_record,) = stored(database, "proj_1")
    assert record == stored_record.to_dict()
    created_at = datetime.fromisoformat(record["created_at"])
    assert created_at.utcoffset() == timedelta(0)
    assert (record["revoked_at"], record["revoked_by"], record["created_by"]) == (
        None,
        None,
        None,
    )


def test_list_is_a_table_newest_first_without_revoked(run: Any) -> None:
    old = create_json(run, name="old key")["record"]
    new = create_json(run, name="new key")["record"]
    gone = create_json(run, name="gone key")["record"]
    assert run("revoke", gone["id"]).exit_code == 0
    create_json(run, project="proj_2", name="other project")

    result = run("list", "--project", "proj_1")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "PREFIX",
        "CREATED",
        "CREATED",
        "BY",
        "LAST",
        "USED",
        "EXPIRES",
        "STATUS",
    ]
    assert [line.split()[0] for line in lines[1:]] == [new["id"], old["id"]]
    assert "new key" in lines[1]
    assert new["prefix"] in lines[1]
    assert lines[1].rstrip().endswith("active")
    assert not KEY_PATTERN.search(result.stdout)

    everything = run("list", "--project", "proj_1", "--all")
    rows = everything.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [gone["id"], new["id"], old["id"]]
    assert rows[0].rstrip().endswith("revoked")


def test_list_json_is_an_array_of_records(run: Any) -> None:
    old = create_json(run, name="old")["record"]
    new = create_json(run, name="new")["record"]
    result = run("list", "--project", "proj_1", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [new, old]
    empty = run("list", "--project", "nobody", "--json")
    assert json.loads(empty.stdout) == []


def test_list_of_an_empty_project_says_so(run: Any, database: Path) -> None:
    SQLKeyStore(f"sqlite:///{database}").create_table()
    result = run("list", "--project", "nobody")
    assert (result.exit_code, result.stdout) == (
        0,
        "No active API keys for project nobody.\n",
    )


def test_revoke_prints_the_record_and_is_idempotent(run: Any, database: Path) -> None:
    record = create_json(run)["record"]
    result = run("revoke", record["id"], "--revoked-by", "bob")
    assert result.exit_code == 0
    assert result.stdout.startswith("API key revoked.\n")
    assert "revoked" in result.stdout
    assert "by bob" in result.stdout
    again = run("revoke", record["id"], "--revoked-by", "eve")
    assert again.exit_code == 0
    assert again.stdout.startswith("API key was already revoked; nothing changed.\n")
    assert "by bob" in again.stdout
    (revoked,) = stored(database, "proj_1")
    assert revoked.revoked_by == "bob"


def test_revoke_json_is_one_record(run: Any) -> None:
    record = create_json(run)["record"]
    result = run("revoke", record["id"], "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert list(document) == RECORD_FIELDS
    assert document["id"] == record["id"]
    assert datetime.fromisoformat(document["revoked_at"]).utcoffset() == timedelta(0)


def assert_one_line_error(result: Result, exit_code: int, message: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        pytest.param(
            ["create", "--project", "p"], 2, "Missing option '--name'", id="no-name"
        ),
        pytest.param(
            ["create", "--name", "n"], 2, "Missing option '--project'", id="no-project"
        ),
        pytest.param(
            ["create", "--project", "p", "--name", "  "],
            2,
            "name must not be empty",
            id="blank-name",
        ),
        pytest.param(
            ["create", "--project", "p", "--name", "x" * 101],
            2,
            "at most 100",
            id="long-name",
        ),
        pytest.param(
            ["create", "--project", " ", "--name", "n"],
            2,
            "project_id must not be empty",
            id="blank-project",
        ),
        pytest.param(
            ["create", "--project", "p", "--name", "a\x07b"],
            2,
            "control characters",
            id="control-char",
        ),
        pytest.param(
            ["create", "--project", "p", "--name", "n", "--bogus"],
            2,
            "No such option",
            id="bad-option",
        ),
        pytest.param(["list"], 2, "Missing option '--project'", id="list-no-project"),
        pytest.param(["revoke"], 2, "Missing argument 'KEY_ID'", id="revoke-no-id"),
        pytest.param(["frobnicate"], 2, "No such command", id="bad-command"),
        pytest.param(
            ["revoke", "no-such-id"], 1, "no key store at ", id="revoke-without-store"
        ),
        pytest.param(
            ["list", "--project", "p"], 1, "no key store at ", id="list-without-store"
        ),
        pytest.param(
            ["revoke", " vem_" + "a" * 32],
            2,
            "that is an API key, not a key id",
            id="pasted-key-with-space",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    run: Any, database: Path, args: list[str], exit_code: int, message: str
) -> None:
    result = run(*args)
    assert_one_line_error(result, exit_code, message)
    assert "a" * 24 not in result.stderr
    # Refused before the store was written: not even the file exists.
    assert not database.exists()


def test_bad_input_leaves_an_existing_store_unchanged(run: Any, database: Path) -> None:
    record = create_json(run)["record"]
    for args in (
        ["create", "--project", "proj_1", "--name", ""],
        ["create", "--project", "proj_1", "--name", "n", "--created-by", "x" * 300],
        ["revoke", "nope", "--revoked-by", "bob"],
    ):
        assert run(*args).exit_code != 0
    assert [key.to_dict() for key in stored(database, "proj_1")] == [record]


def test_a_pasted_key_is_refused_without_being_echoed(run: Any) -> None:
    key = create_json(run)["key"]
    result = run("revoke", key)
    assert_one_line_error(result, 2, "is an API key, not a key id")
    assert key not in result.stderr


def test_output_that_cannot_be_written_revokes_the_new_key(tmp_path: Path) -> None:
    """A key nobody saw must not stay active, and the error is one line."""
    database = tmp_path / "keys.db"
    with open("/dev/full", "w") as full:
        failed = subprocess.run(
            [
                sys.executable,
                "-m",
                "vemetric_auth",
                "--database-url",
                f"sqlite:///{database}",
                "create",
                "--project",
                "p",
                "--name",
                "n",
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            timeout=60,
            check=False,
        )
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1
    assert failed.stderr.startswith("Error: could not write the new key")
    (record,) = KeyManager(SQLKeyStore(f"sqlite:///{database}")).list(
        "p", include_revoked=True
    )
    assert record.revoked


@pytest.mark.parametrize(
    ("url", "exit_code", "message"),
    [
        pytest.param("not a url", 2, "Could not parse", id="unparsable"),
        pytest.param("nosuchdb://x/y", 2, "Can't load plugin", id="unknown-dialect"),
        pytest.param(
            "sqlite:////nonexistent/dir/keys.db",
            1,
            "no key store at /nonexistent/dir/keys.db",
            id="unopenable-file",
        ),
    ],
)
def test_unusable_store_is_one_line(url: str, exit_code: int, message: str) -> None:
    result = CliRunner().invoke(
        cli, ["--database-url", url, "list", "--project", "p"], env={}
    )
    assert_one_line_error(result, exit_code, message)


def test_database_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "from-env.db"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["create", "--project", "p", "--name", "n"],
        env={"VEMETRIC_AUTH_DATABASE_URL": f"sqlite:///{database}"},
    )
    assert result.exit_code == 0
    assert len(stored(database, "p")) == 1
    assert not (tmp_path / "vemetric_auth.db").exists()


def test_default_store_is_vemetric_auth_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["create", "--project", "p", "--name", "n"],
        env={"VEMETRIC_AUTH_DATABASE_URL": None},
    )
    assert result.exit_code == 0
    assert len(stored(tmp_path / "vemetric_auth.db", "p")) == 1


def test_the_key_reaches_no_log_and_no_stderr(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = run("create", "--project", "p", "--name", "n")
    (key,) = KEY_PATTERN.findall(result.stdout)
    assert run("revoke", key).exit_code == 2
    assert caplog.records  # the manager did log
    assert key not in caplog.text
    assert key[12:] not in caplog.text
    assert result.stderr == ""


def test_help_works_without_a_store(database: Path) -> None:
    for args in ([], ["create"], ["list"], ["revoke"]):
        result = CliRunner().invoke(
            cli, ["--database-url", "not a url", *args, "--help"]
        )
        assert result.exit_code == 0
        assert "Usage:" in result.stdout
    assert not database.exists()


def test_main_exits_with_the_status(database: Path) -> None:
    SQLKeyStore(f"sqlite:///{database}").create_table()
    with pytest.raises(SystemExit) as exited:
        main(["--database-url", f"sqlite:///{database}", "list", "--project", "p"])
    assert exited.value.code == 0


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "vemetric_auth"], id="python-m"),
        pytest.param([str(SCRIPT)], id="console-script"),
    ],
)
def test_the_command_runs_as_a_program(command: list[str], tmp_path: Path) -> None:
    if not Path(command[0]).exists():
        pytest.skip("the console script is not installed")
    created = subprocess.run(
        [*command, "create", "--project", "p", "--name", "n", "--json"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (created.returncode, created.stderr) == (0, "")
    assert is_valid_format(json.loads(created.stdout)["key"])
    assert (tmp_path / "vemetric_auth.db").exists()
    failed = subprocess.run(
        [*command, "revoke", "nope"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == "Error: no API key with this id\n"


def test_unreachable_postgres_is_one_line_and_quick(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "vemetric_auth", "list", "--project", "p"],
        cwd=tmp_path,
        env=subprocess_env(
            VEMETRIC_AUTH_DATABASE_URL="postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: the key store failed: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert elapsed < 15


# -- click's own machinery: ctx.obj, parameter callbacks, one-line display -----


@pytest.mark.parametrize(
    ("args", "option"),
    [
        pytest.param(["create", "--project", "p\udcff", "--name", "n"], "--project"),
        pytest.param(["create", "--project", "p", "--name", "\udcffn"], "--name"),
        pytest.param(
            ["create", "--project", "p", "--name", "n", "--created-by", "\udce9"],
            "--created-by",
        ),
        pytest.param(["list", "--project", "\udcff"], "--project"),
    ],
)
def test_arguments_that_are_not_utf8_are_usage_errors(
    run: Any, database: Path, args: list[str], option: str
) -> None:
    """Bytes of another encoding reach Python as lone surrogates: exit 2."""
    result = run(*args)
    assert_one_line_error(
        result, 2, f"Invalid value for '{option}': not valid UTF-8 text"
    )
    assert not database.exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["revoke", "id\udcff"], id="key-id"),
        pytest.param(["revoke", "{id}", "--revoked-by", "\udcff"], id="revoked-by"),
    ],
)
def test_revoke_arguments_that_are_not_utf8_change_nothing(
    run: Any, database: Path, args: list[str]
) -> None:
    record = create_json(run)["record"]
    result = run(*[arg.format(id=record["id"]) for arg in args])
    assert_one_line_error(result, 2, "not valid UTF-8 text")
    assert [key.to_dict() for key in stored(database, "proj_1")] == [record]


def test_a_non_utf8_command_line_is_a_usage_error(tmp_path: Path) -> None:
    """The same through a real argv of bytes, as a shell passes them."""
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "vemetric_auth",
            "create",
            "--project",
            b"proj_\xff",
            "--name",
            "n",
        ],
        cwd=tmp_path,
        env=subprocess_env(LC_ALL="C.UTF-8"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (failed.returncode, failed.stdout) == (2, b"")
    assert failed.stderr.startswith(b"Error: Invalid value for '--project'")
    assert failed.stderr.count(b"\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_pasted_key_is_refused_by_the_key_id_parameter(run: Any) -> None:
    key = create_json(run)["key"]
    result = run("revoke", key, "--revoked-by", "x")
    assert_one_line_error(result, 2, "Invalid value for 'KEY_ID': that is an API key")
    assert key not in result.stderr


def test_an_unusable_url_names_its_option() -> None:
    result = CliRunner().invoke(
        cli, ["--database-url", "not a url", "list", "--project", "p"], env={}
    )
    assert_one_line_error(
        result, 2, "Invalid value for --database-url (or VEMETRIC_AUTH_DATABASE_URL)"
    )
    assert result.stderr.rstrip().endswith("(see 'vemetric-auth --help')")


def test_any_group_of_the_commands_opens_its_store_through_ctx_obj() -> None:
    """The commands find their store in ctx.obj, opened only once they need it."""
    from conftest import CountingHasher

    from vemetric_auth import InMemoryKeyStore
    from vemetric_auth.cli import COMMANDS, CommandGroup, KeysOpener

    keys = KeyManager(InMemoryKeyStore(), hasher=CountingHasher())
    opened: list[KeyManager] = []

    def open_keys() -> KeyManager:
        opened.append(keys)
        return keys

    group = CommandGroup("keys", commands=COMMANDS)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(group, list(args), obj=KeysOpener(open_keys))

    assert invoke("create", "--help").exit_code == 0
    refused = invoke("create", "--project", "p", "--name", "n", "--created-by", "")
    assert refused.exit_code == 2
    pasted = invoke("revoke", "vem_" + "a" * 32)
    assert_one_line_error(pasted, 2, "that is an API key")
    assert_one_line_error(invoke("list"), 2, "Missing option '--project'")
    # Only the create that KeyManager refused opened the store; usage errors
    # found by click did not.
    assert opened == [keys]

    created = invoke("create", "--project", "p", "--name", "n", "--json")
    assert created.exit_code == 0, created.output
    record = json.loads(created.stdout)["record"]
    assert keys.get(record["id"]).name == "n"
    listed = invoke("list", "--project", "p", "--json")
    assert [item["id"] for item in json.loads(listed.stdout)] == [record["id"]]
    assert_one_line_error(
        invoke("frobnicate"), 2, "No such command 'frobnicate'. (see 'keys --help')"
    )


# -- key lifecycle: expiry, roll, last use ----------------------------------------


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("option", "delta"),
    [
        pytest.param("90d", timedelta(days=90), id="days"),
        pytest.param("12h", timedelta(hours=12), id="hours"),
        pytest.param("30m", timedelta(minutes=30), id="minutes"),
        pytest.param("45s", timedelta(seconds=45), id="seconds"),
    ],
)
def test_create_expires_in(run: Any, database: Path, option: str, delta: Any) -> None:
    before = datetime.now(timezone.utc)
    result = run(
        "create", "--project", "p", "--name", "n", "--expires-in", option, "--json"
    )
    after = datetime.now(timezone.utc)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["record"]
    expires_at = iso(record["expires_at"])
    assert expires_at.utcoffset() == timedelta(0)
    assert before + delta <= expires_at <= after + delta
    (stored_record,) = stored(database, "p")
    assert stored_record.to_dict() == record
    assert stored_record.active


@pytest.mark.parametrize(
    "given",
    ["2999-12-31T01:00:00+01:00", "2999-12-31T00:00:00Z", "2999-12-31T00:00Z"],
)
def test_create_expires_at_takes_iso_8601_with_an_offset(
    run: Any, database: Path, given: str
) -> None:
    result = run(
        "create", "--project", "p", "--name", "n", "--expires-at", given, "--json"
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["record"]
    assert record["expires_at"] == "2999-12-31T00:00:00+00:00"
    text = run("create", "--project", "p", "--name", "m", "--expires-at", given)
    assert "expires:    2999-12-31 00:00:00 UTC" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--expires-in", "5y"], "'5y' is not a duration", id="unit"),
        pytest.param(["--expires-in", "1.5h"], "not a duration", id="fraction"),
        pytest.param(["--expires-in", "-3d"], "not a duration", id="negative"),
        pytest.param(["--expires-in", "h"], "not a duration", id="no-number"),
        pytest.param(["--expires-in", "0"], "would expire at once", id="zero"),
        pytest.param(["--expires-in", "0s"], "would expire at once", id="zero-s"),
        pytest.param(
            ["--expires-in", "99999999999d"], "too long", id="overflowing-days"
        ),
        pytest.param(["--expires-in", "3000000d"], "too far", id="past-year-9999"),
        pytest.param(
            ["--expires-at", "2999-12-31T00:00:00"], "give a UTC offset", id="naive"
        ),
        pytest.param(["--expires-at", "2999-12-31"], "give a UTC offset", id="a-date"),
        pytest.param(["--expires-at", "tomorrow"], "not an ISO 8601", id="words"),
        pytest.param(
            ["--expires-at", "2001-01-01T00:00:00Z"], "that time has passed", id="past"
        ),
        pytest.param(
            ["--expires-in", "1d", "--expires-at", "2999-01-01T00:00Z"],
            "mutually exclusive",
            id="both",
        ),
    ],
)
def test_bad_expiries_are_usage_errors_and_store_nothing(
    run: Any, database: Path, args: list[str], message: str
) -> None:
    result = run("create", "--project", "p", "--name", "n", *args)
    assert_one_line_error(result, 2, message)
    assert not database.exists()


def test_roll_prints_the_new_key_once_and_the_old_one_stops_later(
    run: Any, database: Path
) -> None:
    old = create_json(run, project="p", name="Prod")
    before = datetime.now(timezone.utc)
    result = run("roll", old["record"]["id"], "--overlap", "2h", "--rolled-by", "bob")
    after = datetime.now(timezone.utc)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(
        "API key rolled. Copy the new key now: it is shown only this once.\n"
    )
    (key,) = KEY_PATTERN.findall(result.stdout)
    new_record, old_record = stored(database, "p")
    assert key.startswith(new_record.prefix[:-3])
    assert (new_record.name, new_record.created_by, new_record.expires_at) == (
        "Prod",
        "bob",
        None,
    )
    assert new_record.active
    assert old_record.id == old["record"]["id"]
    assert old_record.expires_at is not None
    assert before + timedelta(hours=2) <= old_record.expires_at
    assert old_record.expires_at <= after + timedelta(hours=2)
    assert result.stdout.rstrip().endswith(
        f"The old key {old_record.id} stops working at "
        f"{old_record.expires_at:%Y-%m-%d %H:%M:%S} UTC."
    )
    keys = KeyManager(SQLKeyStore(f"sqlite:///{database}"))
    try:
        assert keys.authenticate(key).id == new_record.id
        assert keys.authenticate(old["key"]).id == old_record.id  # the overlap
    finally:
        keys.close()
        keys.store.close()  # type: ignore[attr-defined]


def test_roll_json_is_one_document_like_create(run: Any, database: Path) -> None:
    old = create_json(run, project="p")["record"]
    result = run("roll", old["id"], "--overlap", "0", "--expires-in", "30d", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document) == ["key", "record"]
    assert list(document["record"]) == RECORD_FIELDS
    new_record, old_record = stored(database, "p")
    assert document["record"] == new_record.to_dict()
    assert new_record.expires_at is not None
    assert old_record.revoked  # --overlap 0


def test_roll_refusals_are_one_line_and_change_nothing(
    run: Any, database: Path
) -> None:
    issued = create_json(run, project="p")
    record = issued["record"]
    cases = [
        (["roll", "no-such-id"], 1, "no API key with this id"),
        (["roll", issued["key"]], 2, "that is an API key, not a key id"),
        (["roll", record["id"], "--overlap", "-1h"], 2, "not a duration"),
        (["roll", record["id"], "--overlap", "1w"], 2, "not a duration"),
        (["roll", record["id"], "--rolled-by", ""], 2, "rolled_by must not be empty"),
        (
            ["roll", record["id"], "--expires-at", "2999-01-01T00:00"],
            2,
            "give a UTC offset",
        ),
        (["roll"], 2, "Missing argument 'KEY_ID'"),
    ]
    for args, exit_code, message in cases:
        result = run(*args)
        assert_one_line_error(result, exit_code, message)
        assert issued["key"] not in result.stderr
    assert [key.to_dict() for key in stored(database, "p")] == [record]
    assert run("revoke", record["id"]).exit_code == 0
    assert_one_line_error(run("roll", record["id"]), 1, "is revoked")
    assert len(stored(database, "p")) == 1


def test_list_shows_last_use_expiry_and_status(run: Any, database: Path) -> None:
    used = create_json(run, project="p", name="used")
    expiring = run(
        "create", "--project", "p", "--name", "short", "--expires-in", "1s", "--json"
    )
    gone = create_json(run, project="p", name="gone")["record"]
    assert run("revoke", gone["id"]).exit_code == 0
    keys = KeyManager(SQLKeyStore(f"sqlite:///{database}"))
    keys.authenticate(used["key"])
    keys.close()  # writes the last use
    keys.store.close()  # type: ignore[attr-defined]
    time.sleep(1.1)
    result = run("list", "--project", "p", "--all")
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.index("LAST USED") < header.index("EXPIRES") < header.index("STATUS")
    by_name = {row.split()[1]: row for row in rows}
    assert by_name["gone"].rstrip().endswith("revoked")
    assert by_name["short"].rstrip().endswith("expired")
    assert by_name["used"].rstrip().endswith("active")
    (last_used,) = [r.last_used_at for r in stored(database, "p") if r.name == "used"]
    assert last_used is not None
    assert f"{last_used:%Y-%m-%d %H:%M:%S} UTC" in by_name["used"]
    assert "never" in by_name["used"]  # no expiry
    expires_at = json.loads(expiring.stdout)["record"]["expires_at"]
    assert f"{iso(expires_at):%Y-%m-%d %H:%M:%S} UTC" in by_name["short"]
    # Expired keys are listed without --all; revoked ones are not.
    active = run("list", "--project", "p", "--json")
    names = [record["name"] for record in json.loads(active.stdout)]
    assert names == ["short", "used"]
    document = json.loads(run("list", "--project", "p", "--all", "--json").stdout)
    assert all(list(record) == RECORD_FIELDS for record in document)
    assert [record["last_used_at"] is not None for record in document] == [
        False,
        False,
        True,
    ]


def test_a_new_key_is_stored_inactive_until_it_was_written_out() -> None:
    """create and roll: add (inactive), print, then one activating write."""
    from conftest import CountingHasher

    from vemetric_auth import InMemoryKeyStore
    from vemetric_auth.cli import COMMANDS, CommandGroup, KeysOpener

    events: list[str] = []

    class Store(InMemoryKeyStore):
        def add(self, record: ApiKey, key_hash: str) -> None:
            inactive = record.expires_at is not None and (
                record.expires_at <= record.created_at
            )
            events.append("add inactive" if inactive else "add active")
            super().add(record, key_hash)

        def set_expiry(self, key_id: str, expires_at: Any) -> Any:
            events.append("set_expiry")
            return super().set_expiry(key_id, expires_at)

        def roll(self, old_key_id: str, new_key_id: str, **kwargs: Any) -> Any:
            events.append("roll")
            return super().roll(old_key_id, new_key_id, **kwargs)

    keys = KeyManager(Store(), hasher=CountingHasher())
    group = CommandGroup("keys", commands=COMMANDS)

    def invoke(*args: str) -> Result:
        # The output is captured as it is written: the store's events up to
        # the write are those before the key was shown.
        return CliRunner().invoke(group, list(args), obj=KeysOpener(lambda: keys))

    created = invoke("create", "--project", "p", "--name", "n", "--json")
    assert created.exit_code == 0
    assert events == ["add inactive", "set_expiry"]
    record = json.loads(created.stdout)["record"]
    events.clear()
    rolled = invoke("roll", record["id"], "--json")
    assert rolled.exit_code == 0
    assert events == ["add inactive", "roll"]
    assert keys.authenticate(json.loads(rolled.stdout)["key"]).active


def test_a_store_of_the_six_methods_creates_keys_but_can_not_roll(
    flaky_keys: KeyManager,
) -> None:
    from vemetric_auth.cli import COMMANDS, CommandGroup, KeysOpener

    group = CommandGroup("keys", commands=COMMANDS)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(group, list(args), obj=KeysOpener(lambda: flaky_keys))

    created = invoke("create", "--project", "p", "--name", "n", "--json")
    assert created.exit_code == 0
    document = json.loads(created.stdout)
    assert flaky_keys.authenticate(document["key"]).id == document["record"]["id"]
    rolled = invoke("roll", document["record"]["id"])
    assert_one_line_error(rolled, 1, "FlakyStore lacks set_expiry and roll")


def test_the_command_closes_its_key_manager(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vemetric_auth.cli as cli_module

    closed: list[KeyManager] = []

    class Closing(KeyManager):
        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(cli_module, "KeyManager", Closing)
    record = create_json(run)["record"]
    assert len(closed) == 1
    assert run("list", "--project", "proj_1").exit_code == 0
    assert run("roll", record["id"]).exit_code == 0
    assert len(closed) == 3
    assert run("roll", "nope").exit_code == 1  # closed after a failure too
    assert len(closed) == 4


def test_flask_vemetric_auth_rolls_too(tmp_path: Path) -> None:
    from flask import Flask, g

    from vemetric_auth.flask import VemetricAuth

    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'keys.db'}"
    VemetricAuth(app)

    @app.get("/v1/key")
    def key() -> dict[str, Any]:
        return {"id": g.api_key.id, "expires_at": g.api_key.to_dict()["expires_at"]}

    runner = app.test_cli_runner()
    client = app.test_client()

    def call(key: str) -> Any:
        return client.get("/v1/key", headers={"Authorization": f"Bearer {key}"})

    try:
        created = runner.invoke(
            args=[
                "vemetric-auth",
                "create",
                "--project",
                "p",
                "--name",
                "n",
                "--expires-in",
                "90d",
                "--json",
            ]
        )
        assert created.exit_code == 0, created.output
        old = json.loads(created.stdout)
        assert call(old["key"]).json == {
            "id": old["record"]["id"],
            "expires_at": old["record"]["expires_at"],
        }
        rolled = runner.invoke(
            args=[
                "vemetric-auth",
                "roll",
                old["record"]["id"],
                "--overlap",
                "0",
                "--json",
            ]
        )
        assert rolled.exit_code == 0, rolled.output
        new = json.loads(rolled.stdout)
        assert call(new["key"]).json == {"id": new["record"]["id"], "expires_at": None}
        assert call(old["key"]).status_code == 401
        listed = runner.invoke(args=["vemetric-auth", "list", "--project", "p"])
        assert "LAST USED" in listed.stdout
        assert "EXPIRES" in listed.stdout
    finally:
        app.extensions["vemetric_auth"].keys.store.close()


# -- nothing active that nobody saw: interrupted create and roll -------------------

SLOW_SCRIPT = Path(__file__).parent / "cli_slow_store.py"


def start_slow(
    database: Path, mark: Path, args: list[str], **env: str
) -> subprocess.Popen[str]:
    """Run the commands on a store whose writes named in SLOW are slow."""
    return subprocess.Popen(
        [sys.executable, str(SLOW_SCRIPT), str(database), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(SLOW_MARK=str(mark), **env),
    )


def wait_for(path: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)


def existing_key(database: Path) -> tuple[str, ApiKey]:
    keys = KeyManager(SQLKeyStore(f"sqlite:///{database}"))
    try:
        issued = keys.create("p", "Prod")
    finally:
        keys.close()
        keys.store.close()  # type: ignore[attr-defined]
    return issued.key, issued.record


def assert_no_active_key_unseen(
    database: Path, shown: str, old: ApiKey | None = None
) -> list[ApiKey]:
    """Every active key of the store was written out (or is the old key, as
    it was, or as the roll left it once the new key was written out)."""
    printed = KEY_PATTERN.findall(shown)
    records = stored(database, "p")
    new = [record for record in records if old is None or record.id != old.id]
    for record in new:
        if record.active:
            assert any(key.startswith(record.prefix[:-3]) for key in printed), record
    if old is not None:
        (now,) = [record for record in records if record.id == old.id]
        if not printed:
            assert now == old  # the roll changed nothing
    return new


COMMANDS_TO_INTERRUPT = [
    pytest.param("create", "add", id="create-slow-add"),
    pytest.param("create", "set_expiry", id="create-slow-activation"),
    pytest.param("roll", "add", id="roll-slow-add"),
    pytest.param("roll", "roll", id="roll-slow-roll"),
]


def command_args(command: str, old: ApiKey) -> list[str]:
    if command == "create":
        return ["create", "--project", "p", "--name", "n"]
    return ["roll", old.id, "--overlap", "0"]


@pytest.mark.parametrize("signal", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(("command", "slow"), COMMANDS_TO_INTERRUPT)
def test_a_signal_during_a_slow_write_leaves_no_active_key_unseen(
    tmp_path: Path, command: str, slow: str, signal: str
) -> None:
    import signal as signals

    database, mark = tmp_path / "keys.db", tmp_path / "mark"
    _, old = existing_key(database)
    process = start_slow(database, mark, command_args(command, old), SLOW=slow)
    try:
        wait_for(mark)
        process.send_signal(getattr(signals, signal))
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "Traceback" not in stderr
    new = assert_no_active_key_unseen(database, stdout, old)
    if slow == "add":
        # Interrupted before the key was shown: stored, if at all, inactive.
        assert KEY_PATTERN.findall(stdout) == []
        assert all(not record.active for record in new)


@pytest.mark.parametrize(("command", "slow"), COMMANDS_TO_INTERRUPT)
def test_a_store_answering_after_the_timeout_leaves_no_active_key_unseen(
    tmp_path: Path, command: str, slow: str
) -> None:
    database, mark = tmp_path / "keys.db", tmp_path / "mark"
    _, old = existing_key(database)
    process = start_slow(
        database,
        mark,
        command_args(command, old),
        SLOW=slow,
        SLOW_SECONDS="2",
        STORE_TIMEOUT="0.5",
    )
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.startswith("Error: ")
    assert stderr.count("\n") == 1
    new = assert_no_active_key_unseen(database, stdout, old)
    if slow == "add":
        assert "the key store failed" in stderr
        assert stdout == ""
    else:
        # Shown, then the activation landed without a timely answer: the
        # new key works (and the old one is revoked, --overlap 0).
        assert "could not confirm that the new key" in stderr
        (record,) = new
        (key,) = KEY_PATTERN.findall(stdout)
        assert key.startswith(record.prefix[:-3])
        assert record.active
        if command == "roll":
            assert stored(database, "p")[-1].revoked


@pytest.mark.parametrize("command", ["create", "roll"])
def test_a_closed_stdout_pipe_leaves_no_active_key(
    tmp_path: Path, command: str
) -> None:
    database, mark = tmp_path / "keys.db", tmp_path / "mark"
    _, old = existing_key(database)
    # The reader goes away while the new key is being stored.
    process = start_slow(
        database, mark, command_args(command, old), SLOW="add", SLOW_SECONDS="1"
    )
    with process:
        wait_for(mark)
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.close()
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 1
    assert stderr.startswith("Error: could not write the new key")
    assert stderr.count("\n") == 1
    (record,) = assert_no_active_key_unseen(database, "", old)
    assert record.revoked
    assert stored(database, "p")[-1] == old
