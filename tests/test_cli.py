from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
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
