"""Without an extra installed, the error names the extra to install.

Each case runs in a fresh interpreter in which an import blocker refuses the
modules of the missing extra, as if they were not installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Runs first in the child: refuses every module of BLOCKED (and its
# submodules) the way a missing package is refused.
BLOCKER = """
import sys

BLOCKED = frozenset(sys.argv.pop(1).split(","))
assert not BLOCKED & set(sys.modules), "imported before the blocker"


class RefuseBlocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, RefuseBlocked())
"""

# The command line as `python -m vemetric_auth` runs it.
RUN_CLI = """
import runpy

runpy.run_module("vemetric_auth", run_name="__main__", alter_sys=True)
"""


def python(
    blocked: set[str], code: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run *code* in a new interpreter in which the *blocked* modules are missing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, ",".join(sorted(blocked)), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def assert_raised(
    done: subprocess.CompletedProcess[str], error: str, message: str
) -> None:
    """*done* died of exactly *error* (not a subclass), its message naming *message*."""
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{error}: "), done.stderr
    assert message in last, done.stderr


def assert_one_line(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith("Error: ")
    assert done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_blocker_blocks() -> None:
    done = python({"json"}, "import json")
    assert_raised(done, "ModuleNotFoundError", "No module named 'json'")


def test_the_core_needs_no_extra() -> None:
    code = """
from vemetric_auth import InMemoryKeyStore, KeyManager

with_keys = KeyManager(InMemoryKeyStore())
issued = with_keys.create("proj_1", "no extras")
assert with_keys.authenticate(issued.key) == issued.record
print("ok")
"""
    done = python({"click", "flask", "psycopg", "sqlalchemy"}, code)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("from vemetric_auth import SQLKeyStore", id="root"),
        pytest.param("import vemetric_auth; vemetric_auth.SQLKeyStore", id="attribute"),
        pytest.param("from vemetric_auth.stores import SQLKeyStore", id="stores"),
    ],
)
def test_sql_key_store_without_sqlalchemy_names_the_sql_extra(statement: str) -> None:
    done = python({"sqlalchemy"}, statement)
    assert_raised(done, "ImportError", "pip install 'vemetric-auth[sql]'")
    assert "SQLAlchemy" in done.stderr


@pytest.mark.parametrize(
    "blocked",
    [
        pytest.param({"flask"}, id="no-flask"),
        pytest.param({"flask", "click"}, id="no-flask-no-click"),
    ],
)
def test_the_flask_extension_without_flask_names_the_flask_extra(
    blocked: set[str],
) -> None:
    done = python(blocked, "import vemetric_auth.flask")
    assert_raised(done, "ImportError", "pip install 'vemetric-auth[flask]'")
    assert "click" not in done.stderr.strip().splitlines()[-1]


def test_the_command_without_click_names_the_cli_extra(tmp_path: Path) -> None:
    done = python({"click"}, RUN_CLI, "list", "--project", "p", cwd=tmp_path)
    assert_one_line(done, "pip install 'vemetric-auth[cli]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="group"),
        pytest.param(["create", "--help"], id="create"),
        pytest.param(["list", "--help"], id="list"),
        pytest.param(["revoke", "--help"], id="revoke"),
    ],
)
def test_help_needs_no_store_nor_its_extras(tmp_path: Path, args: list[str]) -> None:
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
    done = python(
        {"sqlalchemy", "psycopg"}, RUN_CLI, "--database-url", url, *args, cwd=tmp_path
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("Usage: vemetric-auth")


def test_the_command_without_sqlalchemy_names_the_cli_extra(tmp_path: Path) -> None:
    done = python(
        {"sqlalchemy"},
        RUN_CLI,
        "create",
        "--project",
        "p",
        "--name",
        "n",
        cwd=tmp_path,
    )
    assert_one_line(done, "needs SQLAlchemy: pip install 'vemetric-auth[cli]'")
    assert list(tmp_path.iterdir()) == []


def test_the_command_without_psycopg_names_cli_and_postgres(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/x"
    done = python(
        {"psycopg"},
        RUN_CLI,
        "--database-url",
        url,
        "list",
        "--project",
        "p",
        cwd=tmp_path,
    )
    assert_one_line(done, "psycopg is not installed")
    assert "pip install 'vemetric-auth[cli,postgres]'" in done.stderr
    assert "No module named" not in done.stderr
    assert "s3cret" not in done.stderr


def test_the_command_with_another_postgres_driver_says_what_to_do(
    tmp_path: Path,
) -> None:
    done = python(
        {"psycopg2"},
        RUN_CLI,
        "--database-url",
        "postgresql+psycopg2://u:s3cret@127.0.0.1:1/x",
        "list",
        "--project",
        "p",
        cwd=tmp_path,
    )
    assert_one_line(done, "the PostgreSQL driver psycopg2 is not installed")
    assert "postgresql+psycopg://" in done.stderr
    assert "pip install 'vemetric-auth[cli,postgres]'" in done.stderr
    assert "s3cret" not in done.stderr


# -- the extras themselves (setup.cfg) ------------------------------------------


def extras() -> dict[str, dict[str, str]]:
    """Each extra of the installed distribution: requirement name to requirement."""
    found: dict[str, dict[str, str]] = {}
    for requirement in importlib.metadata.requires("vemetric-auth") or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", marker)
        if extra is None:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        assert name is not None, requirement
        found.setdefault(extra.group(1), {})[name.group(0).lower()] = spec.strip()
    return found


def test_each_extra_brings_what_its_code_imports() -> None:
    declared = extras()
    # vemetric_auth.cli: click; its store: SQLAlchemy.
    assert {"click", "sqlalchemy"} <= set(declared["cli"])
    # vemetric_auth.flask: Flask and click (its commands); the default store.
    assert {"flask", "click", "sqlalchemy"} <= set(declared["flask"])
    assert {"sqlalchemy"} <= set(declared["sql"])
    # PostgreSQL through psycopg 3, with its own libpq: nothing else to install.
    assert {"sqlalchemy", "psycopg"} <= set(declared["postgres"])
    assert declared["postgres"]["psycopg"].startswith("psycopg[binary]")


def test_cli_and_postgres_combine_into_a_postgres_command() -> None:
    declared = extras()
    combined = set(declared["cli"]) | set(declared["postgres"])
    assert {"click", "sqlalchemy", "psycopg"} <= combined
    # The versions asked for by both agree, so pip can install the union.
    for name in set(declared["cli"]) & set(declared["postgres"]):
        assert declared["cli"][name] == declared["postgres"][name]
