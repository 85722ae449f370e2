"""Closing a :class:`~vemetric_auth.SQLKeyStore` while a call is under way."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from vemetric_auth import SQLKeyStore


@pytest.mark.postgres
def test_a_connection_in_use_when_the_store_closes_is_closed_once_given_back(
    postgres_url: str,
) -> None:
    """close() disposes of the pool while a call (one that outlived its
    manager's store_timeout, say) still holds a connection: that connection
    is closed when the call ends, not left open in the old pool until the
    garbage collector finds it (psycopg warns, an error in this suite)."""
    store = SQLKeyStore(postgres_url)
    store.create_table()
    in_use: list[Any] = []
    holding = threading.Event()

    def slow_call() -> None:
        with store._reading() as connection:
            in_use.append(connection.connection.dbapi_connection)
            holding.set()
            connection.exec_driver_sql("SELECT pg_sleep(0.5)")

    thread = threading.Thread(target=slow_call)
    thread.start()
    try:
        assert holding.wait(10)
        store.close()
    finally:
        thread.join(10)
    assert not thread.is_alive()
    (dbapi_connection,) = in_use
    assert dbapi_connection.closed
    # The store still works: it connects again.
    assert store.get("no-such-key") is None
    store.close()
