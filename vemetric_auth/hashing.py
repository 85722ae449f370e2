"""The argon2id parameters keys are hashed with unless the application picks others."""

from __future__ import annotations

from argon2 import Parameters, PasswordHasher, Type

__all__ = ["DEFAULT_PARAMETERS", "default_hasher"]

#: argon2id, one pass over 8 MiB, one lane: about 6 ms a verification on a
#: 2-core machine. An API key carries about 165 random bits (124 of them
#: after the displayed prefix), so no amount of hashing cost is what stops a
#: guess; a stolen hash can not be brute-forced at any cost setting. What the
#: cost does decide is the latency of a key's first request in a process and
#: the memory a flood of wrong secrets can pin, so it is kept low, while
#: staying argon2id with a 16-byte salt as stored hashes should be.
DEFAULT_PARAMETERS = Parameters(
    type=Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=1,
    memory_cost=8 * 1024,
    parallelism=1,
)


def default_hasher() -> PasswordHasher:
    """Return a :class:`~argon2.PasswordHasher` with :data:`DEFAULT_PARAMETERS`."""
    return PasswordHasher.from_parameters(DEFAULT_PARAMETERS)
