"""Per-request cost of ApiKeyMiddleware, cold verification, and argon2 counts.

The cached-key overhead is measured twice in one interleaved run: for a key
without expiry on a store that records no last use, and for a key with an
expiry on a store that records last use (the key lifecycle on).

Run: ``.venv/bin/python benchmarks/bench_middleware.py [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from _timing import interleaved_us
from argon2 import PasswordHasher

from vemetric_auth import (
    ApiKey,
    ApiKeyMiddleware,
    InMemoryKeyStore,
    KeyManager,
    generate_key,
)
from vemetric_auth.hashing import DEFAULT_PARAMETERS


class CountingHasher(PasswordHasher):
    verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        CountingHasher.verifications += 1
        return super().verify(hash, password)


class SixMethodStore:
    """The in-memory store seen through the six methods of KeyStore only: no
    last use is recorded (as with a store written for an earlier release)."""

    def __init__(self) -> None:
        self.inner = InMemoryKeyStore()

    def add(self, record: ApiKey, key_hash: str) -> None:
        self.inner.add(record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        return self.inner.get(key_id)

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        return self.inner.find_by_prefix(prefix)

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        return self.inner.list(project_id, include_revoked=include_revoked)

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        return self.inner.revoke(key_id, revoked_at=revoked_at, revoked_by=revoked_by)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self.inner.set_hash(key_id, key_hash)


def bare_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    number, repeat = (5_000, 5) if args.quick else (50_000, 15)

    store = InMemoryKeyStore()
    hasher = CountingHasher.from_parameters(DEFAULT_PARAMETERS)
    keys = KeyManager(store, hasher=hasher)
    issued = keys.create("proj_bench", "bench")
    guarded = ApiKeyMiddleware(bare_app, keys)

    def environ(header: str | None) -> dict[str, Any]:
        env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/project"}
        if header is not None:
            env["HTTP_AUTHORIZATION"] = header
        return env

    good = environ("Bearer " + issued.key)
    guarded(good, start_response)  # the one cold verification

    # The same with expiry and last use: a key that expires, on a store
    # that records last use (its stamp is taken on the first cached use).
    lifecycle_keys = KeyManager(InMemoryKeyStore(), hasher=hasher)
    expiring = lifecycle_keys.create(
        "proj_bench",
        "bench, expiring",
        expires_at=datetime.now(timezone.utc) + timedelta(days=90),
    )
    lifecycle_guarded = ApiKeyMiddleware(bare_app, lifecycle_keys)
    expiring_env = environ("Bearer " + expiring.key)
    lifecycle_guarded(expiring_env, start_response)
    lifecycle_guarded(expiring_env, start_response)
    # Without: a key that never expires, on a store that records no last use.
    plain_keys = KeyManager(SixMethodStore(), hasher=hasher)
    plain = plain_keys.create("proj_bench", "bench, plain")
    plain_guarded = ApiKeyMiddleware(bare_app, plain_keys)
    plain_env = environ("Bearer " + plain.key)
    plain_guarded(plain_env, start_response)
    plain_guarded(plain_env, start_response)

    print(
        f"python {sys.version.split()[0]}; batches of {number} calls, {repeat} rounds"
    )
    print("\n== cached key: middleware over a bare WSGI app ==")
    result = interleaved_us(
        {
            "bare app": lambda: bare_app(good, start_response),
            "middleware": lambda: guarded(good, start_response),
            "middleware, plain": lambda: plain_guarded(plain_env, start_response),
            "middleware, lifecycle": lambda: lifecycle_guarded(
                expiring_env, start_response
            ),
            "gate.authenticate": lambda: guarded.gate.authenticate(good),
            "keys.authenticate": lambda: keys.authenticate(issued.key),
        },
        number=number,
        repeat=repeat,
    )
    for name, us in result.items():
        print(f"  {name:<22} {us:7.3f} us/request (median)")
    for label, name in (
        ("without expiry, last use", "middleware, plain"),
        ("with expiry and last use", "middleware, lifecycle"),
    ):
        overhead = result[name] - result["bare app"]
        print(f"  overhead {label:<26} {overhead:6.3f} us/request (target <= 2.5 us)")
    lifecycle_keys.close()
    plain_keys.close()

    print("\n== cases 1 to 3: cost by header size (no store, no argon2) ==")
    cases = {
        "missing (no header)": environ(None),
        "malformed, 40 chars": environ("Basic " + "a" * 34),
        "malformed, 1 MB": environ("Basic " + "a" * 1_000_000),
        "bad format, 40 chars": environ("Bearer " + "a" * 33),
        "bad format, 1 MB": environ("Bearer " + "a" * 1_000_000),
    }
    small = max(number // 10, 500)
    timings = interleaved_us(
        {
            name: (lambda env=env: guarded(env, start_response))
            for name, env in cases.items()
        },
        number=small,
        repeat=repeat,
    )
    for name, us in timings.items():
        print(f"  {name:<22} {us:7.2f} us/request")

    print("\n== cold verification: store lookup + one argon2id verify ==")
    print(f"  parameters: {DEFAULT_PARAMETERS}")
    samples = []
    for _ in range(15 if args.quick else 40):
        fresh = KeyManager(store, hasher=hasher)
        started = time.perf_counter()
        fresh.authenticate(issued.key)
        samples.append((time.perf_counter() - started) * 1e3)
    print(f"  median {statistics.median(samples):.2f} ms, min {min(samples):.2f} ms")

    print("\n== argon2 verifications over 10,000 requests with one key ==")
    fresh = KeyManager(store, hasher=hasher)
    app = ApiKeyMiddleware(bare_app, fresh)
    before = CountingHasher.verifications
    for _ in range(10_000):
        app(environ("Bearer " + issued.key), start_response)
    print(f"  {CountingHasher.verifications - before} verification(s)")

    print("\n== unknown well-formed keys: no argon2 ==")
    unknown = [environ("Bearer " + generate_key()) for _ in range(2_000)]
    before = CountingHasher.verifications
    started = time.perf_counter()
    for env in unknown:
        guarded(env, start_response)
    elapsed = time.perf_counter() - started
    print(
        f"  {len(unknown) / elapsed:,.0f} requests/s, "
        f"{CountingHasher.verifications - before} verifications"
    )


if __name__ == "__main__":
    main()
