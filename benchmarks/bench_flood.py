"""Floods against one process: do they fail legitimate keys?

- **Random-key flood**: many client threads send random well-formed keys
  (each a lookup of an unknown prefix) through :class:`ApiKeyMiddleware` to
  a store that takes a few milliseconds a call, while one legitimate client
  uses one key with ``cache_ttl=1``, so its entry goes stale every second.
  Counted: the legitimate answers that are not 200, and their latency.
- **Wrong-secret flood**: 200 and 1,000 threads send wrong secrets for one
  known prefix (each an argon2 run, default parameters); meanwhile five
  other keys are used for the first time, one after the other. Measured:
  their first-verification latency, beside one cold verification alone;
  also the argon2 peak concurrency, resident memory and a cached key's
  latency.

``--before REF`` runs the same measures on the package as of the git commit
*REF* (say, the last one before the change feed), in a child process, and
prints both.

``--server`` measures the random-key flood on a real server instead:
gunicorn (gthread worker, 2 workers of enough threads for every connection)
serving the Flask example (``examples/flask_app.py``, through
``benchmarks/loadkit.py``) on a throwaway PostgreSQL, with ``cache_ttl=1``.
600 client threads, each on one kept-alive connection, send ``GET
/v1/project`` with a new random well-formed key each time, as fast as they
are answered; meanwhile one legitimate client sends its one key in a loop,
each request on a new connection (so that both workers serve it). Printed:
the legitimate requests, their answers by status (those not 200 are the
figure), their p50/p99 latency, the attackers' requests a second and their
answers, the load average and the CPU the server and the client used; and,
from each worker twice a second, the age of its last read of the change
feed (an entry stale past ``cache_ttl`` is served while that age is below
``cache_ttl``) and whether its key store's connection pool was all checked
out. ``--db-latency MS`` makes every SQL statement of the server wait that
long before it is sent (a database a network away, or one slowed by the
flood): on a local PostgreSQL the server's CPU fills before the store. With
``--before REF``, the server runs the package of commit *REF* first (put
first on its ``PYTHONPATH``), then this one, on the same PostgreSQL.

Run: ``.venv/bin/python benchmarks/bench_flood.py [--quick] [--before REF]``
or ``.venv/bin/python benchmarks/bench_flood.py --server [--clients 600]
[--seconds 25] [--before REF]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager
from vemetric_auth.hashing import DEFAULT_PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def random_key(rng: random.Random) -> str:
    return "vem_" + "".join(rng.choice(_ALPHABET) for _ in range(32))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class SlowStore(InMemoryKeyStore):
    """Every call takes *delay* seconds (outside the lock): a database a
    network away, or one slowed by the flood itself."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def get(self, key_id: str) -> Any:
        time.sleep(self.delay)
        return super().get(key_id)

    def find_by_prefix(self, prefix: str) -> Any:
        time.sleep(self.delay)
        return super().find_by_prefix(prefix)


if hasattr(InMemoryKeyStore, "changes_since"):
    # The change feed is slowed as much (absent from packages before it).
    def _slow_changes_since(self: SlowStore, cursor: int | None) -> Any:
        time.sleep(self.delay)
        return InMemoryKeyStore.changes_since(self, cursor)  # type: ignore[attr-defined]

    SlowStore.changes_since = _slow_changes_since  # type: ignore[attr-defined]


class WatchedHasher(PasswordHasher):
    """The default parameters; counts verifications and the most at once."""

    def __init__(self) -> None:
        p = DEFAULT_PARAMETERS
        super().__init__(
            p.time_cost, p.memory_cost, p.parallelism, p.hash_len, p.salt_len
        )
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.count = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.running += 1
            self.count += 1
            self.peak = max(self.peak, self.running)
        try:
            return super().verify(hash, password)
        finally:
            with self._lock:
                self.running -= 1


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def call(guarded: Any, key: str) -> str:
    status: list[str] = []
    guarded(
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_AUTHORIZATION": "Bearer " + key,
        },
        lambda s, h, e=None: status.append(s),
    )
    return status[0][:3]


