"""The optional dependencies, and the extras of the package that install them.

The core needs only werkzeug and argon2-cffi. The SQL store, the Flask
extension and the command line need more; when one of their modules is
missing, the error names the extra to install, not just the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stores.sql import SQLKeyStore


def install_hint(*extras: str) -> str:
    """Return the ``pip install 'vemetric-auth[...]'`` line for *extras*."""
    return f"pip install 'vemetric-auth[{','.join(extras)}]'"


def sql_key_store() -> type[SQLKeyStore]:
    """Import and return :class:`~vemetric_auth.SQLKeyStore`.

    :raises ImportError: SQLAlchemy is not installed; the message names the
        ``sql`` extra.
    """
    try:
        from .stores.sql import SQLKeyStore
    except ModuleNotFoundError as error:
        if error.name != "sqlalchemy":
            raise  # a broken installation: its own error says more
        raise ImportError(
            f"SQLKeyStore needs SQLAlchemy: {install_hint('sql')}", name=error.name
        ) from None
    return SQLKeyStore
