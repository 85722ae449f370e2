"""A plaintext API key on its way through the library, hidden from reprs.

Error reporters such as Sentry record the ``repr`` of every local variable of
every frame of a traceback. A key passed around as a ``str`` would be in
those frames whenever a store call or an argon2 run fails beneath it; passed
as a :class:`Secret`, the frames show ``<Secret>``.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """Holds a plaintext key in :attr:`value`; its ``repr`` and ``str`` do not.

    Made only on the cold path of :meth:`~vemetric_auth.KeyManager.authenticate`
    (a cached key needs none) and by :meth:`~vemetric_auth.KeyManager.create`.
    Code holding one reads :attr:`value` inline, into a call, never into a
    local variable of its own.
    """

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<Secret>"

    def __reduce__(self) -> NoReturn:
        # Pickling would carry the plaintext into caches and queues.
        raise TypeError("a Secret cannot be pickled")
