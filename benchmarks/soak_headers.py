"""Soak ApiKeyMiddleware with hostile Authorization headers.

At least 100,000 cases by default: random latin-1 strings, headers of up to
1 MB, control bytes, repeated and odd schemes, near-miss keys. Every answer
must be one of the four documented 401s, or success for the real key; any
other answer or any exception stops the run with exit status 1. Then the
cost of cases 1 to 3 by header size.

Run: ``.venv/bin/python benchmarks/soak_headers.py [--cases N] [--seed S]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from typing import Any

from _timing import interleaved_us
from argon2 import PasswordHasher, profiles

from vemetric_auth import ApiKeyMiddleware, InMemoryKeyStore, KeyManager
from vemetric_auth.keys import ALPHABET

MESSAGES = {
    "Missing API key. Use Authorization: Bearer <key>",
    "Malformed Authorization header. Use Bearer <key>",
    "Invalid API key format",
    "Invalid or revoked API key",
}
SCHEMES = ["Bearer", "bearer", "BEARER", "Basic", "Token", "Bearer Bearer", "", "B"]
SPACES = ["", " ", "\t", "  ", " \t ", "\x0b", "\x00", "\r", "\xa0"]


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def latin1(rng: random.Random, size: int) -> str:
    return bytes(rng.getrandbits(8) for _ in range(size)).decode("latin-1")


def near_miss(rng: random.Random, key: str) -> str:
    chars = list(key)
    for _ in range(rng.randint(1, 3)):
        what = rng.random()
        i = rng.randrange(len(chars))
        if what < 0.4:
            chars[i] = rng.choice(ALPHABET + "AZ_-.\x00é ")
        elif what < 0.7:
            del chars[i]
        else:
            chars.insert(i, rng.choice(ALPHABET + "A\t"))
    return "".join(chars)


def make_header(rng: random.Random, key: str) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return latin1(rng, rng.randint(0, 80))
    if kind == 1:
        filler = rng.choice(["a", " ", "\t", "vem_", "=", "\x00", "\xff"])
        body = filler * rng.randint(37, 1_000_000 // len(filler))
        return rng.choice(SCHEMES) + rng.choice(SPACES) + body
    if kind == 2:
        return "".join(chr(rng.randrange(32)) for _ in range(rng.randint(1, 50)))
    if kind == 3:
        return (
            " ".join(rng.choice(SCHEMES) for _ in range(rng.randint(1, 5))) + " " + key
        )
    if kind == 4:
        return rng.choice(SCHEMES) + rng.choice(SPACES) + near_miss(rng, key)
    if kind == 5:
        pad = lambda: "".join(rng.choice(SPACES) for _ in range(rng.randint(0, 3)))  # noqa: E731
        return pad() + rng.choice(SCHEMES) + pad() + key + pad()
    if kind == 6:
        return "Bearer " + "vem_" + "".join(rng.choice(ALPHABET) for _ in range(32))
    return rng.choice(SCHEMES) + " " + latin1(rng, rng.randint(30, 40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()

    keys = KeyManager(
        InMemoryKeyStore(), hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
    )
    key = keys.create("proj_soak", "soak").key
    guarded = ApiKeyMiddleware(app, keys)
    rng = random.Random(args.seed)
    answers: Counter[str] = Counter()
    started = time.perf_counter()
    for n in range(args.cases):
        header = make_header(rng, key)
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_AUTHORIZATION": header,
        }
        status: list[str] = []
        try:
            body = b"".join(
                guarded(environ, lambda s, h, e=None: status.append(s))  # noqa: B023
            )
        except Exception as exc:  # the soak's finding: report and fail
            print(f"case {n}: {type(exc).__name__} for a header of {len(header)} chars")
            sys.exit(1)
        if status[0].startswith("200"):
            if header.strip(" \t")[6:].strip(" \t") != key:
                print(f"case {n}: let through a header that does not carry the key")
                sys.exit(1)
            answers["200 success"] += 1
            continue
        message = json.loads(body)["error"]["message"] if body else None
        if not status[0].startswith("401") or message not in MESSAGES:
            print(f"case {n}: undocumented answer {status[0]!r} {message!r}")
            sys.exit(1)
        answers[f"401 {message}"] += 1
    elapsed = time.perf_counter() - started
    print(
        f"{args.cases:,} hostile headers in {elapsed:.1f} s (seed {args.seed}): all documented"
    )
    for answer, count in sorted(answers.items()):
        print(f"  {count:>8,}  {answer}")

    print("\ncases 1 to 3 by header size (us/request, median):")
    sizes = [40, 1_000, 100_000, 1_000_000]
    fns = {}
    for label, build in [
        ("malformed", lambda n: "Basic " + "a" * (n - 6)),
        ("bad format", lambda n: "Bearer " + "a" * (n - 7)),
        ("missing", lambda n: " " * n),
    ]:
        for size in sizes:
            env = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/",
                "HTTP_AUTHORIZATION": build(size),
            }
            fns[f"{label:<10} {size:>9,} chars"] = lambda env=env: guarded(
                env, lambda s, h, e=None: None
            )
    for name, us in interleaved_us(fns, number=300, repeat=7).items():
        print(f"  {name}  {us:8.2f}")


if __name__ == "__main__":
    main()
