"""The ASGI middleware and the FastAPI dependency: overhead, throughput, and
the latency of cached keys while cold keys are verified.

Three figures, each a median over interleaved rounds:

1. **Pure ASGI middleware overhead** over a bare ASGI app, both driven
   directly (no server, no event loop: a coroutine that never suspends is
   stepped once), a cached key. Target: 5 µs or less.
2. **FastAPI with ``ApiKeyBearer``** against **FastAPI with its own
   ``HTTPBearer`` and a dict lookup** of the token, the same view: two routes
   of one app under uvicorn (one worker, h11), loaded in turn, in short
   alternating rounds, by the same client (``benchmarks/loadkit.py``: threads
   on persistent ``http.client`` connections). Target: a requests/s ratio of
   0.95 or more.
3. **p50 and p99 latency of cached-key requests**, on the ``ApiKeyBearer`` app
   under uvicorn, alone and while another client sends keys never seen
   before (each a store lookup and an argon2id verification with the default
   parameters, on worker threads). A loop that waited on them would show
   their milliseconds in the cached keys' p99.

The client runs on the same 2-core machine as the servers and takes CPU from
them: the absolute figures are this machine's, the ratios carry over.

Run: ``.venv/bin/python benchmarks/bench_asgi.py [--quick]``
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from _timing import interleaved_us
from loadkit import Case, Connection, LoadClient

from vemetric_auth import InMemoryKeyStore, KeyManager, SQLKeyStore
from vemetric_auth.asgi import ApiKeyMiddleware

HOST = "127.0.0.1"
PROJECT_ID = "proj_bench"
TARGET_OVERHEAD_US = 5.0
TARGET_RATIO = 0.95

# -- 1. the middleware over a bare ASGI app, driven directly ---------------------

_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
_BODY = {"type": "http.response.body", "body": b"ok"}


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    pass


def step(coroutine: Any) -> None:
    """Run a coroutine that never suspends to its end, without a loop."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the call suspended: not the cached path")


def overhead(quick: bool) -> float:
    number, repeat = (5_000, 5) if quick else (50_000, 15)
    keys = KeyManager(InMemoryKeyStore())
    key = keys.create(PROJECT_ID, "bench").key
    keys.authenticate(key)  # the one cold verification
    guarded = ApiKeyMiddleware(bare_app, keys)
    # A scope as uvicorn makes it, with a browser's usual headers; each call
    # gets a copy, as each request gets its own scope.
    base: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": (HOST, 8000),
        "client": (HOST, 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/v1/project",
        "raw_path": b"/v1/project",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"curl/8.5.0"),
            (b"accept", b"*/*"),
            (b"authorization", b"Bearer " + key.encode()),
        ],
        "state": {},
    }
    refused = {**base, "headers": base["headers"][:3]}
    print(f"batches of {number} calls, {repeat} rounds")
    result = interleaved_us(
        {
            "bare app": lambda: step(bare_app(dict(base), _receive, _send)),
            "middleware": lambda: step(guarded(dict(base), _receive, _send)),
            "401 (no header)": lambda: step(guarded(dict(refused), _receive, _send)),
        },
        number=number,
        repeat=repeat,
    )
    for name, micros in result.items():
        print(f"  {name:<18}{micros:7.2f} µs/request (median)")
    extra = result["middleware"] - result["bare app"]
    print(
        f"  overhead          {extra:7.2f} µs/request (target <= {TARGET_OVERHEAD_US})"
    )
    keys.close()
    return extra


# -- 2 and 3: FastAPI apps under uvicorn -----------------------------------------

