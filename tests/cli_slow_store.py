"""The key commands on a SQLite store whose writes are slow, run as a program.

For the tests of interrupted commands in ``test_cli.py``::

    python tests/cli_slow_store.py DATABASE_PATH create --project p --name n

Environment:

- ``SLOW``: the store methods that are slow, comma-separated (``add``,
  ``set_expiry``, ``roll``);
- ``SLOW_WHEN``: ``after`` (the default: the write is done, its answer is
  slow, as a slow COMMIT) or ``before`` (the write waits, then is done);
- ``SLOW_SECONDS``: how slow (default 30);
- ``SLOW_MARK``: a file that gets the method's name when a slow call starts
  waiting, so that a test knows when to interrupt;
- ``STORE_TIMEOUT``: the manager's ``store_timeout`` (default 5).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vemetric_auth import ApiKey, KeyManager, SQLKeyStore
from vemetric_auth.cli import COMMANDS, CommandGroup, KeysOpener


class SlowStore:
    """A :class:`SQLKeyStore` whose methods named in ``SLOW`` are slow."""

    def __init__(self, inner: SQLKeyStore) -> None:
        self.inner = inner
        self.slow = set(filter(None, os.environ.get("SLOW", "").split(",")))
        self.after = os.environ.get("SLOW_WHEN", "after") == "after"
        self.seconds = float(os.environ.get("SLOW_SECONDS", "30"))
        self.mark = os.environ.get("SLOW_MARK")

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.inner, name)
        if name not in self.slow:
            return method(*args, **kwargs)
        if self.after:
            result = method(*args, **kwargs)
            self._wait(name)
            return result
        self._wait(name)
        return method(*args, **kwargs)

    def _wait(self, name: str) -> None:
        if self.mark:
            with open(self.mark, "a") as mark:
                mark.write(name + "\n")
        time.sleep(self.seconds)

    def add(self, record: ApiKey, key_hash: str) -> None:
        self._call("add", record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        return self._call("get", key_id)  # type: ignore[no-any-return]

    def find_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        return self._call("find_by_prefix", prefix)  # type: ignore[no-any-return]

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        return self._call("list", project_id, include_revoked=include_revoked)  # type: ignore[no-any-return]

    def revoke(
        self, key_id: str, *, revoked_at: datetime, revoked_by: str | None
    ) -> ApiKey | None:
        return self._call(  # type: ignore[no-any-return]
            "revoke", key_id, revoked_at=revoked_at, revoked_by=revoked_by
        )

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self._call("set_hash", key_id, key_hash)

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> ApiKey | None:
        return self._call("set_expiry", key_id, expires_at)  # type: ignore[no-any-return]

    def roll(self, old_key_id: str, new_key_id: str, **kwargs: Any) -> ApiKey | None:
        return self._call("roll", old_key_id, new_key_id, **kwargs)  # type: ignore[no-any-return]

    def record_use(self, stamps: Mapping[str, datetime]) -> None:
        self._call("record_use", stamps)


def main() -> None:
    database, *args = sys.argv[1:]
    store = SQLKeyStore(f"sqlite:///{database}")
    keys = KeyManager(
        SlowStore(store), store_timeout=float(os.environ.get("STORE_TIMEOUT", "5"))
    )
    group = CommandGroup("keys", commands=COMMANDS)
    group.main(args=args, prog_name="keys", obj=KeysOpener(lambda: keys))


if __name__ == "__main__":
    main()
