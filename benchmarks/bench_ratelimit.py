"""Per-request cost of rate limits, in memory and on a real Redis, from the
limiter alone up to requests per second under gunicorn.

Run: ``.venv/bin/python benchmarks/bench_ratelimit.py [--quick]``

- ``memory://``: ``RateLimiter.hit`` against no limiter at all, and against
  what a naive use of ``limits`` costs (``FixedWindowRateLimiter.hit`` then
  ``get_window_stats`` for the headers), on one cached key.
- The WSGI middleware over a bare app, on a cached key: with a
  ``memory://`` limit against without (target: the limit adds at most 3 µs),
  and with a ``redis://`` limit.
- The ASGI middleware over a bare ASGI app, on a cached key: with a
  ``memory://`` limit (counted on the event loop) against without, driven
  directly as ``bench_asgi.py`` drives it (a coroutine that never suspends,
  stepped once, no event loop); with a ``redis://`` limit (counted on a
  worker thread) against without, one request after another on an asyncio
  loop; and the longest stall of that loop while a count waits on a frozen
  Redis (SIGSTOP) and 200 cached-key requests go on.
- ``redis://`` on loopback: Redis round trips per request, counted by the
  server (``MONITOR``), and microseconds per request, for the fixed window,
  the naive ``limits`` calls, the other strategies and the middleware.
- Flask, the same view: VemetricAuth alone, with its rate limit, and with
  Flask-Limiter limiting per project instead (its headers on), on the same
  storage, ``memory://`` and ``redis://``. Each request calls
  ``app.wsgi_app`` with a prebuilt environ, as ``bench_flask.py`` does.
- Requests per second under gunicorn (2 workers x 4 threads), the Flask
  example on SQLite with 20 projects: a Redis limit against no limit, two
  servers up at once and measured in interleaved rounds, the way
  ``bench_load.py`` measures auth against no auth; and the Redis round trips
  per request the server saw meanwhile.

Medians over interleaved rounds, so that the machine's noise falls on every
variant alike. Redis is a throwaway server from ``tests/servers/redis.py``
(the Redis parts are skipped, with a note, when ``redis-server`` is missing).
The limit is high enough never to refuse: the allowed path is the one every
request pays.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _timing import interleaved_us
from flask import Flask, g
from flask_limiter import Limiter
from limits import parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.test import EnvironBuilder

from vemetric_auth import ApiKey, ApiKeyMiddleware, InMemoryKeyStore, KeyManager
from vemetric_auth.asgi import ApiKeyMiddleware as AsgiApiKeyMiddleware
from vemetric_auth.flask import VemetricAuth
from vemetric_auth.ratelimit import RateLimiter

# The throwaway Redis of the test suite (tests/servers/redis.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import loadkit
from bench_load import requests_per_second
from loadkit import Checker, Connection, Report
from servers.redis import RedisServer, find_redis_bin

# High enough never to refuse: the allowed path is the one every request pays.
LIMIT = "1000000000/minute"

RECORD = ApiKey(
    id="key_bench",
    project_id="proj_bench",
    name="bench",
    prefix="vem_benchben...",
    created_at=datetime.now(timezone.utc),
)


def naive_limits(storage: MemoryStorage | RedisStorage) -> Callable[[], object]:
    """What a direct use of limits costs: hit, then the window's stats."""
    limiter = FixedWindowRateLimiter(storage)
    item = parse(LIMIT)

    def hit() -> object:
        limiter.hit(item, "proj_bench")
        return limiter.get_window_stats(item, "proj_bench")

    return hit


def bench_memory(number: int, repeat: int) -> None:
    print("\n== memory://, one cached key ==")
    fixed = RateLimiter(LIMIT)
    tiers = RateLimiter(lambda record: LIMIT)
    by_key = RateLimiter(LIMIT, by="key")
    storage = MemoryStorage()
    result = interleaved_us(
        {
            "no limiter": lambda: None,
            "RateLimiter.hit": lambda: fixed.hit(RECORD),
            "  tiers callable": lambda: tiers.hit(RECORD),
            "  by key": lambda: by_key.hit(RECORD),
            "MemoryStorage.incr": lambda: storage.incr("k/1", 60),
            "limits hit+stats": naive_limits(storage),
        },
        number=number,
        repeat=repeat,
    )
    for name, us in result.items():
        print(f"  {name:<22} {us:7.3f} us/request (median)")
    added = result["RateLimiter.hit"] - result["no limiter"]
    print(f"  the limiter adds       {added:7.3f} us/request (target <= 3 us)")


