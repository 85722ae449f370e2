"""Worker processes for tests/test_sql_store.py: each is another service process.

    python tests/sql_workers.py create URL TABLE PROJECT COUNT START_AT
    python tests/sql_workers.py revoke URL TABLE KEY_ID

``create`` waits until the wall-clock time START_AT (so that the workers hit an
empty database together), creates the table, creates COUNT keys through a
KeyManager, authenticates each, and prints the new key ids as a JSON list.
``revoke`` revokes one key and prints its record as JSON.
"""

from __future__ import annotations

import json
import sys
import time

from argon2 import PasswordHasher, profiles

from vemetric_auth import KeyManager, SQLKeyStore


def create(url: str, table: str, project: str, count: int, start_at: float) -> None:
    store = SQLKeyStore(url, table_name=table)
    try:
        time.sleep(max(0.0, start_at - time.time()))
        store.create_table()
        keys = KeyManager(
            store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
        )
        ids = []
        for n in range(count):
            issued = keys.create(project, f"worker key {n}")
            assert keys.authenticate(issued.key) == issued.record
            ids.append(issued.record.id)
        print(json.dumps(ids))
    finally:
        store.close()


def revoke(url: str, table: str, key_id: str) -> None:
    store = SQLKeyStore(url, table_name=table)
    try:
        record = KeyManager(store).revoke(key_id, revoked_by="worker")
        print(json.dumps(record.to_dict()))
    finally:
        store.close()


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "create":
        url, table, project, count, start_at = args
        create(url, table, project, int(count), float(start_at))
    elif command == "revoke":
        url, table, key_id = args
        revoke(url, table, key_id)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
