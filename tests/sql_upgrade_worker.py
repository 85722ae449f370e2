"""A service process of the new release starting on a table of 0.1, for
tests/test_sql_upgrade.py.

    python tests/sql_upgrade_worker.py URL TABLE START_AT < keys.json

Reads a JSON list of keys on stdin, waits until the wall-clock time START_AT
(so that the workers open the old table together), then authenticates each
key through a KeyManager over a new SQLKeyStore: the first use of the store,
which upgrades the table. Prints a JSON list: for each key, its record as
``to_dict()`` gives it, or ``null`` if it was refused.
"""

from __future__ import annotations

import json
import sys
import time

from argon2 import PasswordHasher, profiles

from vemetric_auth import InvalidApiKey, KeyManager, SQLKeyStore


def main(url: str, table: str, start_at: float) -> None:
    keys_to_try = json.load(sys.stdin)
    store = SQLKeyStore(url, table_name=table)
    try:
        # The hashes were made with these parameters: nothing is rehashed.
        keys = KeyManager(
            store, hasher=PasswordHasher.from_parameters(profiles.CHEAPEST)
        )
        time.sleep(max(0.0, start_at - time.time()))
        results = []
        for key in keys_to_try:
            try:
                results.append(keys.authenticate(key).to_dict())
            except InvalidApiKey:
                results.append(None)
        print(json.dumps(results))
    finally:
        store.close()


if __name__ == "__main__":
    url, table, start_at = sys.argv[1:]
    main(url, table, float(start_at))