def round_trips(server: RedisServer, fn: Callable[[], object], count: int) -> float:
    """Commands the client sent per call of *fn*, as the server saw them.

    Counted with ``MONITOR``, which shows every command a client sends and,
    marked ``[0 lua]``, those a script runs inside the server (the INCRBY
    and EXPIRE of the fixed window's script): only the former are round
    trips.
    """
    fn()  # scripts are loaded once, on first use
    end = f"bench-end-{time.monotonic_ns()}"
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"MONITOR\r\n")
        reader = sock.makefile("rb")
        assert reader.readline() == b"+OK\r\n"
        for _ in range(count):
            fn()
        server.command("ECHO", end)  # the last line this monitor waits for
        sent = 0
        for line in reader:
            if end.encode() in line:
                break
            if b"[0 lua]" not in line:
                sent += 1
    return sent / count


def bench_redis(server: RedisServer, number: int, repeat: int) -> None:
    print("\n== redis:// on loopback (a throwaway redis-server) ==")
    fixed = RateLimiter(LIMIT, storage_uri=server.url)
    moving = RateLimiter(LIMIT, storage_uri=server.url, strategy="moving-window")
    sliding = RateLimiter(
        LIMIT, storage_uri=server.url, strategy="sliding-window-counter"
    )
    naive = naive_limits(RedisStorage(server.url))
    keys = cached_keys()
    limited = ApiKeyMiddleware(
        bare_app, keys, rate_limit=LIMIT, rate_limit_storage=server.url
    )
    plain = ApiKeyMiddleware(bare_app, keys)
    variants: dict[str, Callable[[], object]] = {
        "fixed window": lambda: fixed.hit(RECORD),
        "limits hit+stats": naive,
        "sliding-window-counter": lambda: sliding.hit(RECORD),
        "middleware, no limit": lambda: plain(ENVIRON, start_response),
        "middleware, redis limit": lambda: limited(ENVIRON, start_response),
    }
    for name, fn in variants.items():
        if name == "middleware, no limit":
            continue
        print(f"  {name:<24} {round_trips(server, fn, 200):5.2f} round trips/request")
    # The moving window keeps one entry per request: measured on fewer.
    print(
        f"  {'moving window':<24} "
        f"{round_trips(server, lambda: moving.hit(RECORD), 50):5.2f} "
        "round trips/request"
    )
    server.flushall()
    server.reset_stats()
    result = interleaved_us(variants, number=number, repeat=repeat)
    for name, us in result.items():
        print(f"  {name:<24} {us:7.1f} us/request (median)")
    added = result["middleware, redis limit"] - result["middleware, no limit"]
    print(f"  the redis limit adds     {added:7.1f} us/request")


# -- the WSGI middleware ------------------------------------------------------------------

KEY_HOLDER: dict[str, str] = {}


def cached_keys() -> KeyManager:
    """The benchmarks' key manager, its one key verified once (cached)."""
    keys = KeyManager(InMemoryKeyStore())
    issued = keys.create(RECORD.project_id, "bench")
    ENVIRON["HTTP_AUTHORIZATION"] = f"Bearer {issued.key}"
    KEY_HOLDER["key"] = issued.key
    keys.authenticate(issued.key)
    return keys


ENVIRON: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/project"}


def bare_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    return None


def bench_middleware(number: int, repeat: int) -> None:
    print("\n== ApiKeyMiddleware over a bare WSGI app, one cached key ==")
    keys = cached_keys()
    plain = ApiKeyMiddleware(bare_app, keys)
    limited = ApiKeyMiddleware(bare_app, keys, rate_limit=LIMIT)
    seen: list[list[Any]] = []
    limited(ENVIRON, lambda status, headers, exc_info=None: seen.append(headers))
    assert [name for name, _ in seen[0]][-3:] == [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ]
    result = interleaved_us(
        {
            "bare app": lambda: bare_app(ENVIRON, start_response),
            "middleware, no limit": lambda: plain(ENVIRON, start_response),
            "middleware, memory limit": lambda: limited(ENVIRON, start_response),
        },
        number=number,
        repeat=repeat,
    )
    for name, us in result.items():
        print(f"  {name:<26} {us:7.3f} us/request (median)")
    added = result["middleware, memory limit"] - result["middleware, no limit"]
    print(f"  the memory limit adds      {added:7.3f} us/request (target <= 3 us)")


