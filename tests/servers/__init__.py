"""Throwaway servers for the test suite and the benchmarks.

Each kind of server has a module of its own holding a class that starts a
private instance on a free loopback port, in a temporary directory it removes
afterwards. Those modules use the standard library only, so that the
benchmarks start the same servers without pytest:

- :mod:`servers.postgres`: :class:`~servers.postgres.PostgresServer`.
- :mod:`servers.redis`: :class:`~servers.redis.RedisServer`.

:mod:`servers.plugin` is the pytest plugin ``tests/conftest.py`` registers: a
session fixture per kind (``postgres_server``, with ``postgres_url``;
``redis_server``, with ``redis_url``), which
skips when the server's binaries are missing, and fails under ``CI=true``.
What every kind shares (a free port, a private directory, running the
binaries as an unprivileged user when the tests run as root, as CI does) is
in :mod:`servers._process`.

A new kind (say Redis) is a module beside ``postgres.py`` and a fixture in
``plugin.py``.
"""

from __future__ import annotations

from ._process import find_free_port, in_ci

__all__ = ["find_free_port", "in_ci"]
