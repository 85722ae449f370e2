"""An ASGI app served by uvicorn in a subprocess on a free loopback port, for
the tests of the ASGI middleware and the FastAPI dependencies (and the
README's ASGI quickstarts).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import find_free_port

HOST = "127.0.0.1"


def uvicorn_command(port: int, app: str = "app:app", *options: str) -> list[str]:
    """``uvicorn APP`` on *port* of the loopback interface."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        *options,
    ]


@dataclass
class Server:
    """A running server: its port and its log (stdout and stderr)."""

    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection: status, headers (lowercase
        names) and body."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
            found = {name.lower(): value for name, value in response.getheaders()}
            return response.status, found, body
        finally:
            connection.close()


@contextmanager
def serving(
    command: Sequence[str],
    directory: Path,
    port: int,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/health",
    timeout: float = 30.0,
) -> Iterator[Server]:
    """Run *command* in *directory* until the block ends, once *ready_path*
    on *port* answers 200. The process is terminated (SIGTERM, so that the
    app's lifespan ends), then killed if it lingers."""
    log_path = directory / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command),
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(port, log_path)
    try:
        deadline = time.monotonic() + timeout
        status = 0
        while status == 0:
            if process.poll() is not None:
                pytest.fail(f"the server exited:\n{server.log()}")
            with suppress(OSError, http.client.HTTPException):
                status = server.request("GET", ready_path)[0]
            if status == 0 and time.monotonic() > deadline:
                pytest.fail(f"nothing on port {port}:\n{server.log()}")
            if status == 0:
                time.sleep(0.05)
        if status != 200:
            pytest.fail(f"{ready_path} answered {status}:\n{server.log()}")
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            with suppress(subprocess.TimeoutExpired):
                process.wait(15)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextmanager
def uvicorn_serving(
    directory: Path,
    app: str = "app:app",
    *options: str,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Serve *app* (``module:attribute`` in *directory*) with uvicorn."""
    port = find_free_port()
    command = uvicorn_command(port, app, *options)
    with serving(command, directory, port, env=env) as server:
        yield server
