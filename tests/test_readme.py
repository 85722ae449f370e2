"""Every Python block of README.md runs here, so that the README never shows
code that fails.

A block runs as a program, ``python block.py`` in an empty directory: it must
exit with status 0, write nothing to stderr and raise no warning. A block that
is not a whole program instead follows a marker, on the line before its fence,
naming the way it runs (a note for the reader may follow in parentheses)::

    <!-- readme-test: NAME -->
    <!-- readme-test: NAME (a note for the reader) -->

The names, each a function of :data:`RUNNERS`:

- ``wsgi-app``: the block is ``app.py``, a WSGI app keeping keys in
  ``./vemetric_auth.db``. With a key of ``proj_1`` made in that store, it is
  served both ways the README says, ``python app.py`` (its
  ``werkzeug.serving.run_simple`` call, on a free port rather than its own)
  and ``gunicorn app:app``, then asked over HTTP: the key gets 200 and an
  answer naming ``proj_1``, no key and an unknown key 401, ``/health`` 200.
- ``flask-app``: the same for a Flask ``app.py``, served by
  ``flask --app app run`` and by gunicorn. Its project loader knows
  ``proj_1`` only: a key of another project gets 401.
- ``fastapi-app``: the same for a FastAPI ``app.py``, served by
  ``uvicorn app:app`` at ``/v1/project``. Its project loader knows ``proj_1``
  only; the refusals must be the contract's JSON, never ``{"detail": ...}``.
- ``starlette-app``: the same for a Starlette ``app.py`` behind the ASGI
  middleware, served by ``uvicorn app:app``.
- ``store-protocol``: the declaration of ``KeyStore``, given ``Protocol``,
  ``ApiKey`` and ``datetime``. Its methods and their signatures must be
  exactly those of ``vemetric_auth.KeyStore``.
- ``store-contract``: a test module subclassing ``KeyStoreContract``, run by
  pytest with ``MyStore`` the ``JSONFileKeyStore`` of
  ``examples/custom_store.py``: every contract test must pass.

No Python block escapes: one fenced as ``py``, ``python3``, ``pycon`` or
anything else but ``python`` fails a test, and so does a marker that names no
runner or stands before no Python block.
"""

from __future__ import annotations

import http.client
import inspect
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import pytest
from conftest import CountingHasher
from servers import find_free_port
from servers.plugin import require

from vemetric_auth import ApiKey, KeyManager, KeyStore, SQLKeyStore

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
HOST = "127.0.0.1"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*(\S*)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
_MARKER_START = "<!-- readme-test"
_MARKER = re.compile(r"^<!-- readme-test: ([a-z][a-z-]*)(?: \([^()]*\))? -->$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README."""

    line: int  #: the line of its opening fence, from 1
    language: str  #: the first word after the fence: "python", "sh", ...
    code: str
    section: str  #: the heading it stands under, as a slug
    marker: str | None  #: the last line before the fence, if a readme-test marker
    marker_line: int | None  #: the line of the marker

    @property
    def runner(self) -> str:
        if self.marker is None:
            return "script"
        found = _MARKER.fullmatch(self.marker)
        return found.group(1) if found else self.marker

    def where(self) -> str:
        return f"README.md line {self.line} ({self.section})"


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def read_blocks(text: str) -> tuple[list[Block], list[int]]:
    """Return the fenced blocks of *text*, and the lines of every marker."""
    blocks: list[Block] = []
    markers: list[int] = []
    section = "top"
    before: tuple[int, str] | None = None  # the last non-blank line outside a block
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        fence = _FENCE.match(line)
        if fence is None:
            heading = _HEADING.match(line)
            if heading:
                section = _slug(heading.group(1))
            if line.startswith(_MARKER_START):
                markers.append(number)
            if line.strip():
                before = (number, line.strip())
            continue
        opened_at, closing = number, fence.group(1)
        body: list[str] = []
        while number < len(lines) and not (
            lines[number].strip().startswith(closing)
            and set(lines[number].strip()) == {closing[0]}
        ):
            body.append(lines[number])
            number += 1
        number += 1  # the closing fence
        marker_line, marker = before if before else (None, None)
        if marker is None or not marker.startswith(_MARKER_START):
            marker_line, marker = None, None
        code = "\n".join(body) + "\n"
        blocks.append(
            Block(opened_at, fence.group(2).lower(), code, section, marker, marker_line)
        )
        before = None
    return blocks, markers


BLOCKS, MARKERS = read_blocks(README.read_text(encoding="utf-8"))
PYTHON = [block for block in BLOCKS if block.language == "python"]


def _id(block: Block) -> str:
    same = [other for other in PYTHON if other.section == block.section]
    if len(same) == 1:
        return block.section
    return f"{block.section}-{same.index(block) + 1}"


# -- running blocks ----------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This environment without settings that would point a block elsewhere."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("VEMETRIC_AUTH_", "FLASK_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(block: Block, directory: Path) -> None:
    """``python block.py``: status 0, nothing on stderr, no warning."""
    (directory / "block.py").write_text(block.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-W", "error", "block.py"],
        cwd=directory,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), (
        f"{block.where()} failed:\n{done.stderr}"
    )


def check_store_protocol(block: Block, directory: Path) -> None:
    """The block declares ``KeyStore`` exactly as the package does."""
    path = directory / "protocol.py"
    path.write_text(block.code, encoding="utf-8")
    names = {"Protocol": Protocol, "ApiKey": ApiKey, "datetime": datetime}
    declared = runpy.run_path(str(path), init_globals=names)["KeyStore"]
    assert signatures(declared) == signatures(KeyStore), block.where()


def signatures(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member, eval_str=True)
        for name, member in vars(protocol).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def run_store_contract(block: Block, directory: Path) -> None:
    """The block as a test module, ``MyStore`` the example's JSON file store."""
    setup = "from custom_store import JSONFileKeyStore as MyStore\n"
    (directory / "test_block.py").write_text(setup + block.code, encoding="utf-8")
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(EXAMPLES), env.get("PYTHONPATH")])
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "test_block.py"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{block.where()}:\n{done.stdout}\n{done.stderr}"
    # Every contract test ran, and passed: none skipped.
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in .*", summary), done.stdout


