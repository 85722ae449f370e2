"""Objects that start afresh in a child process made by ``os.fork()``.

A forked child has only the thread that called ``fork()``. A lock another
thread of the parent held at that moment stays held in the child for ever,
and the parent's worker threads are not there to serve a queue. Objects
registered here get their ``_after_fork()`` called in the child before
anything else runs there, as pre-forking servers (gunicorn) need.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "reset_in_child"]


class ForkAware(Protocol):
    """An object with locks or threads to remake after a fork."""

    def _after_fork(self) -> None:
        """Remake what another thread of the parent may have held."""


# Weak: registering does not keep an object alive.
_REGISTERED: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_in_child(obj: ForkAware) -> None:
    """Have ``obj._after_fork()`` called in every child forked from now on."""
    _REGISTERED.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_REGISTERED):
        obj._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