class Flood:
    """*count* threads calling ``attack(rng)`` until stopped; counts answers."""

    def __init__(self, count: int, attack: Any) -> None:
        self.answers: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._attack = attack
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True)
            for n in range(count)
        ]

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        while not self._stop.is_set():
            answer = self._attack(rng)
            with self._lock:
                self.answers[answer] += 1

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


def random_key_flood(clients: int, seconds: float, delay: float) -> dict[str, Any]:
    store = SlowStore(delay)
    keys = KeyManager(
        store, hasher=PasswordHasher.from_parameters(_cheap()), cache_ttl=1
    )
    guarded = ApiKeyMiddleware(app, keys)
    legit = keys.create("proj_legit", "legit").key
    assert call(guarded, legit) == "200"
    answers: Counter[str] = Counter()
    latencies: list[float] = []
    with Flood(clients, lambda rng: call(guarded, random_key(rng))) as flood:
        time.sleep(1.0)  # the flood fills the store threads and their backlog
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.perf_counter()
            answers[call(guarded, legit)] += 1
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    keys.close()
    return {
        "legit": dict(answers),
        "legit_p50_ms": statistics.median(latencies) * 1000,
        "legit_p99_ms": percentile(latencies, 99) * 1000,
        "flood": dict(flood.answers),
    }


def _cheap() -> Any:
    from argon2 import profiles

    return profiles.CHEAPEST


def wrong_secret_flood(attackers: int, ramp: float) -> dict[str, Any]:
    hasher = WatchedHasher()
    keys = KeyManager(InMemoryKeyStore(), hasher=hasher)
    guarded = ApiKeyMiddleware(app, keys)
    target = keys.create("proj_target", "attacked").key
    cached = keys.create("proj_cached", "cached").key
    assert call(guarded, cached) == "200"
    cold = []
    for n in range(3):
        fresh = keys.create("proj_cold", f"cold {n}").key
        started = time.perf_counter()
        assert call(guarded, fresh) == "200"
        cold.append(time.perf_counter() - started)
    others = [keys.create("proj_other", f"other {n}").key for n in range(5)]
    rss_before = rss_mib()

    def attack(rng: random.Random) -> str:
        return call(guarded, target[:12] + random_key(rng)[12:])

    first_uses: list[float] = []
    statuses: list[str] = []

    with Flood(attackers, attack) as flood:
        time.sleep(ramp)  # the wrong secrets queue up for argon2
        cached_us = []
        for _ in range(2000):
            started = time.perf_counter()
            call(guarded, cached)
            cached_us.append((time.perf_counter() - started) * 1e6)
        for key in others:  # one at a time: each waits behind the flood only
            started = time.perf_counter()
            statuses.append(call(guarded, key))
            first_uses.append(time.perf_counter() - started)
            time.sleep(0.05)
        rss_during = rss_mib()
    keys.close()
    return {
        "cold_ms": statistics.median(cold) * 1000,
        "first_use_p50_ms": statistics.median(first_uses) * 1000,
        "first_use_max_ms": max(first_uses) * 1000,
        "first_use_statuses": dict(Counter(statuses)),
        "argon2_peak": hasher.peak,
        "argon2_bound": keys.max_verifications,
        "rss_before_mib": rss_before,
        "rss_during_mib": rss_during,
        "cached_us_p50": statistics.median(cached_us),
        "flood": dict(flood.answers),
    }