def make_key(directory: Path, project_id: str) -> str:
    """A new key of *project_id* in the app's store, ``./vemetric_auth.db``."""
    store = SQLKeyStore(f"sqlite:///{directory / 'vemetric_auth.db'}")
    try:
        return (
            KeyManager(store, hasher=CountingHasher()).create(project_id, "readme").key
        )
    finally:
        store.close()


def get(port: int, path: str, key: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextmanager
def serving(
    name: str, command: list[str], directory: Path, port: int
) -> Iterator[Path]:
    """Run *command* in *directory* until the block ends, once ``/health`` on
    *port* answers 200; yield the path of its log (stdout and stderr)."""
    log_path = directory / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while status == 0:
            if process.poll() is not None:
                pytest.fail(f"`{name}` exited:\n{log_path.read_text()}")
            with suppress(OSError):
                status = get(port, "/health")[0]
            if status == 0 and time.monotonic() > deadline:
                pytest.fail(
                    f"`{name}`: nothing on port {port}:\n{log_path.read_text()}"
                )
            time.sleep(0.05)
        if status != 200:
            pytest.fail(f"`{name}`: /health answered {status}:\n{log_path.read_text()}")
        yield log_path
    finally:
        if process.poll() is None:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(15)
        # gunicorn's workers too, should the master have gone first.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


#: ``python app.py``, its ``run_simple`` call serving on the port given instead.
_PYTHON_APP_PY = """\
import runpy, sys
import werkzeug.serving

PORT = int(sys.argv[1])
_run_simple = werkzeug.serving.run_simple

def run_simple(hostname, port, application, **options):
    _run_simple(hostname, PORT, application, **options)

werkzeug.serving.run_simple = run_simple
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""


def python_app_py(port: int) -> list[str]:
    return [sys.executable, "-W", "error", "-c", _PYTHON_APP_PY, str(port)]


def flask_run(port: int) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)]


def gunicorn(port: int) -> list[str]:
    path = Path(sys.executable).parent / "gunicorn"
    require(path.exists(), "gunicorn is not installed")
    command = [str(path), "-b", f"{HOST}:{port}"]
    usage = subprocess.run(
        [str(path), "--help"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if "--no-control-socket" in usage:
        # Newer gunicorns open a control socket in ~/.gunicorn by default.
        command.append("--no-control-socket")
    return [*command, "app:app"]


#: The ways the README says to serve app.py, by name.
Serve = dict[str, Callable[[int], list[str]]]


def uvicorn(port: int) -> list[str]:
    """``uvicorn app:app``, on *port* of the loopback interface."""
    command = [sys.executable, "-m", "uvicorn", "app:app"]
    return [*command, "--host", HOST, "--port", str(port)]


def check_app(
    block: Block, directory: Path, serve: Serve, path: str, *, loads_projects: bool
) -> None:
    """Serve the block as ``app.py`` each way of *serve*; ask it over HTTP.

    With *loads_projects*, the app's project loader knows ``proj_1`` only.
    """
    (directory / "app.py").write_text(block.code, encoding="utf-8")
    key = make_key(directory, "proj_1")
    stranger = make_key(directory, "proj_unknown")
    for name, command in serve.items():
        where = f"{block.where()}, `{name}`"
        port = find_free_port()
        with serving(name, command(port), directory, port) as log:
            status, body = get(port, path, key)
            assert (status, b"proj_1" in body) == (200, True), (where, body)
            status, body = get(port, path)
            assert status == 401, where
            assert json.loads(body)["error"]["code"] == "UNAUTHORIZED", (where, body)
            assert get(port, path, "vem_" + "0" * 32)[0] == 401, where
            assert get(port, "/health")[0] == 200, where
            if loads_projects:
                assert get(port, path, stranger)[0] == 401, where
        assert key not in log.read_text(), f"{where}: a key in the server's log"


def check_wsgi_app(block: Block, directory: Path) -> None:
    serve = {"python app.py": python_app_py, "gunicorn app:app": gunicorn}
    check_app(block, directory, serve, "/", loads_projects=False)


def check_flask_app(block: Block, directory: Path) -> None:
    serve = {"flask --app app run": flask_run, "gunicorn app:app": gunicorn}
    check_app(block, directory, serve, "/v1/project", loads_projects=True)


def check_asgi_app(block: Block, directory: Path) -> None:
    serve = {"uvicorn app:app": uvicorn}
    check_app(block, directory, serve, "/v1/project", loads_projects=True)


RUNNERS: dict[str, Callable[[Block, Path], None]] = {
    "script": run_script,
    "wsgi-app": check_wsgi_app,
    "flask-app": check_flask_app,
    "fastapi-app": check_asgi_app,
    "starlette-app": check_asgi_app,
    "store-protocol": check_store_protocol,
    "store-contract": run_store_contract,
}
_SERVING = {"wsgi-app", "flask-app", "fastapi-app", "starlette-app"}


# -- the tests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            block,
            id=_id(block),
            marks=[pytest.mark.slow] if block.runner in _SERVING else [],
        )
        for block in PYTHON
    ],
)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    runner = RUNNERS.get(block.runner)
    assert runner is not None, f"{block.where()}: no runner {block.runner!r}"
    runner(block, tmp_path)


def test_every_marker_names_a_runner_and_stands_before_a_python_block() -> None:
    attached = {block.marker_line: block for block in PYTHON}
    for line in MARKERS:
        block = attached.get(line)
        assert block is not None, f"README.md line {line}: no python block follows"
        assert _MARKER.fullmatch(block.marker or ""), f"{block.where()}: bad marker"
        assert block.runner in RUNNERS, f"{block.where()}: no runner {block.runner!r}"


def test_every_block_in_python_is_fenced_as_python() -> None:
    """Blocks fenced ``py``, ``python3``, ``pycon``... would not run here."""
    others = [
        block.where()
        for block in BLOCKS
        if block.language != "python"
        and (block.language.startswith("py") or "python" in block.language)
    ]
    assert others == []


def test_every_runner_runs_a_block() -> None:
    """The quickstarts run behind servers, and no runner is left unused."""
    assert {block.runner for block in PYTHON} == set(RUNNERS)


def test_the_reader_finds_the_blocks_of_a_markdown_text() -> None:
    text = (
        "# Top\n\nsome text\n\n```python\nprint(1)\n```\n\n## Second part\n\n"
        "<!-- readme-test: wsgi-app -->\n```python\napp = 1\n\n```\n"
        "~~~sh\n```python\nnot a block\n~~~\n"
        "<!-- readme-test: store-contract (a note) -->\n\n````python\n```\n````\n"
    )
    blocks, markers = read_blocks(text)
    assert [(b.line, b.language, b.section, b.runner) for b in blocks] == [
        (5, "python", "top", "script"),
        (12, "python", "second-part", "wsgi-app"),
        (16, "sh", "second-part", "script"),
        (22, "python", "second-part", "store-contract"),
    ]
    assert [b.code for b in blocks] == [
        "print(1)\n",
        "app = 1\n\n",
        "```python\nnot a block\n",
        "```\n",
    ]
    assert markers == [11, 20]