# -- the ASGI middleware ------------------------------------------------------------------

_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
_BODY = {"type": "http.response.body", "body": b"ok"}


async def bare_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    raise RuntimeError("the call suspended: not the event loop's own path")


def asgi_scope() -> dict[str, Any]:
    """A scope as uvicorn makes it, the benchmarks' cached key in it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
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
            (b"authorization", f"Bearer {KEY_HOLDER['key']}".encode()),
        ],
        "state": {},
    }


def bench_asgi(number: int, repeat: int) -> None:
    print("\n== the ASGI middleware over a bare ASGI app, one cached key ==")
    keys = cached_keys()
    base = asgi_scope()
    plain = AsgiApiKeyMiddleware(bare_asgi_app, keys)
    limited = AsgiApiKeyMiddleware(bare_asgi_app, keys, rate_limit=LIMIT)
    started: list[Any] = []

    async def keep(message: Any) -> None:
        started.append(message)

    step(limited(dict(base), _receive, keep))
    assert [name for name, _ in started[0]["headers"]][-3:] == [
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
    ]
    result = interleaved_us(
        {
            "bare app": lambda: step(bare_asgi_app(dict(base), _receive, _send)),
            "middleware, no limit": lambda: step(plain(dict(base), _receive, _send)),
            "middleware, memory limit": lambda: step(
                limited(dict(base), _receive, _send)
            ),
        },
        number=number,
        repeat=repeat,
    )
    for name, us in result.items():
        print(f"  {name:<26} {us:7.3f} us/request (median)")
    added = result["middleware, memory limit"] - result["middleware, no limit"]
    print(f"  the memory limit adds      {added:7.3f} us/request (target <= 3 us)")


def bench_asgi_redis(server: RedisServer, number: int, repeat: int) -> None:
    """The ASGI middleware with a Redis limit: each count on a worker thread."""
    print("\n== the ASGI middleware, redis:// on loopback, one cached key ==")
    keys = cached_keys()
    base = asgi_scope()
    plain = AsgiApiKeyMiddleware(bare_asgi_app, keys)
    limited = AsgiApiKeyMiddleware(
        bare_asgi_app, keys, rate_limit=LIMIT, rate_limit_storage=server.url
    )

    async def batch(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(number):
            await app(dict(base), _receive, _send)
        return (time.perf_counter() - started) / number * 1e6

    async def rounds() -> dict[str, list[float]]:
        await batch(limited)  # the connection, the script loaded
        samples: dict[str, list[float]] = {"no limit": [], "redis limit": []}
        for _ in range(repeat):
            samples["no limit"].append(await batch(plain))
            samples["redis limit"].append(await batch(limited))
        return samples

    samples = asyncio.run(rounds())
    result = {name: statistics.median(values) for name, values in samples.items()}
    for name, us in result.items():
        print(f"  middleware, {name:<14} {us:7.1f} us/request (median, on a loop)")
    added = result["redis limit"] - result["no limit"]
    print(
        f"  the redis limit adds       {added:7.1f} us/request (thread hop + round trip)"
    )
    print(f"  frozen redis: {frozen_redis_stall(server, keys, base)}")


def frozen_redis_stall(server: RedisServer, keys: KeyManager, base: Any) -> str:
    """The event loop's longest stall while one count waits a second on a
    frozen Redis and 200 cached-key requests (their counts in memory, a
    limiter of their own) are answered."""
    on_redis = AsgiApiKeyMiddleware(
        bare_asgi_app,
        keys,
        rate_limit=LIMIT,
        rate_limit_storage=server.url,
        rate_limit_storage_options={"socket_timeout": 1.0},
    )
    in_memory = AsgiApiKeyMiddleware(bare_asgi_app, keys, rate_limit=LIMIT)

    async def run() -> tuple[float, float, float]:
        await on_redis(dict(base), _receive, _send)  # connected
        server.freeze()
        try:
            gaps: list[float] = []
            done = False

            async def tick() -> None:
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.ensure_future(tick())
            started = time.perf_counter()
            stuck = asyncio.ensure_future(on_redis(dict(base), _receive, _send))
            await asyncio.sleep(0.01)
            for _ in range(200):
                await in_memory(dict(base), _receive, _send)
                await asyncio.sleep(0)
            others = time.perf_counter() - started
            await stuck
            waited = time.perf_counter() - started
            done = True
            await ticker
        finally:
            server.thaw()
        return max(gaps), others, waited

    stall, others, waited = asyncio.run(run())
    return (
        f"the count waited {waited * 1000:.0f} ms; 200 other requests done in "
        f"{others * 1000:.0f} ms; the loop's longest stall {stall * 1000:.1f} ms"
    )


# -- Flask: VemetricAuth's limit against Flask-Limiter ------------------------------------


def flask_app(keys: KeyManager, limit: str | None, storage: str) -> Flask:
    """The same view, VemetricAuth's rate limit or none."""
    app = Flask(f"vemetric-{limit is not None}")
    app.config["VEMETRIC_AUTH_RATE_LIMIT"] = limit
    app.config["VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI"] = storage
    VemetricAuth(app, keys=keys)

    @app.get("/v1/project")
    def project() -> dict[str, str]:
        return {"project_id": g.project_id}

    return app


