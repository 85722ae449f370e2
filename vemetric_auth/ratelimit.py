"""Rate limits per project (or per key), counted on the ``limits`` library.

Vemetric's own API gives each project a number of requests per window (100
per minute), shared by all of its keys. :class:`RateLimiter` decides, for the
:class:`~vemetric_auth.ApiKey` of an authenticated request, whether the
request is allowed, and what the ``X-RateLimit-*`` headers of its answer say.

Counters live in any storage ``limits`` supports, named by a URI:
``memory://`` (one process, the default), ``redis://`` and ``rediss://``,
Redis Sentinel (``redis+sentinel://``) and Cluster (``redis+cluster://``),
Valkey (``valkey://``), memcached (``memcached://``). When a shared storage
fails, each process goes on limiting with counters of its own in memory until
the storage answers again: a failing storage never makes a request fail, and
never lets traffic through unlimited.

Needs the ``ratelimit`` extra (``pip install 'vemetric-auth[ratelimit]'``),
or ``redis`` for the Redis storages.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from heapq import heappop, heappush
from math import ceil
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Literal,
    NamedTuple,
    TypeAlias,
    TypeVar,
    cast,
)
from urllib.parse import urlsplit

from ._extras import install_hint
from ._fork import reset_in_child

try:
    from limits import RateLimitItem
    from limits.errors import ConfigurationError
    from limits.storage import MemoryStorage, Storage, storage_from_string
    from limits.strategies import STRATEGIES
    from limits.strategies import RateLimiter as _LimitsStrategy
    from limits.util import parse_many
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    if error.name is None or error.name.partition(".")[0] != "limits":
        raise  # a broken installation: its own error says more
    raise ImportError(
        f"rate limits need the limits library: {install_hint('ratelimit')}",
        name=error.name,
    ) from None

if TYPE_CHECKING:
    from .records import ApiKey

__all__ = [
    "LIMIT_HEADER",
    "RATE_LIMIT_HEADERS",
    "REMAINING_HEADER",
    "RESET_HEADER",
    "RETRY_AFTER_HEADER",
    "RateDecision",
    "RateLimiter",
]

logger = logging.getLogger("vemetric_auth")

#: How many requests the window allows.
LIMIT_HEADER: Final = "X-RateLimit-Limit"
#: How many more requests the window allows after this one (never negative).
REMAINING_HEADER: Final = "X-RateLimit-Remaining"
#: When the window ends, in Unix epoch seconds.
RESET_HEADER: Final = "X-RateLimit-Reset"
#: The three headers of every rate-limited answer, in the order they are sent.
RATE_LIMIT_HEADERS: Final = (LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER)
#: Seconds to wait before trying again, sent with a ``429``.
RETRY_AFTER_HEADER: Final = "Retry-After"

#: What :class:`RateLimiter` counts by: each project, or each key.
CountBy: TypeAlias = Literal["project", "key"]
#: The ``limits`` strategies :class:`RateLimiter` takes.
Strategy: TypeAlias = Literal["fixed-window", "moving-window", "sliding-window-counter"]
#: A limit for a key, ``None`` for none: the callable form of ``rate_limit``.
TierFunction: TypeAlias = Callable[["ApiKey"], "str | None"]

_BY: Final = {"project": attrgetter("project_id"), "key": attrgetter("id")}
_KEY_NAMESPACE = "vemetric-auth"
# A callable's distinct answers are tiers, a handful; past this many the cache
# is emptied rather than grown, so a callable that returns a new string per
# request costs parsing, never memory.
_MAX_TIERS = 1024
# Shared storages answer on loopback or a LAN in well under a millisecond; a
# storage that takes longer than this is treated as down for this request, so
# a frozen server never holds requests for long.
_SOCKET_TIMEOUT = 0.2
# Seconds between two tries of a failed shared storage (one request tries;
# the others count in memory meanwhile).
_RETRY_INTERVAL = 5.0


class RateDecision(NamedTuple):
    """The answer of :meth:`RateLimiter.hit` for one request: an immutable
    named tuple (like ``limits``' own ``WindowStats``)."""

    #: Whether the request may go on; when false, answer ``429``.
    allowed: bool
    #: How many requests the window allows.
    limit: int
    #: How many more requests the window allows after this one, ``>= 0``.
    remaining: int
    #: When the window ends, in Unix epoch seconds.
    reset: int
    #: Seconds from now until the window ends, at least 1: the
    #: ``Retry-After`` of a ``429``.
    retry_after: int

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` headers, as a
        new list of ``(name, value)`` pairs for a WSGI ``start_response``."""
        return [
            (LIMIT_HEADER, str(self.limit)),
            (REMAINING_HEADER, str(self.remaining)),
            (RESET_HEADER, str(self.reset)),
        ]


# The generated RateDecision(...) runs Python code to check its arguments;
# hit() builds one per request with exactly five, straight from the tuple.
_new_decision = tuple.__new__


class _Limit:
    """One parsed limit: the ``limits`` item and what the fixed window needs."""

    __slots__ = ("amount", "by", "item", "period", "prefix", "text")

    def __init__(self, item: RateLimitItem, by: str, text: str) -> None:
        self.item = item
        self.by = by
        self.text = text
        self.amount: int = item.amount
        self.period: int = item.get_expiry()
        # The limit is part of the key: a project moved to another tier starts
        # a counter of its own instead of inheriting a count against another
        # amount.
        self.prefix = f"{_KEY_NAMESPACE}/{by}/{self.amount}/{self.period}/"


def _parse_limit(text: object, by: str) -> _Limit:
    """Parse one limit in ``limits``' notation ("100/minute", "100 per minute").

    :raises TypeError: *text* is not a string.
    :raises ValueError: it is not one limit of at least 1 request.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"a rate limit must be a string such as '100/minute', not {type(text).__name__}"
        )
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(
            f"invalid rate limit {text!r}: use the limits notation, such as "
            "'100/minute' or '1000 per hour'"
        ) from None
    if len(items) != 1:
        raise ValueError(
            f"invalid rate limit {text!r}: give one limit, such as '100/minute'"
        )
    if items[0].amount < 1:
        raise ValueError(f"invalid rate limit {text!r}: allow at least 1 request")
    return _Limit(items[0], by, text)


class _Backend:
    """What a storage scheme needs: its client library, and default options
    that bound each call in time (built when a limiter is, so that the
    client library is imported only then)."""

    __slots__ = ("defaults", "extra", "module")

    def __init__(
        self,
        module: str | None,
        extra: str,
        defaults: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.module = module
        self.extra = extra
        self.defaults = defaults


def _redis_defaults(module: str, *, sentinel: bool = False) -> dict[str, Any]:
    """Timeouts, and no retries: redis-py's clients otherwise retry a failed
    call 3 times with backoffs of up to seconds (those built without a
    connection pool, as Sentinel's and Cluster's are), and a request should
    rather be counted in memory at once."""
    retry = importlib.import_module(f"{module}.retry").Retry
    no_backoff = importlib.import_module(f"{module}.backoff").NoBackoff
    options: dict[str, Any] = {
        "socket_timeout": _SOCKET_TIMEOUT,
        "socket_connect_timeout": _SOCKET_TIMEOUT,
        "retry": retry(no_backoff(), 0),
    }
    if sentinel:
        # The connections to the sentinels themselves (asking for the master).
        options["sentinel_kwargs"] = dict(options)
    return options


_REDIS = _Backend("redis", install_hint("redis"), partial(_redis_defaults, "redis"))
_REDIS_SENTINEL = _Backend(
    "redis", install_hint("redis"), partial(_redis_defaults, "redis", sentinel=True)
)
_VALKEY_HINT = "pip install 'limits[valkey]'"
_VALKEY = _Backend("valkey", _VALKEY_HINT, partial(_redis_defaults, "valkey"))
_VALKEY_SENTINEL = _Backend(
    "valkey", _VALKEY_HINT, partial(_redis_defaults, "valkey", sentinel=True)
)
_MEMCACHED = _Backend(
    "pymemcache",
    "pip install 'limits[memcached]'",
    lambda: {"connect_timeout": _SOCKET_TIMEOUT, "timeout": _SOCKET_TIMEOUT},
)
_MONGODB = _Backend(
    "pymongo",
    "pip install 'limits[mongodb]'",
    lambda: dict.fromkeys(
        ("serverSelectionTimeoutMS", "connectTimeoutMS", "socketTimeoutMS"),
        int(_SOCKET_TIMEOUT * 1000),
    ),
)
_BACKENDS: Final = {
    "memory": _Backend(None, install_hint("ratelimit")),
    "redis": _REDIS,
    "rediss": _REDIS,
    "redis+unix": _REDIS,
    "redis+sentinel": _REDIS_SENTINEL,
    "redis+cluster": _REDIS,
    "valkey": _VALKEY,
    "valkeys": _VALKEY,
    "valkey+unix": _VALKEY,
    "valkey+sentinel": _VALKEY_SENTINEL,
    "valkey+cluster": _VALKEY,
    "memcached": _MEMCACHED,
    "mongodb": _MONGODB,
    "mongodb+srv": _MONGODB,
}


class _WindowCounts:
    """Fixed-window counters in this process's memory, with the ``incr`` of a
    ``limits`` storage: the fixed window's ``memory://`` storage, and every
    storage's fallback.

    ``limits``' ``MemoryStorage`` checks expiry, a timer thread and a lock per
    key on every call (over 1 µs); a fixed window needs only a count per key,
    since the key names its window. A plain dict under one
    ``threading.Lock``: a count is dropped once its expiry has passed, when a
    later new key is counted, so memory holds the live windows only.
    """

    __slots__ = ("_counts", "_expiries", "_lock", "_monotonic")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        # (monotonic deadline, key), the soonest first.
        self._expiries: list[tuple[float, str]] = []
        self._monotonic: Callable[[], float] = time.monotonic  # a test hook

    def __len__(self) -> int:
        return len(self._counts)

    def incr(self, key: str, expiry: int) -> int:
        """Add 1 to *key*'s count and return it; a new key lives *expiry* s."""
        with self._lock:
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
            if count == 1:
                now = self._monotonic()
                expiries = self._expiries
                heappush(expiries, (now + expiry, key))
                while expiries[0][0] <= now:
                    self._counts.pop(heappop(expiries)[1], None)
        return count


# What a call on a storage side returns: the count (fixed window), or
# (allowed, remaining, reset as epoch seconds) for limits' strategies.
_T = TypeVar("_T")


def _incr(storage: Any, key: str, expiry: int) -> int:
    count: int = storage.incr(key, expiry)
    return count


def _limits_hit(strategy: Any, limit: _Limit, ident: str) -> tuple[bool, int, float]:
    # limits' own strategies: hit, then a second call for the headers.
    allowed: bool = strategy.hit(limit.item, _KEY_NAMESPACE, limit.by, ident)
    stats = strategy.get_window_stats(limit.item, _KEY_NAMESPACE, limit.by, ident)
    return allowed, max(0, int(stats.remaining)), float(stats.reset_time)


class RateLimiter:
    """Count requests per project (or per key) and decide which may go on.

    Built once, then :meth:`hit` is called for every authenticated request,
    after its key (and project) were found valid; refused keys are never
    counted. Thread-safe.

    :param rate_limit: A limit in the notation of the ``limits`` library,
        such as ``"100/minute"`` (Vemetric's) or ``"1000 per hour"``; or a
        callable that takes the request's :class:`~vemetric_auth.ApiKey` and
        returns such a string, or ``None`` for no limit: tiers per project.
        The strings a callable returns are parsed once, then cached.
    :param storage_uri: Where the counters live: a ``limits`` storage URI.
        ``memory://`` counts in this process; ``redis://host:6379`` (and
        ``rediss://``, ``redis+sentinel://``, ``redis+cluster://``,
        ``valkey://``, ``memcached://``) shares the counts between every
        process and machine that uses it. The URI may carry a password: it is
        never logged nor shown in ``repr``.
    :param storage_options: Keyword arguments for the storage's client, on
        top of the defaults: every Redis-family storage gets
        ``socket_timeout`` and ``socket_connect_timeout`` of 0.2 s and no
        retries (memcached and MongoDB their own timeouts), so that a frozen
        server never holds a request for long. Options given here, or in a
        ``redis://`` URI's query string, win. Most clients check their
        options only when they first connect: one they refuse shows as a
        storage outage (a WARNING naming the error) at the first request.
    :param by: ``"project"`` (Vemetric's) counts the requests of all keys of
        a project together; ``"key"`` counts each key on its own.
    :param strategy: ``"fixed-window"`` (Vemetric's): windows aligned to the
        clock (a minute limit resets at every whole minute), one storage call
        per request (one Redis round trip). ``"moving-window"`` and
        ``"sliding-window-counter"``: ``limits``' own strategies, smoother at
        window edges; each request costs two storage calls (two round trips),
        and ``memcached://`` has no moving window.
    :raises TypeError: *rate_limit* is neither a string nor a callable, or
        an option has the wrong type.
    :raises ValueError: an invalid limit, *by*, *strategy* or storage URI.
    :raises ImportError: the storage's client library is missing; the
        message says what to install.

    When a shared storage fails (an error, or no answer within the timeout),
    the request is counted in memory instead, against the same limit: this
    process goes on limiting on its own, one WARNING is logged for the whole
    outage, and the shared storage is tried again every few seconds by one
    request (which waits at most the timeouts); the first that succeeds logs
    an INFO and every request counts in the shared storage again.

    .. code-block:: python

        from vemetric_auth.ratelimit import RateLimiter

        limiter = RateLimiter("100/minute", storage_uri="redis://localhost:6379")
        decision = limiter.hit(api_key)
        if decision is not None and not decision.allowed:
            ...  # 429, with decision.headers and Retry-After: decision.retry_after
    """

    def __init__(
        self,
        rate_limit: str | TierFunction,
        *,
        storage_uri: str = "memory://",
        storage_options: Mapping[str, Any] | None = None,
        by: CountBy = "project",
        strategy: Strategy = "fixed-window",
    ) -> None:
        self._by: CountBy = _check_by(by)
        self._strategy_name: Strategy = _check_strategy(strategy)
        self._ident: Callable[[ApiKey], str] = _BY[by]
        self._fixed: _Limit | None = None
        self._tiers: TierFunction | None = None
        self._parsed: dict[str, _Limit] = {}
        limit = _check_rate_limit(rate_limit, by)
        if isinstance(limit, _Limit):
            self._fixed = limit
        else:
            self._tiers = limit

        self._uri, self._scheme, backend = _check_storage_uri(storage_uri)
        self._options: dict[str, Any] = {
            **backend.defaults(),
            **_check_storage_options(storage_options),
        }
        self._fixed_window = strategy == "fixed-window"

        # Test hooks: the wall clock that places windows, the clock and the
        # interval of the retries of a failed storage.
        self._clock: Callable[[], float] = time.time
        self._monotonic: Callable[[], float] = time.monotonic
        self._retry_interval = _RETRY_INTERVAL

        self._state_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0

        self._local = self._new_local()
        self._shared: Any = None
        reset_in_child(self)
        if self._scheme == "memory":
            # Memory never fails: it is its own fallback.
            self._shared = self._local
            return
        try:
            self._shared = self._side(self._build_storage())
        except (ConfigurationError, ValueError) as error:
            raise ValueError(
                f"invalid {self._scheme}:// rate limit storage: "
                f"{self._redact(str(error))}"
            ) from None
        except (ImportError, TypeError):
            raise
        except Exception as error:
            # Redis Cluster's client connects when built: a cluster that is
            # down at start-up is an outage like any other, not a crash.
            self._storage_failed(error)

    # -- the decision ------------------------------------------------------

    def hit(self, record: ApiKey) -> RateDecision | None:
        """Count one request of *record*'s project (or key) and decide on it.

        Call it once per request, after authentication: every call counts.

        :param record: The request's verified key.
        :returns: The decision, with the values of the ``X-RateLimit-*``
            headers; ``None`` when no limit applies to this key (the tier
            callable returned ``None``).
        :raises TypeError, ValueError: the tier callable returned something
            other than ``None`` or a valid limit string.

        A failing storage never raises here: the request is then counted in
        this process's memory (see the class).
        """
        limit = self._fixed
        if limit is None:
            limit = self._tier(record)
            if limit is None:
                return None
        ident = self._ident(record)
        now = self._clock()
        amount = limit.amount
        if self._fixed_window:
            # Windows are aligned to the clock and the key names its window:
            # one INCR (one round trip) gives the count, and the window's end
            # needs no second call. The key expires a whole period after its
            # first count, so it outlives its window whatever the clocks of
            # the processes sharing it say.
            period = limit.period
            window = int(now // period)
            key = f"{limit.prefix}{ident}/{window}"
            shared = self._shared
            if shared is self._local:
                # memory:// never fails: no fallback to go through.
                count = shared.incr(key, period)
            else:
                count = self._count(_incr, key, period)
            allowed = count <= amount
            remaining = amount - count if count < amount else 0
            reset = (window + 1) * period
            retry_after = ceil(reset - now)
        else:
            allowed, remaining, reset_at = self._count(_limits_hit, limit, ident)
            reset = ceil(reset_at)
            retry_after = ceil(reset_at - now)
        return _new_decision(
            RateDecision,
            (allowed, amount, remaining, reset, retry_after if retry_after > 1 else 1),
        )

    def _tier(self, record: ApiKey) -> _Limit | None:
        tiers = cast("TierFunction", self._tiers)
        text = tiers(record)
        if text is None:
            return None
        limit = self._parsed.get(text) if isinstance(text, str) else None
        if limit is None:
            try:
                limit = _parse_limit(text, self._by)
            except (TypeError, ValueError) as error:
                raise type(error)(f"the rate_limit callable returned {error}") from None
            if len(self._parsed) >= _MAX_TIERS:
                self._parsed.clear()
            self._parsed[limit.text] = limit
        return limit

    def _count(
        self, call: Callable[[Any, Any, Any], _T], first: Any, second: Any
    ) -> _T:
        """``call(side, first, second)`` on the shared storage's side, or on
        the local one while the shared storage is down."""
        if self._down_since is None:
            try:
                return call(self._shared, first, second)
            except Exception as error:
                # Whatever the storage raised (connection refused, timeout,
                # a cluster's own errors): count locally. A defect of ours
                # would raise again from the local side below, not hide.
                self._storage_failed(error)
        elif self._monotonic() >= self._retry_at:
            retried = self._retry(call, first, second)
            if retried is not None:
                return retried[0]
        return call(self._local, first, second)

    # -- the shared storage and its outages --------------------------------

    def _new_local(self) -> Any:
        if self._fixed_window:
            return _WindowCounts()
        return self._side(MemoryStorage())

    def _after_fork(self) -> None:
        # Another thread of the parent may have held these locks (or those of
        # the in-memory counters) at the fork: the child's would stay held.
        # The counts in memory are the parent's own, so the child starts
        # afresh; a shared storage's client reconnects by itself.
        self._state_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        memory = self._shared is self._local
        self._local = self._new_local()
        if memory:
            self._shared = self._local

    def _build_storage(self) -> Storage:
        storage = storage_from_string(self._uri, **self._options)
        return cast(Storage, storage)

    def _side(self, storage: Storage) -> Any:
        """What a step works on: the storage itself (fixed window), or one of
        ``limits``' strategies over it."""
        if self._strategy_name == "fixed-window":
            return storage
        try:
            strategy: _LimitsStrategy = STRATEGIES[self._strategy_name](storage)
        except NotImplementedError:
            raise ValueError(
                f"the {self._scheme}:// storage does not support the "
                f"{self._strategy_name} strategy"
            ) from None
        return strategy

    def _storage_failed(self, error: BaseException) -> None:
        now = self._monotonic()
        with self._state_lock:
            if self._down_since is not None:
                return  # another request saw this outage first, and said so
            self._down_since = now
            self._retry_at = now + self._retry_interval
        logger.warning(
            "rate limit storage %s:// failed (%s: %s); counting in this "
            "process's memory until it answers again",
            self._scheme,
            type(error).__name__,
            self._redact(str(error)),
        )

    def _retry(
        self, call: Callable[[Any, Any, Any], _T], first: Any, second: Any
    ) -> tuple[_T] | None:
        """Try the failed storage with this request: ``(result,)``, or None
        when it is still down (or another request is trying it)."""
        if not self._probe_lock.acquire(blocking=False):
            return None
        try:
            started = self._monotonic()
            if started < self._retry_at:
                return None  # another request tried it meanwhile
            self._retry_at = started + self._retry_interval
            try:
                if self._shared is None:
                    self._shared = self._side(self._build_storage())
                result = call(self._shared, first, second)
            except Exception:
                return None  # still down: the outage was logged once already
            with self._state_lock:
                down_since, self._down_since = self._down_since, None
        finally:
            self._probe_lock.release()
        logger.info(
            "rate limit storage %s:// answers again after %.0f s; counting in it again",
            self._scheme,
            started - (down_since if down_since is not None else started),
        )
        return (result,)

    def _redact(self, text: str) -> str:
        """*text* without the storage URI's password, for logs and errors."""
        try:
            password = urlsplit(self._uri).password
        except ValueError:  # unparsable: hide whatever follows the scheme
            return text.replace(self._uri, f"{self._scheme}://***")
        return text.replace(password, "***") if password else text

    def __repr__(self) -> str:
        limit = self._fixed.text if self._fixed is not None else self._tiers
        return (
            f"RateLimiter({limit!r}, storage={self._scheme}://, by={self._by!r}, "
            f"strategy={self._strategy_name!r})"
        )


# The checks of RateLimiter's arguments, one function each, so that an
# integration can name its own setting in the message (a Flask config key).


def _check_by(by: object) -> CountBy:
    """:raises ValueError: *by* is not ``"project"`` nor ``"key"``."""
    if by not in _BY:
        raise ValueError(
            f"by must be 'project' or 'key', not {by!r}"
            if isinstance(by, str)
            else f"by must be 'project' or 'key', not {type(by).__name__}"
        )
    return cast(CountBy, by)


def _check_strategy(strategy: object) -> Strategy:
    """:raises ValueError: *strategy* is not one of ``limits``' strategies."""
    if strategy not in STRATEGIES:
        names = ", ".join(repr(name) for name in sorted(STRATEGIES))
        raise ValueError(f"strategy must be one of {names}, not {strategy!r}")
    return cast(Strategy, strategy)


def _check_rate_limit(rate_limit: object, by: str) -> _Limit | TierFunction:
    """Return the parsed limit, or the tier callable as it is.

    :raises TypeError: neither a string nor a callable.
    :raises ValueError: an invalid limit string.
    """
    if isinstance(rate_limit, str):
        return _parse_limit(rate_limit, by)
    if callable(rate_limit):
        return cast("TierFunction", rate_limit)
    raise TypeError(
        "rate_limit must be a limit such as '100/minute' or a callable "
        f"taking an ApiKey, not {type(rate_limit).__name__}"
    )


def _check_storage_options(options: object) -> Mapping[str, Any]:
    """:raises TypeError: *options* is neither None nor a mapping."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            "storage_options must be a mapping of keyword arguments, not "
            f"{type(options).__name__}"
        )
    return options


def _check_storage_uri(uri: object) -> tuple[str, str, _Backend]:
    """Check a storage URI before any client is built.

    :returns: the URI, its scheme and what that scheme needs.
    :raises TypeError: *uri* is not a string.
    :raises ValueError: an unknown scheme, or an asyncio one.
    :raises ImportError: the scheme's client library is missing.
    """
    if not isinstance(uri, str):
        raise TypeError(f"storage_uri must be a string, not {type(uri).__name__}")
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme.startswith("async+"):
        raise ValueError(
            f"the {scheme}:// storages are for asyncio; give the URI without "
            "'async+' (the limiter calls its storage synchronously)"
        )
    backend = _BACKENDS.get(scheme)
    if backend is None:
        # The URI itself may hold a password: name only its scheme.
        raise ValueError(
            f"unsupported rate limit storage {scheme + '://' if scheme else 'URI'}: "
            "use memory://, redis://, rediss://, redis+sentinel://, "
            "redis+cluster://, valkey:// or memcached://"
        )
    if backend.module is not None and importlib.util.find_spec(backend.module) is None:
        raise ImportError(
            f"the {scheme}:// rate limit storage needs {backend.module}: {backend.extra}",
            name=backend.module,
        )
    return uri, scheme, backend