APP = """\
import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from vemetric_auth import ApiKey, KeyManager, SQLKeyStore
from vemetric_auth.fastapi import ApiKeyBearer, add_exception_handlers

keys = KeyManager(SQLKeyStore(os.environ["BENCH_DATABASE_URL"]))
api_key = ApiKeyBearer(keys)

bearer = HTTPBearer()
tokens = {os.environ["BENCH_KEY"]: "proj_bench"}


async def token_project_id(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)],
) -> str:
    found = tokens.get(credentials.credentials)
    if found is None:
        raise HTTPException(status_code=401, detail="Invalid token")
    return found


app = FastAPI()
add_exception_handlers(app)


@app.get("/ours/v1/project")
async def ours(key: Annotated[ApiKey, Depends(api_key)]):
    return {"project_id": key.project_id}


@app.get("/theirs/v1/project")
async def theirs(project_id: Annotated[str, Depends(token_project_id)]):
    return {"project_id": project_id}


@app.get("/health")
async def health():
    return {"status": "ok"}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uvicorn(directory: Path, module: str, env: dict[str, str]) -> Iterator[int]:
    """Serve ``module:app`` with uvicorn until the block ends; yield its port."""
    port = _free_port()
    log = open(directory / f"{module}.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-access-log",
            "--http",
            "h11",
        ],
        cwd=directory,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError((directory / f"{module}.log").read_text())
            try:
                connection = http.client.HTTPConnection(HOST, port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module}: nothing on port {port}")
            time.sleep(0.1)
        yield port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(10)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        log.close()


def _bearer_case(key: str, path: str = "/ours/v1/project") -> Case:
    return Case("valid", path, (("Authorization", f"Bearer {key}"),), "project")


def _rate(
    port: int, case: Case, seconds: float, connections: list[Connection]
) -> float:
    results = LoadClient(
        port,
        [([case], 1.0)],
        threads=len(connections),
        duration=seconds,
        connections=connections,
    ).run()
    bad = [r for r in results if r.status != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} answers were not 200: {bad[0].status}")
    return len(results) / seconds


def throughput(directory: Path, env: dict[str, str], key: str, quick: bool) -> float:
    """Both routes are served by one process, so that they share whatever the
    machine does meanwhile; short rounds alternate between them."""
    rounds, seconds, threads = (6, 1.0, 4) if quick else (30, 1.0, 4)
    cases = {
        "ApiKeyBearer": _bearer_case(key, "/ours/v1/project"),
        "HTTPBearer + dict": _bearer_case(key, "/theirs/v1/project"),
    }
    with uvicorn(directory, "app", env) as port:
        pool = [Connection(port, 15.0) for _ in range(threads)]
        for case in cases.values():  # warm up: the key's cold check
            _rate(port, case, 1.0, pool)
        rates: dict[str, list[float]] = {name: [] for name in cases}
        ratios = []
        for round_number in range(rounds):
            order = list(cases) if round_number % 2 == 0 else list(cases)[::-1]
            for name in order:
                rates[name].append(_rate(port, cases[name], seconds, pool))
            ratios.append(rates["ApiKeyBearer"][-1] / rates["HTTPBearer + dict"][-1])
        for connection in pool:
            connection.close()
    print(f"{rounds} rounds of {seconds:.0f} s per route, {threads} client threads")
    for name, values in rates.items():
        print(f"  {name:<18}{statistics.median(values):8.0f} requests/s (median)")
    ratio = statistics.median(ratios)
    print(
        f"  ratio             {ratio:8.3f} (per-round median; target >= {TARGET_RATIO})"
    )
    return ratio


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 * 1e3, p99 * 1e3


class ColdSender:
    """Threads sending keys never seen before, each key once, until stopped
    or out of keys; :attr:`sent` counts the answers (all must be 200)."""

    def __init__(self, port: int, keys: list[str], threads: int = 2) -> None:
        self._port = port
        self._keys = keys
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self._threads = [
            threading.Thread(target=self._run, args=(keys[n::threads],), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> ColdSender:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, keys: list[str]) -> None:
        connection = Connection(self._port, 15.0)
        try:
            for key in keys:
                if self._stop.is_set():
                    return
                result = connection.send(_bearer_case(key))
                with self._lock:
                    self.sent += 1
                    self.failed += result.status != 200
        finally:
            connection.close()


def cold_keys_latency(
    directory: Path, env: dict[str, str], key: str, cold: list[str], quick: bool
) -> None:
    rounds, seconds, threads = (2, 2.0, 4) if quick else (5, 3.0, 4)
    cached_case = _bearer_case(key)
    samples: dict[str, list[float]] = {"alone": [], "with cold keys": []}
    verified = failed = 0
    chunk = len(cold) // rounds
    with uvicorn(directory, "app", env) as port:
        pool = [Connection(port, 15.0) for _ in range(threads)]
        _rate(port, cached_case, 1.0, pool)
        for round_number in range(rounds):
            for phase in samples:
                cached = LoadClient(
                    port,
                    [([cached_case], 1.0)],
                    threads=threads,
                    duration=seconds,
                    connections=pool,
                )
                if phase == "alone":
                    results = cached.run()
                else:
                    start = round_number * chunk
                    with ColdSender(port, cold[start : start + chunk]) as sender:
                        results = cached.run()
                    verified += sender.sent
                    failed += sender.failed
                assert all(r.status == 200 for r in results)
                samples[phase] += [r.ended - r.started for r in results]
        for connection in pool:
            connection.close()
    print(
        f"{rounds} rounds of {seconds:.0f} s, {threads} client threads of cached keys"
    )
    for phase, latencies in samples.items():
        p50, p99 = _percentiles(latencies)
        print(
            f"  {phase:<16} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"
            f"   ({len(latencies) / (rounds * seconds):.0f} requests/s)"
        )
    print(f"  first verifications meanwhile: {verified} ({failed} not 200)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    print("\n== 1. pure ASGI middleware over a bare ASGI app, cached key ==")
    overhead(args.quick)

    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as tmp:
        directory = Path(tmp)
        (directory / "app.py").write_text(APP)
        url = f"sqlite:///{directory / 'keys.db'}"
        keys = KeyManager(SQLKeyStore(url))
        key = keys.create(PROJECT_ID, "bench").key
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC")},
            "BENCH_DATABASE_URL": url,
            "BENCH_KEY": key,
        }
        print("\n== 2. FastAPI: ApiKeyBearer vs HTTPBearer + dict, under uvicorn ==")
        throughput(directory, env, key, args.quick)

        count = 400 if args.quick else 2500
        print(f"\n(creating {count} keys never used, for the cold requests)")
        cold = [keys.create(PROJECT_ID, f"cold {n}").key for n in range(count)]
        keys.close()
        print("\n== 3. cached keys' latency while cold keys are verified ==")
        cold_keys_latency(directory, env, key, cold, args.quick)


if __name__ == "__main__":
    main()