def flask_limiter_app(keys: KeyManager, storage: str) -> Flask:
    """The same view, VemetricAuth without a limit and Flask-Limiter counting
    per project, its X-RateLimit-* headers on (registered after VemetricAuth,
    so that its check runs once the key is verified)."""
    app = Flask("flask-limiter")
    VemetricAuth(app, keys=keys)
    Limiter(
        key_func=lambda: g.project_id,
        app=app,
        default_limits=[LIMIT],
        storage_uri=storage,
        strategy="fixed-window",
        headers_enabled=True,
    )

    @app.get("/v1/project")
    def project() -> dict[str, str]:
        return {"project_id": g.project_id}

    return app


def flask_request(app: Flask) -> Callable[[], object]:
    base = EnvironBuilder(
        path="/v1/project",
        headers={"Authorization": f"Bearer {KEY_HOLDER['key']}"},
    ).get_environ()
    wsgi_app = app.wsgi_app
    seen: list[str] = []
    body = wsgi_app(
        dict(base),
        lambda status, headers, exc_info=None: seen.extend(name for name, _ in headers),
    )
    getattr(body, "close", lambda: None)()
    assert "X-RateLimit-Remaining" in seen or app.name == "vemetric-False", app.name

    def one_request() -> object:
        body = wsgi_app(dict(base), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return body

    return one_request


def bench_flask(storages: dict[str, str], number: int, repeat: int) -> None:
    for label, storage in storages.items():
        print(f"\n== Flask, the same view, {label}, one cached key ==")
        keys = cached_keys()
        apps = {
            "VemetricAuth, no limit": flask_app(keys, None, storage),
            "VemetricAuth + its limit": flask_app(keys, LIMIT, storage),
            "VemetricAuth + Flask-Limiter": flask_limiter_app(keys, storage),
        }
        result = interleaved_us(
            {name: flask_request(app) for name, app in apps.items()},
            number=number,
            repeat=repeat,
        )
        for name, us in result.items():
            print(f"  {name:<30} {us:7.1f} us/request (median)")
        base = result["VemetricAuth, no limit"]
        ours = result["VemetricAuth + its limit"] - base
        theirs = result["VemetricAuth + Flask-Limiter"] - base
        print(
            f"  the limit adds: ours {ours:.1f} us, Flask-Limiter's {theirs:.1f} us; "
            f"requests: ours / Flask-Limiter = "
            f"{result['VemetricAuth + its limit'] / result['VemetricAuth + Flask-Limiter']:.2f}"
        )


# -- gunicorn --------------------------------------------------------------------------------


# Commands a Redis script runs inside the server (limits' and ours): not
# round trips. Nor is the benchmark's own reset of the statistics.
_SERVER_SIDE = {"incrby", "expire", "config|resetstat"}


def bench_gunicorn(server: RedisServer, rounds: int, seconds: float) -> int:
    """Requests per second under gunicorn: no limit, our Redis limit, and
    Flask-Limiter's on the same Redis.

    :returns: the number of answers that were not the contract's.
    """
    print(
        "\n== gunicorn (2 workers x 4 threads), the Flask example on SQLite, "
        "8 client threads =="
    )
    if not loadkit.gunicorn_available():
        print("  skipped: gunicorn is not installed")
        return 0
    report = Report()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = f"sqlite:///{workdir / 'bench.db'}"
        dataset = loadkit.prepare_dataset(url)
        checker = Checker(dataset)
        cases = loadkit.valid_cases(dataset)
        servers = {
            "no limit": stack.enter_context(
                loadkit.running_server(loadkit.GUNICORN, url, workdir / "unlimited")
            ),
            "redis limit": stack.enter_context(
                loadkit.running_server(
                    loadkit.GUNICORN,
                    url,
                    workdir / "limited",
                    rate_limit=LIMIT,
                    rate_limit_storage=server.url,
                )
            ),
            "Flask-Limiter": stack.enter_context(
                loadkit.running_server(
                    loadkit.GUNICORN,
                    url,
                    workdir / "flask-limiter",
                    rate_limit=LIMIT,
                    rate_limit_storage=server.url,
                    flask_limiter=True,
                )
            ),
        }
        connections: dict[str, list[Connection]] = {}
        for name, running in servers.items():
            # Warm-up: every key verified in every worker.
            report.merge(checker.check(loadkit.send_each(running.port, cases * 4)))
            connections[name] = [
                Connection(running.port, timeout=15.0) for _ in range(8)
            ]
            stack.callback(lambda cs=connections[name]: [c.close() for c in cs])
            report.merge(
                requests_per_second(connections[name], cases, checker, 1.0, seed=0)[1]
            )
        figures: dict[str, list[float]] = {name: [] for name in connections}
        ratios: dict[str, list[float]] = {"no limit": [], "Flask-Limiter": []}
        sent = {"redis limit": 0, "Flask-Limiter": 0}
        answered = {"redis limit": 0, "Flask-Limiter": 0}
        for round_number in range(rounds):
            # Each round in another order, so that no server is always first.
            names = list(connections)
            shift = round_number % len(names)
            names = names[shift:] + names[:shift]
            if round_number % 2:
                names.reverse()
            rps: dict[str, float] = {}
            for name in names:
                server.reset_stats()
                rps[name], checked = requests_per_second(
                    connections[name], cases, checker, seconds, round_number
                )
                report.merge(checked)
                figures[name].append(rps[name])
                if name in sent:
                    calls = server.command_calls()
                    sent[name] += sum(
                        n for command, n in calls.items() if command not in _SERVER_SIDE
                    )
                    answered[name] += checked.total
            for other, values in ratios.items():
                values.append(rps["redis limit"] / rps[other])
        for running in servers.values():
            if len(running.booted_workers()) != 2:
                raise RuntimeError(
                    f"a gunicorn worker restarted:\n{running.log_tail()}"
                )
    for name, values in figures.items():
        print(
            f"  {name:<14} {statistics.median(values):8.0f} requests/s "
            f"(median of {rounds} rounds of {seconds:g} s)"
        )
    for other, values in ratios.items():
        print(
            f"  redis limit / {other}: {statistics.median(values):.2f} "
            f"({min(values):.2f}-{max(values):.2f})"
        )
    for name, count in sent.items():
        print(f"  {name}: {count / answered[name]:.2f} redis round trips per request")
    print(f"  {report.total} answers checked, {len(report.problems)} wrong")
    if report.problems:
        print(report.summary())
    return len(report.problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    number, repeat = (5_000, 5) if args.quick else (50_000, 15)
    flask_number = 1_000 if args.quick else 5_000
    redis_number = 200 if args.quick else 1_000
    rounds, seconds = (5, 1.0) if args.quick else (11, 2.0)
    print(
        f"python {sys.version.split()[0]}; memory: batches of {number} calls, "
        f"Flask: {flask_number}, redis: {redis_number}; {repeat} interleaved rounds"
    )
    bench_memory(number, repeat)
    bench_middleware(number, repeat)
    bench_asgi(number, repeat)
    if find_redis_bin() is None:
        print("\nredis: skipped, no redis-server (scripts/ensure-redis.sh installs it)")
        bench_flask({"memory://": "memory://"}, flask_number, repeat)
        return 0
    with RedisServer() as server:
        bench_redis(server, redis_number, repeat)
        bench_asgi_redis(server, redis_number, repeat)
        bench_flask(
            {"memory://": "memory://", "redis:// on loopback": server.url},
            flask_number,
            repeat,
        )
        wrong = bench_gunicorn(server, rounds, seconds)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
