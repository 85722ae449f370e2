"""Rate limits per project (SPEC section 8): vemetric_auth.ratelimit.

The counting, the headers' values and the window edges run on ``memory://``
with an injected clock; sharing between processes and the outages (Redis
killed, restarted, frozen) run against the session's real ``redis-server``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import run_threads
from servers import find_free_port
from servers.plugin import require_redis
from servers.redis import RedisServer

from vemetric_auth import ApiKey
from vemetric_auth.ratelimit import (
    LIMIT_HEADER,
    RATE_LIMIT_HEADERS,
    REMAINING_HEADER,
    RESET_HEADER,
    RETRY_AFTER_HEADER,
    RateDecision,
    RateLimiter,
)

# A moment at the start of a window of every length used here (a whole day).
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
assert T0 % 86_400 == 0


def api_key(project_id: str = "proj_1", key_id: str = "key_1") -> ApiKey:
    return ApiKey(
        id=key_id,
        project_id=project_id,
        name="test",
        prefix="vem_abcdefgh...",
        created_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
    )


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limiter_at(clock: Clock, *args: Any, **kwargs: Any) -> RateLimiter:
    limiter = RateLimiter(*args, **kwargs)
    limiter._clock = clock
    return limiter


def hits(limiter: RateLimiter, record: ApiKey, count: int) -> list[RateDecision]:
    decisions = [limiter.hit(record) for _ in range(count)]
    assert all(d is not None for d in decisions)
    return [d for d in decisions if d is not None]


def remaining(decisions: list[RateDecision]) -> list[int]:
    return [d.remaining for d in decisions]


def allowed(decisions: list[RateDecision]) -> list[bool]:
    return [d.allowed for d in decisions]


# -- counting in memory -------------------------------------------------------


def test_counts_down_to_the_limit_then_refuses() -> None:
    limiter = limiter_at(Clock(), "3/minute")
    decisions = hits(limiter, api_key(), 5)
    assert allowed(decisions) == [True, True, True, False, False]
    assert remaining(decisions) == [2, 1, 0, 0, 0]
    assert {d.limit for d in decisions} == {3}


def test_100_per_minute_is_vemetrics_limit() -> None:
    limiter = limiter_at(Clock(), "100 per minute")
    decisions = hits(limiter, api_key(), 101)
    assert allowed(decisions) == [True] * 100 + [False]
    assert decisions[0].remaining == 99
    assert decisions[99].remaining == 0


def test_by_project_counts_all_keys_of_a_project_together() -> None:
    limiter = limiter_at(Clock(), "3/minute")
    first, second = api_key("proj_1", "key_1"), api_key("proj_1", "key_2")
    other = api_key("proj_2", "key_3")
    assert remaining(hits(limiter, first, 2)) == [2, 1]
    assert remaining(hits(limiter, second, 2)) == [0, 0]
    assert allowed(hits(limiter, second, 1)) == [False]
    assert remaining(hits(limiter, other, 1)) == [2]


def test_by_key_counts_each_key_on_its_own() -> None:
    limiter = limiter_at(Clock(), "3/minute", by="key")
    first, second = api_key("proj_1", "key_1"), api_key("proj_1", "key_2")
    assert remaining(hits(limiter, first, 3)) == [2, 1, 0]
    assert remaining(hits(limiter, second, 1)) == [2]
    assert allowed(hits(limiter, first, 1)) == [False]


def test_a_tier_callable_gets_the_key_and_sets_each_projects_limit() -> None:
    seen: list[ApiKey] = []

    def tier(record: ApiKey) -> str | None:
        seen.append(record)
        return {"free": "2/minute", "pro": "5 per minute"}.get(record.project_id)

    limiter = limiter_at(Clock(), tier)
    free, pro, internal = api_key("free"), api_key("pro"), api_key("internal")
    assert allowed(hits(limiter, free, 3)) == [True, True, False]
    assert [d.limit for d in hits(limiter, pro, 2)] == [5, 5]
    assert limiter.hit(internal) is None  # None: no limit, nothing counted
    assert seen[0] is free
    assert seen[-1] is internal


def test_tier_strings_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import vemetric_auth.ratelimit as ratelimit

    parsed: list[str] = []
    real = ratelimit.parse_many

    def counting(text: str) -> Any:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(ratelimit, "parse_many", counting)
    limiter = limiter_at(Clock(), lambda record: "1000/hour")
    hits(limiter, api_key("a"), 10)
    hits(limiter, api_key("b"), 10)
    assert parsed == ["1000/hour"]


def test_a_new_tier_starts_a_counter_of_its_own() -> None:
    tiers = {"proj_1": "2/minute"}
    limiter = limiter_at(Clock(), lambda record: tiers[record.project_id])
    assert allowed(hits(limiter, api_key(), 3)) == [True, True, False]
    tiers["proj_1"] = "10/minute"  # the project upgraded
    assert remaining(hits(limiter, api_key(), 1)) == [9]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param("lots", ValueError, id="not-a-limit"),
        pytest.param("0/minute", ValueError, id="zero"),
        pytest.param(100, TypeError, id="int"),
    ],
)
def test_a_tier_callable_returning_no_limit_string_raises(
    answer: object, error: type[Exception]
) -> None:
    limiter = RateLimiter(lambda record: answer)  # type: ignore[arg-type,return-value]
    with pytest.raises(error, match="the rate_limit callable returned"):
        limiter.hit(api_key())


def test_the_three_headers_and_their_values() -> None:
    clock = Clock(T0 + 15.5)
    limiter = limiter_at(clock, "3/minute")
    decision = limiter.hit(api_key())
    assert decision is not None
    assert decision.headers == [
        ("X-RateLimit-Limit", "3"),
        ("X-RateLimit-Remaining", "2"),
        ("X-RateLimit-Reset", str(int(T0) + 60)),
    ]
    assert RATE_LIMIT_HEADERS == (LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER)
    assert RETRY_AFTER_HEADER == "Retry-After"
    assert decision.retry_after == 45  # ceil(44.5)
    # A fresh list each time: a caller may append to it.
    decision.headers.append(("X", "y"))
    assert len(decision.headers) == 3


def test_a_decision_is_immutable() -> None:
    decision = RateLimiter("3/minute").hit(api_key())
    assert decision is not None
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]
    assert not hasattr(decision, "__dict__")


@pytest.mark.parametrize(
    ("offset", "reset", "retry_after"),
    [
        pytest.param(0.0, 60, 60, id="window-start"),
        pytest.param(0.5, 60, 60, id="half-second-in"),
        pytest.param(30.0, 60, 30, id="middle"),
        pytest.param(58.9, 60, 2, id="just-over-a-second-left"),
        pytest.param(59.0, 60, 1, id="one-second-left"),
        pytest.param(59.999, 60, 1, id="last-millisecond"),
        pytest.param(60.0, 120, 60, id="next-window-start"),
    ],
)
def test_reset_and_retry_after_at_the_window_edges(
    offset: float, reset: int, retry_after: int
) -> None:
    limiter = limiter_at(Clock(T0 + offset), "1/minute")
    first, refused = hits(limiter, api_key(), 2)
    assert (first.allowed, refused.allowed) == (True, False)
    for decision in (first, refused):
        assert decision.reset == int(T0) + reset
        assert decision.retry_after == retry_after


def test_the_count_starts_again_at_the_window_edge() -> None:
    clock = Clock(T0 + 59.999)
    limiter = limiter_at(clock, "2/minute")
    assert allowed(hits(limiter, api_key(), 3)) == [True, True, False]
    clock.now = T0 + 60.0
    decisions = hits(limiter, api_key(), 3)
    assert allowed(decisions) == [True, True, False]
    assert {d.reset for d in decisions} == {int(T0) + 120}


@pytest.mark.parametrize(
    ("limit", "period"),
    [
        pytest.param("5/second", 1, id="second"),
        pytest.param("5 per 2 minutes", 120, id="two-minutes"),
        pytest.param("5/hour", 3600, id="hour"),
        pytest.param("5/day", 86_400, id="day"),
    ],
)
def test_windows_are_aligned_to_the_clock(limit: str, period: int) -> None:
    limiter = limiter_at(Clock(T0 + period - 0.25), limit)
    decision = limiter.hit(api_key())
    assert decision is not None
    assert decision.reset == int(T0) + period
    assert decision.retry_after == 1


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
def test_the_other_limits_strategies(strategy: Any) -> None:
    limiter = RateLimiter("3/minute", strategy=strategy)
    before = time.time()
    decisions = hits(limiter, api_key(), 4)
    assert allowed(decisions) == [True, True, True, False]
    assert remaining(decisions)[-2:] == [0, 0]
    for decision in decisions:
        assert before < decision.reset <= time.time() + 121
        assert 1 <= decision.retry_after <= 121


def test_many_threads_never_get_more_than_the_limit() -> None:
    limiter = RateLimiter("300/hour")
    record = api_key()
    results: list[bool] = []

    def work(_: int) -> None:
        for _ in range(50):
            decision = limiter.hit(record)
            assert decision is not None
            results.append(decision.allowed)

    assert run_threads(work, 8) == []
    assert len(results) == 400
    assert 290 <= results.count(True) <= 300


# -- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"rate_limit": ""}, ValueError, "invalid rate limit", id="empty"),
        pytest.param(
            {"rate_limit": "100/fortnight"}, ValueError, "limits notation", id="unit"
        ),
        pytest.param({"rate_limit": "0/minute"}, ValueError, "at least 1", id="zero"),
        pytest.param(
            {"rate_limit": "1/second;100/minute"}, ValueError, "one limit", id="two"
        ),
        pytest.param({"rate_limit": 100}, TypeError, "rate_limit must be", id="int"),
        pytest.param({"rate_limit": None}, TypeError, "rate_limit must be", id="none"),
        pytest.param({"by": "team"}, ValueError, "by must be", id="by"),
        pytest.param({"by": 1}, ValueError, "by must be", id="by-int"),
        pytest.param({"strategy": "leaky-bucket"}, ValueError, "strategy", id="strat"),
        pytest.param(
            {"storage_uri": "ftp://host"}, ValueError, "unsupported", id="scheme"
        ),
        pytest.param(
            {"storage_uri": "localhost:6379"}, ValueError, "unsupported", id="no-scheme"
        ),
        pytest.param(
            {"storage_uri": "async+redis://localhost"},
            ValueError,
            "asyncio",
            id="async",
        ),
        pytest.param({"storage_uri": 6379}, TypeError, "storage_uri", id="uri-int"),
        pytest.param(
            {"storage_uri": "redis://localhost", "storage_options": [("a", 1)]},
            TypeError,
            "storage_options",
            id="options",
        ),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    kwargs.setdefault("rate_limit", "100/minute")
    with pytest.raises(error, match=message):
        RateLimiter(kwargs.pop("rate_limit"), **kwargs)


def test_a_storage_password_is_never_shown() -> None:
    secret = "s3cr3t-pa55"
    with pytest.raises(ValueError, match="unsupported") as raised:
        RateLimiter("1/minute", storage_uri=f"nosuch://user:{secret}@host:1")
    assert secret not in str(raised.value)
    limiter = RateLimiter("1/minute", storage_uri=f"redis://:{secret}@127.0.0.1:1/0")
    assert secret not in repr(limiter)
    assert "redis://" in repr(limiter)


def test_a_missing_redis_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "redis" else real(name, *args),
    )
    with pytest.raises(ImportError, match=r"pip install 'vemetric-auth\[redis\]'"):
        RateLimiter("1/minute", storage_uri="redis://localhost:6379")


def test_without_limits_the_module_names_the_ratelimit_extra() -> None:
    code = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "limits":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
import vemetric_auth  # the core still imports
import vemetric_auth.ratelimit
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), done.stderr
    assert "pip install 'vemetric-auth[ratelimit]'" in last


# -- a failing shared storage, simulated ------------------------------------------


class FailingStorage:
    """Stands for the shared storage: counts calls, raises while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = True
        self.calls = 0

    def incr(self, key: str, expiry: int) -> int:
        self.calls += 1
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Refused.")
        count: int = self.inner.incr(key, expiry)
        return count