def run_all(quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 10.0
    results: dict[str, Any] = {}
    for clients in (300, 600):
        results[f"random-{clients}"] = random_key_flood(clients, seconds, delay=0.005)
    for attackers in (200, 1000):
        results[f"wrong-{attackers}"] = wrong_secret_flood(attackers, ramp=2.0)
    return results


def extract_package(ref: str, directory: str) -> None:
    """Put the ``vemetric_auth`` package as of git commit *ref* in *directory*."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "vemetric_auth"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)


def before(ref: str, quick: bool) -> dict[str, Any]:
    """:func:`run_all` on the package as of *ref*, in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        extract_package(ref, tmp)
        env = dict(os.environ, PYTHONPATH=tmp)
        command = [sys.executable, __file__, "--child"] + (["--quick"] if quick else [])
        out = subprocess.run(
            command, env=env, check=True, capture_output=True, text=True
        ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


# -- the random-key flood against a real server ----------------------------------


def load_average() -> float:
    """The machine's one-minute load average (other jobs count too)."""
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process *pid* has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerFlood:
    """*clients* threads, each on one kept-alive connection to *port*, sending
    ``GET /v1/project`` with a new random well-formed key each time, as fast
    as they are answered. Counts the answers that end within the window
    opened by :meth:`measure` and closed by :meth:`stop`."""

    def __init__(self, port: int, clients: int, timeout: float) -> None:
        self._port = port
        self._timeout = timeout
        self._stop = threading.Event()
        self.window = (float("inf"), float("inf"))
        self._answers: list[Counter[str]] = [Counter() for _ in range(clients)]
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True)
            for n in range(clients)
        ]

    def _run(self, n: int) -> None:
        import loadkit

        rng = random.Random(n)
        answers = self._answers[n]
        connection = loadkit.Connection(self._port, self._timeout)
        try:
            while not self._stop.is_set():
                case = loadkit.Case(
                    "unknown",
                    "/v1/project",
                    (("Authorization", f"Bearer {random_key(rng)}"),),
                    loadkit.INVALID,
                )
                result = connection.send(case)
                start, end = self.window
                if start <= result.ended <= end:
                    answers[_answer(result)] += 1
                if result.error is not None:
                    time.sleep(0.05)  # refused or cut off: no busy loop
        finally:
            connection.close()

    def start(self) -> ServerFlood:
        for thread in self._threads:
            thread.start()
        return self

    def measure(self) -> None:
        self.window = (time.monotonic(), float("inf"))

    def stop(self) -> None:
        self.window = (self.window[0], time.monotonic())
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout + 10)

    @property
    def answers(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for answers in self._answers:
            total.update(answers)
        return total


def _answer(result: Any) -> str:
    """A status, or why there was none (the exception's class)."""
    if result.error is not None:
        return "no answer: " + str(result.error).split("(", 1)[0]
    return str(result.status)


def server_flood(
    database_url: str,
    workdir: Path,
    *,
    clients: int,
    seconds: float,
    workers: int,
    threads: int,
    ramp: float = 3.0,
    timeout: float = 30.0,
    package: str | None = None,
    db_latency: float | None = None,
) -> dict[str, Any]:
    """The random-key flood on gunicorn over *database_url* (``cache_ttl=1``),
    serving the ``vemetric_auth`` found in directory *package* if given."""
    import loadkit

    dataset = loadkit.prepare_dataset(
        database_url, projects=1, keys_per_project=1, revoked=0, orphans=0
    )
    checker = loadkit.Checker(dataset, cache_ttl=1.0)
    legit = dataset.valid[0]
    case = loadkit.Case(
        "valid",
        "/v1/project",
        (("Authorization", f"Bearer {legit.key}"),),
        loadkit.PROJECT,
        legit.project_id,
        legit.key_id,
        touches_store=True,
    )

    def send_legit() -> Any:
        # A new connection each time: both workers serve the key.
        connection = loadkit.Connection(port, timeout)
        try:
            return connection.send(case)
        finally:
            connection.close()

    with loadkit.running_server(
        loadkit.GUNICORN,
        database_url,
        workdir,
        cache_ttl=1.0,
        workers=workers,
        threads=threads,
        pythonpath=package,
        db_latency=db_latency,
        watch=True,
    ) as server:
        port = server.port
        pids = server.booted_workers()
        for _ in range(4 * workers):  # cached by every worker before the flood
            warm = send_legit()
            if checker.problem(warm) is not None:
                raise RuntimeError(f"legitimate key refused before the flood: {warm}")
        flood = ServerFlood(port, clients, timeout).start()
        try:
            time.sleep(ramp)  # every attacker connected and sending
            answers: Counter[str] = Counter()
            wrong: Counter[str] = Counter()
            latencies: list[float] = []
            loads = [load_average()]
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            client_before = time.process_time()
            flood.measure()
            log_from = len(server.log())
            started = time.monotonic()
            halfway = started + seconds / 2
            while time.monotonic() < started + seconds:
                result = send_legit()
                answers[_answer(result)] += 1
                latencies.append(result.ended - result.started)
                problem = checker.problem(result)
                if problem is not None:
                    wrong[problem[:120]] += 1
                if halfway and time.monotonic() >= halfway:
                    loads.append(load_average())
                    halfway = 0.0
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            server_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            client_cpu = time.process_time() - client_before
            loads.append(load_average())
        finally:
            flood.stop()
        restarted = len(server.booted_workers()) - workers
        during = server.log()[log_from:]
        # gunicorn's own lines start with "[time]"; the library's warnings
        # reach stderr bare (Python's last-resort handler).
        log_lines = Counter(
            line[:160]
            for line in during.splitlines()
            if line.strip()
            and not line.startswith("[")
            and not loadkit.WATCH_LINE.match(line)
        )
        watched = [
            (float(age), int(out), int(size))
            for _, age, out, size in loadkit.WATCH_LINE.findall(during)
        ]
    attackers = flood.answers
    return {
        "legit": dict(answers),
        "legit_wrong": dict(wrong),
        "legit_p50_ms": statistics.median(latencies) * 1000,
        "legit_p99_ms": percentile(latencies, 99) * 1000,
        "legit_max_ms": max(latencies) * 1000,
        "seconds": elapsed,
        "flood": dict(attackers),
        "flood_per_s": sum(attackers.values()) / elapsed,
        "load": loads,
        "server_cpu": server_cpu / elapsed,
        "client_cpu": client_cpu / elapsed,
        "restarted_workers": restarted,
        "server_log": dict(log_lines.most_common(5)),
        "feed_ages": [age for age, _, _ in watched if age >= 0],
        "pool_full": sum(out >= size for _, out, size in watched),
        "pool_samples": len(watched),
    }


def run_server(args: argparse.Namespace) -> None:
    """The random-key flood on real servers: before *args.before* if given,
    then now, on one throwaway PostgreSQL."""
    import loadkit

    sys.path.insert(0, str(ROOT / "tests"))
    from servers.postgres import PostgresServer, find_pg_bin

    if not loadkit.gunicorn_available():
        raise SystemExit("gunicorn is not installed: pip install gunicorn")
    if find_pg_bin() is None:
        raise SystemExit("no PostgreSQL binaries: run scripts/ensure-postgres.sh")
    threads = args.threads or -(-args.clients // args.workers) + 8
    setting = (
        f"gunicorn gthread {args.workers} workers x {threads} threads, PostgreSQL, "
        f"cache_ttl=1; {args.clients} attacker connections, {args.seconds:.0f} s"
    )
    if args.db_latency:
        setting += f"; {args.db_latency:g} ms added to every SQL statement"
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres:
        runs: list[tuple[str, str | None]] = []
        if args.before:
            old = os.path.join(tmp, "before")
            os.mkdir(old)
            extract_package(args.before, old)
            runs.append((f"before ({args.before})", old))
        runs.append(("now", None))
        for label, package in runs:
            served = _served_package(package)
            url = postgres.create_database(f"flood_{os.urandom(4).hex()}")
            result = server_flood(
                url,
                Path(tmp) / os.urandom(4).hex(),
                clients=args.clients,
                seconds=args.seconds,
                workers=args.workers,
                threads=threads,
                package=package,
                db_latency=args.db_latency / 1000 if args.db_latency else None,
            )
            show_server(f"{label}: {setting}; serving {served}", result)


def _served_package(package: str | None) -> str:
    """Where the server's interpreter finds ``vemetric_auth`` with *package*
    first on its path."""
    env = dict(os.environ)
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [package, *filter(None, [env.get("PYTHONPATH")])]
        )
    found = subprocess.run(
        [sys.executable, "-c", "import vemetric_auth; print(vemetric_auth.__file__)"],
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if package is not None and not found.startswith(package):
        raise RuntimeError(f"the server would import {found}, not {package}")
    return str(Path(found).parent)


def show_server(label: str, r: dict[str, Any]) -> None:
    legit = r["legit"]
    bad = sum(n for status, n in legit.items() if status != "200")
    loads = " / ".join(f"{load:.2f}" for load in r["load"])
    print(f"== {label}")
    print(
        f"  legitimate: {sum(legit.values())} sent, NOT 200: {bad} {legit}; "
        f"p50 {r['legit_p50_ms']:.1f} ms, p99 {r['legit_p99_ms']:.1f} ms, "
        f"max {r['legit_max_ms']:.1f} ms"
    )
    if r["legit_wrong"]:
        print(f"  legitimate answers wrong: {r['legit_wrong']}")
    print(
        f"  attackers: {sum(r['flood'].values())} answers in {r['seconds']:.1f} s "
        f"= {r['flood_per_s']:.0f}/s {r['flood']}"
    )
    print(
        f"  load average (1 min) start / middle / end: {loads}; CPU: server "
        f"workers {r['server_cpu']:.2f} cores, client {r['client_cpu']:.2f} "
        f"cores; workers restarted: {r['restarted_workers']}"
    )
    ages = r["feed_ages"]
    if ages:
        late = sum(age >= 1.0 for age in ages)
        print(
            f"  change feed last read: median {statistics.median(ages):.2f} s ago, "
            f"max {max(ages):.2f} s; older than cache_ttl (1 s) in {late} of "
            f"{len(ages)} samples"
        )
    else:
        print("  change feed: not read by this package's manager")
    print(
        f"  key store's connection pool all checked out in {r['pool_full']} of "
        f"{r['pool_samples']} samples"
    )
    for line, count in r["server_log"].items():
        print(f"  server log x{count}: {line}")


def show(label: str, results: dict[str, Any]) -> None:
    print(f"== {label}")
    for name, r in results.items():
        if name.startswith("random"):
            legit = r["legit"]
            bad = sum(n for status, n in legit.items() if status != "200")
            print(
                f"  {name:12} legit answers not 200: {bad} of {sum(legit.values())} "
                f"{legit}; legit p50 {r['legit_p50_ms']:.1f} ms, "
                f"p99 {r['legit_p99_ms']:.1f} ms; flood {r['flood']}"
            )
        else:
            print(
                f"  {name:12} first use of another key: p50 "
                f"{r['first_use_p50_ms']:.0f} ms, max {r['first_use_max_ms']:.0f} ms "
                f"{r['first_use_statuses']} (one cold verification alone: "
                f"{r['cold_ms']:.0f} ms); argon2 peak {r['argon2_peak']} "
                f"(bound {r['argon2_bound']}); RSS {r['rss_before_mib']:.0f} -> "
                f"{r['rss_during_mib']:.0f} MiB; cached key "
                f"{r['cached_us_p50']:.1f} us; flood {r['flood']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--before", metavar="REF", help="also measure this commit")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--server", action="store_true", help="the random-key flood on gunicorn"
    )
    parser.add_argument("--clients", type=int, default=600, help="with --server")
    parser.add_argument("--seconds", type=float, default=25.0, help="with --server")
    parser.add_argument("--workers", type=int, default=2, help="with --server")
    parser.add_argument(
        "--db-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --server: milliseconds added to every SQL statement",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="with --server: threads per worker (default: every connection one)",
    )
    args = parser.parse_args()
    if args.server:
        run_server(args)
        return
    if args.child:
        print(json.dumps(run_all(args.quick)))
        return
    if args.before:
        show(f"before ({args.before})", before(args.before, args.quick))
    show("now", run_all(args.quick))


if __name__ == "__main__":
    main()