class Ticker:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def failing() -> tuple[RateLimiter, FailingStorage, Ticker]:
    from limits.storage import MemoryStorage

    limiter = limiter_at(Clock(), "3/minute")
    storage = FailingStorage(MemoryStorage())
    ticker = Ticker()
    limiter._shared = storage
    limiter._monotonic = ticker
    limiter._retry_interval = 5.0
    return limiter, storage, ticker


def test_a_failing_storage_falls_back_to_memory_and_still_limits(
    failing: tuple[RateLimiter, FailingStorage, Ticker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter, storage, _ = failing
    caplog.set_level(logging.INFO, logger="vemetric_auth")
    decisions = hits(limiter, api_key(), 50)
    assert allowed(decisions) == [True] * 3 + [False] * 47
    assert remaining(decisions)[:4] == [2, 1, 0, 0]
    assert storage.calls == 1  # then not again before the retry interval
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ConnectionError" in warnings[0].getMessage()
    assert "memory" in warnings[0].getMessage()


def test_the_failed_storage_is_tried_again_every_interval_then_used(
    failing: tuple[RateLimiter, FailingStorage, Ticker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter, storage, ticker = failing
    caplog.set_level(logging.INFO, logger="vemetric_auth")
    hits(limiter, api_key(), 10)
    assert storage.calls == 1
    ticker.now += 4.9
    hits(limiter, api_key(), 10)
    assert storage.calls == 1
    ticker.now += 0.2  # 5.1 s after the failure: one request tries again
    hits(limiter, api_key(), 10)
    assert storage.calls == 2
    ticker.now += 5.1
    storage.down = False
    decisions = hits(limiter, api_key(), 4)
    assert storage.calls == 6  # back: every request counts there again
    assert remaining(decisions) == [2, 1, 0, 0]  # its own count, not memory's
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO]
    assert "answers again" in messages[1][1]
    # A second outage is a second warning.
    storage.down = True
    hits(limiter, api_key(), 3)
    assert [r.levelno for r in caplog.records][-1] == logging.WARNING
    assert len(caplog.records) == 3


def test_one_request_at_a_time_tries_the_failed_storage(
    failing: tuple[RateLimiter, FailingStorage, Ticker],
) -> None:
    limiter, storage, ticker = failing
    limiter.hit(api_key())
    ticker.now += 6
    entered = threading.Event()
    release = threading.Event()
    real_incr = storage.incr

    def slow_incr(key: str, expiry: int) -> int:
        entered.set()
        release.wait(10)
        return real_incr(key, expiry)

    storage.incr = slow_incr  # type: ignore[method-assign]
    prober = threading.Thread(target=limiter.hit, args=(api_key(),))
    prober.start()
    assert entered.wait(10)
    started = time.monotonic()
    decisions = hits(limiter, api_key(), 5)  # meanwhile: memory, no waiting
    assert time.monotonic() - started < 1
    assert len(decisions) == 5
    release.set()
    prober.join(10)
    assert storage.calls == 2


# -- a real Redis -------------------------------------------------------------------

SHARE_SCRIPT = """
import sys
from datetime import datetime, timezone

from vemetric_auth import ApiKey
from vemetric_auth.ratelimit import RateLimiter

url, now, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
limiter = RateLimiter("10/day", storage_uri=url)
limiter._clock = lambda: now
record = ApiKey(
    id="key_2", project_id="proj_1", name="other process",
    prefix="vem_zzzzzzzz...", created_at=datetime.now(timezone.utc),
)
print(" ".join(str(limiter.hit(record).remaining) for _ in range(count)))
"""


def hit_in_another_process(url: str, now: float, count: int) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", SHARE_SCRIPT, url, repr(now), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [int(word) for word in done.stdout.split()]


@pytest.mark.redis
def test_two_processes_share_counts_through_redis(redis_url: str) -> None:
    now = T0 + 100
    limiter = limiter_at(Clock(now), "10/day", storage_uri=redis_url)
    assert remaining(hits(limiter, api_key(), 4)) == [9, 8, 7, 6]
    assert hit_in_another_process(redis_url, now, 4) == [5, 4, 3, 2]
    decisions = hits(limiter, api_key(), 3)
    assert remaining(decisions) == [1, 0, 0]
    assert allowed(decisions) == [True, True, False]


@pytest.mark.redis
def test_one_redis_round_trip_per_request(
    redis_server: RedisServer, redis_url: str
) -> None:
    limiter = RateLimiter("1000/minute", storage_uri=redis_url)
    limiter.hit(api_key())  # loads the counting script once
    redis_server.reset_stats()
    hits(limiter, api_key(), 20)
    calls = redis_server.command_calls()
    # INCRBY and EXPIRE run inside the script, on the server: only EVALSHA
    # came from the client.
    assert calls["evalsha"] == 20
    assert set(calls) <= {"evalsha", "incrby", "expire", "config|resetstat"}


@pytest.mark.redis
@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
def test_the_other_strategies_on_redis(redis_url: str, strategy: Any) -> None:
    limiter = RateLimiter("3/minute", storage_uri=redis_url, strategy=strategy)
    decisions = hits(limiter, api_key(), 4)
    assert allowed(decisions) == [True, True, True, False]
    assert decisions[-1].remaining == 0


def hammer(
    limiters: list[RateLimiter], record: ApiKey, stop: threading.Event
) -> Callable[[int], None]:
    """A thread body: hit until *stop*, keeping every outcome."""
    outcomes: list[object] = []

    def work(n: int) -> None:
        limiter = limiters[n % len(limiters)]
        while not stop.is_set():
            started = time.monotonic()
            try:
                outcome: object = limiter.hit(record)
            except Exception as error:  # what the test must never see
                outcome = error
            outcomes.append((outcome, time.monotonic() - started))
            time.sleep(0.001)

    work.outcomes = outcomes  # type: ignore[attr-defined]
    return work


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_mid_traffic_then_restarted(
    redis_server: RedisServer,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="vemetric_auth")
    clock = Clock(T0 + 10)
    first = limiter_at(clock, "1000/day", storage_uri=redis_url)
    second = limiter_at(clock, "1000/day", storage_uri=redis_url)
    for limiter in (first, second):
        limiter._retry_interval = 0.3
    record = api_key()

    # Traffic from 4 threads over both limiters; Redis dies in the middle.
    stop = threading.Event()
    work = hammer([first, second], record, stop)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    redis_server.kill()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(10)
    outcomes = work.outcomes  # type: ignore[attr-defined]
    assert outcomes
    assert all(isinstance(outcome, RateDecision) for outcome, _ in outcomes)
    assert max(elapsed for _, elapsed in outcomes) < 1.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per limiter, not one per request

    # Still down: each process limits on its own, in memory.
    strict = limiter_at(clock, "5/day", storage_uri=redis_url)
    decisions = hits(strict, record, 8)
    assert allowed(decisions) == [True] * 5 + [False] * 3

    # Back on the same port (empty): sharing resumes within the interval.
    redis_server.start()
    time.sleep(0.4)
    hits(first, record, 1)
    hits(second, record, 1)
    assert remaining(hits(first, record, 1)) == [997]
    assert remaining(hits(second, record, 1)) == [996]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 2
    assert all("answers again" in r.getMessage() for r in infos)


@pytest.mark.redis
def test_a_frozen_redis_never_holds_a_request_for_long(
    redis_server: RedisServer, redis_url: str
) -> None:
    limiter = limiter_at(Clock(T0 + 10), "3/day", storage_uri=redis_url)
    limiter._retry_interval = 0.3
    assert remaining(hits(limiter, api_key(), 1)) == [2]
    redis_server.freeze()
    try:
        started = time.monotonic()
        first = limiter.hit(api_key())
        assert time.monotonic() - started < 1.0  # the socket timeout: 0.2 s
        started = time.monotonic()
        then = hits(limiter, api_key(), 5)
        assert time.monotonic() - started < 0.1  # memory, no more waiting
        assert first is not None
        assert allowed([first, *then]) == [True, True, True, False, False, False]
        time.sleep(0.35)
        started = time.monotonic()
        limiter.hit(api_key())  # the retry: bounded too
        assert time.monotonic() - started < 1.0
    finally:
        redis_server.thaw()
    time.sleep(0.35)
    limiter.hit(api_key())
    assert limiter._down_since is None


@pytest.mark.redis
def test_a_redis_down_at_start_up_is_an_outage_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="vemetric_auth")
    url = f"redis://127.0.0.1:{find_free_port()}/0"
    limiter = limiter_at(Clock(), "2/minute", storage_uri=url)
    started = time.monotonic()
    assert allowed(hits(limiter, api_key(), 3)) == [True, True, False]
    assert time.monotonic() - started < 1.0
    assert len(caplog.records) == 1


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisServer]:
    """A one-node Redis Cluster (its own server: cluster mode is a start option)."""
    require_redis()
    with RedisServer(cluster=True) as server:
        yield server


@pytest.mark.redis
@pytest.mark.parametrize(
    "fault", [pytest.param("freeze", id="frozen"), pytest.param("kill", id="killed")]
)
def test_redis_cluster_outages_are_bounded_and_recovered(
    redis_cluster: RedisServer, fault: str
) -> None:
    if not redis_cluster.is_running():
        redis_cluster.start()
    redis_cluster.flushall()
    limiter = limiter_at(Clock(T0 + 10), "3/day", storage_uri=redis_cluster.cluster_url)
    limiter._retry_interval = 0.3
    assert remaining(hits(limiter, api_key(), 1)) == [2]
    getattr(redis_cluster, fault)()
    try:
        started = time.monotonic()
        decisions = hits(limiter, api_key(), 4)
        assert time.monotonic() - started < 1.5
        assert allowed(decisions) == [True, True, True, False]
    finally:
        redis_cluster.thaw()
        if not redis_cluster.is_running():
            redis_cluster.start()
    time.sleep(0.35)
    limiter.hit(api_key())
    assert limiter._down_since is None


@pytest.mark.parametrize(
    ("ci", "outcome", "reason"),
    [
        pytest.param(
            "true", {"errors": 1}, "CI=true requires the tests", id="ci-fails"
        ),
        pytest.param("", {"skipped": 1}, "no Redis server binary", id="skips"),
    ],
)
def test_a_missing_redis_skips_the_test_but_fails_it_in_ci(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ci: str,
    outcome: dict[str, int],
    reason: str,
) -> None:
    empty = tmp_path / "no-binaries"
    empty.mkdir()
    monkeypatch.setenv("VEMETRIC_AUTH_REDIS_BIN", str(empty))
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile("def test_needs_redis(redis_url):\n    pass\n")
    result = pytester.runpytest("-rs", "-p", "servers.plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)
    assert reason in result.stdout.str()


# -- the in-memory counters, and fork ---------------------------------------------------


def test_memory_counts_of_past_windows_are_dropped() -> None:
    clock = Clock()
    limiter = limiter_at(clock, "5/minute", by="key")
    counts = limiter._local
    ticker = Ticker()
    counts._monotonic = ticker
    for minute in range(100):
        clock.now = T0 + 60 * minute
        ticker.now += 60
        for n in range(3):
            hits(limiter, api_key(key_id=f"key_{n}"), 2)
    # The live window's three counts, and those of the window before at most.
    assert len(counts) <= 6
    assert remaining(hits(limiter, api_key(key_id="key_0"), 1)) == [2]


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def fork_and_check(check: Callable[[], bool]) -> int:
    """Run *check* in a forked child; return its exit status (0: true)."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 2
        try:
            signal.alarm(10)  # a deadlocked child is killed, not waited for
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@needs_fork
@pytest.mark.parametrize(
    "lock",
    [
        pytest.param("_state_lock", id="outage-lock"),
        pytest.param("_probe_lock", id="retry-lock"),
        pytest.param("counts", id="counters-lock"),
    ],
)
def test_a_child_forked_while_a_thread_holds_a_lock_still_limits(
    failing: tuple[RateLimiter, FailingStorage, Ticker], lock: str
) -> None:
    """A pre-forking server forks while a thread of the parent is inside the
    limiter: the child's limiter counts, notices the outage, and returns to
    the shared storage."""
    limiter, storage, ticker = failing
    held = limiter._local._lock if lock == "counts" else getattr(limiter, lock)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with held:
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)

        def check() -> bool:
            down = hits(limiter, api_key(), 4)  # fails over: takes the locks
            ticker.now += 10
            storage.down = False
            back = hits(limiter, api_key(), 1)  # the retry: back to shared
            return (
                allowed(down) == [True, True, True, False]
                and limiter._down_since is None
                and remaining(back) == [2]
            )

        status = fork_and_check(check)
    finally:
        release.set()
        holder.join(10)
    assert status == 0
