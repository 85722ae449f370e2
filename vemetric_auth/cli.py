"""The ``vemetric-auth`` command: create, roll, list and revoke API keys.

Run as ``vemetric-auth`` or ``python -m vemetric_auth`` on the SQL store named by
``--database-url`` (or ``VEMETRIC_AUTH_DATABASE_URL``, default
``sqlite:///vemetric_auth.db``); the Flask extension mounts the same commands
as ``flask vemetric-auth``, on the app's own store.

.. code-block:: text

    vemetric-auth create --project P --name N [--created-by U]
                         [--expires-in 90d | --expires-at 2026-12-31T00:00Z] [--json]
    vemetric-auth roll KEY_ID [--overlap 24h] [--rolled-by U]
                       [--expires-in 90d | --expires-at ISO8601] [--json]
    vemetric-auth list --project P [--all] [--json]
    vemetric-auth revoke KEY_ID [--revoked-by U] [--json]

Durations are a whole number with ``s``, ``m``, ``h`` or ``d``, or ``0``.
``--expires-at`` takes ISO 8601 with a UTC offset (``Z`` or ``+02:00``): a
time without one is refused, as it could be read in more than one time zone.

With ``--json``, stdout is exactly one JSON document. Any failure is one line
on stderr: exit status 2 for a wrong command line (missing or bad options,
invalid values), 1 for anything else (unknown key id, a store that fails or
cannot be reached). Nothing is written to the store when the input is refused.

The command line is built with click, Flask's own dependency, so that
``vemetric-auth`` and ``flask vemetric-auth`` are one implementation: each
group puts a :class:`KeysOpener` in ``ctx.obj``, and the commands open the
store through it only once their input is checked. click is not needed by the
core package: install the ``cli`` extra (with ``postgres`` for a PostgreSQL
store: ``pip install 'vemetric-auth[cli,postgres]'``).

Security: the plaintext key of a new key is written to stdout of ``create``
(or ``roll``), once, and nowhere else: not to stderr, not to logs. A new key
works only once it has been written out: it is stored inactive, printed, then
activated (see :meth:`KeyManager.activate <vemetric_auth.KeyManager.activate>`),
so an interrupted command (Ctrl-C or SIGTERM during a slow write, a closed
pipe, a store that answers too late) never leaves a working key nobody saw.
On a store without :class:`~vemetric_auth.stores.base.RollingKeyStore`'s
methods, ``create`` stores the key active and revokes it if it cannot be
written out, as earlier releases did.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

import click

from ._extras import install_hint
from .errors import KeyNotFound, StoreUnavailable
from .keys import holds_key
from .manager import KeyManager
from .records import ApiKey, IssuedKey
from .stores.base import RollingKeyStore

__all__ = [
    "COMMANDS",
    "DEFAULT_DATABASE_URL",
    "CommandGroup",
    "KeysOpener",
    "cli",
    "main",
]

#: The store the command uses without ``--database-url`` or
#: ``VEMETRIC_AUTH_DATABASE_URL``: a SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///vemetric_auth.db"


class KeysOpener:
    """The ``ctx.obj`` of a group of key commands: opens its key store on demand.

    A group's callback sets ``ctx.obj = KeysOpener(open_keys)``; its commands
    call *open_keys* only when they need the store, after their input was
    checked, so that ``--help`` or a refused command never touches a database.

    :param open_keys: Returns the :class:`~vemetric_auth.KeyManager` to use;
        it may raise :class:`click.ClickException` when the store cannot be
        opened.
    :param open_existing_keys: Returns it for commands that read an existing
        store (``list``, ``revoke``), without making a store that does not
        exist yet, so that a mistyped SQLite path is an error rather than a
        new, empty database. ``None``: *open_keys* serves them too.
    """

    def __init__(
        self,
        open_keys: Callable[[], KeyManager],
        *,
        open_existing_keys: Callable[[], KeyManager] | None = None,
    ) -> None:
        self._open_keys = open_keys
        self._open_existing_keys = open_existing_keys or open_keys

    def open(self, *, existing: bool = False) -> KeyManager:
        """Return the group's :class:`~vemetric_auth.KeyManager`; with
        *existing*, only if its store exists already."""
        return self._open_existing_keys() if existing else self._open_keys()


_pass_opener = click.make_pass_decorator(KeysOpener)


class CommandGroup(click.Group):
    """A click group that shows every usage error in one line, exit status 2.

    click shows a usage error in three lines: the usage, a hint and the
    error. Scripts and log scrapers get one here, ``Error: <message> (see
    '<command> --help')``, for errors in the group's own options and in its
    subcommands alike. Used for both ``vemetric-auth`` and ``flask
    vemetric-auth``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse the group's own options, showing a usage error in one line."""
        with _usage_errors_in_one_line(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, showing a usage error in one line."""
        with _usage_errors_in_one_line(ctx):
            return super().invoke(ctx)


@contextmanager
def _usage_errors_in_one_line(ctx: click.Context) -> Iterator[None]:
    # The one place a usage error is shown: it is click's own exception,
    # raised by click or by a parameter's type or callback.
    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    try:
        yield
    except click.UsageError as error:
        if isinstance(error, no_args_is_help):
            raise  # a bare group name shows its help, as click intends
        message = " ".join(error.format_message().split())
        if error.ctx is not None:
            message += f" (see '{error.ctx.command_path} --help')"
        click.echo(f"Error: {message}", err=True)
        ctx.exit(error.exit_code)


class _Failure(click.ClickException):
    """An error shown as ``Error: <message>``, one line; exit status 1."""

    def __init__(self, message: str) -> None:
        # One line whatever the message: drivers put newlines in theirs.
        super().__init__(" ".join(message.split()))


def _text_arg(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """Refuse a value that is not text: bytes of another encoding than UTF-8."""
    if value is not None:
        _check_text(value)
    return value


def _key_id_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Refuse a pasted API key where its id belongs, without echoing it."""
    if holds_key(value):
        # Refused before it reaches an error message, a log or a SQL
        # statement (KeyManager.revoke would refuse it too).
        raise click.BadParameter(
            "that is an API key, not a key id: give the id that list shows"
        )
    _check_text(value)
    return value


def _check_text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Python decodes such bytes of argv to lone surrogates, which no
        # store can keep: a usage error, not a store failure.
        raise click.BadParameter("not valid UTF-8 text") from None


def _keys(opener: KeysOpener, *, existing: bool = True) -> KeyManager:
    """Open the group's key store; with *existing*, refuse to make a new SQLite file.

    ``list`` and ``revoke`` read an existing store: a mistyped file name
    should be an error, not a new, empty database. The store raises
    :exc:`FileNotFoundError` on first use then; see :func:`_store_failure`.
    """
    with _reported_errors():
        return opener.open(existing=existing)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one-line messages."""
    try:
        yield
    except KeyNotFound as error:
        raise _Failure(str(error)) from None
    except StoreUnavailable as error:
        raise _Failure(_store_failure(error)) from None
    except TypeError as error:
        # A store that lacks what the command needs (rolling): KeyManager
        # names what is missing.
        raise _Failure(str(error)) from None
    except ValueError as error:
        # KeyManager validates its input before it writes anything.
        raise click.UsageError(str(error)) from None


def _store_failure(error: StoreUnavailable) -> str:
    cause = error.__cause__
    if cause is None:
        return "the key store failed"
    if isinstance(cause, FileNotFoundError) and cause.filename:
        # A SQLite file opened with create_database=False.
        return f"no key store at {cause.filename}: check --database-url"
    return f"the key store failed: {_first_line(cause)}"


def _first_line(error: BaseException) -> str:
    # The first line names what failed; SQLAlchemy's further lines carry the
    # statement and a link to its documentation.
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _open_sql_keys(
    database_url: str, ctx: click.Context, *, create_database: bool
) -> KeyManager:
    """Open the store at *database_url*; *ctx* is the context of its option."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        from .stores.sql import SQLKeyStore
    except ModuleNotFoundError as error:
        if error.name != "sqlalchemy":
            raise
        raise _Failure(
            f"the vemetric-auth command needs SQLAlchemy: {install_hint('cli')}"
        ) from None
    # SQLKeyStore parses the URL and builds its engine here; it connects (and
    # creates its table) only on first use, after the input was checked.
    try:
        store = SQLKeyStore(database_url, create_database=create_database)
    except ArgumentError as error:
        # Unparsable, or an unknown dialect (NoSuchModuleError is one too).
        raise click.BadParameter(
            _first_line(error),
            ctx=ctx,
            param_hint="--database-url (or VEMETRIC_AUTH_DATABASE_URL)",
        ) from None
    except ModuleNotFoundError as error:
        # The URL's database driver, imported as the engine is built.
        backend = make_url(database_url).get_backend_name()
        raise _Failure(_missing_driver(error.name, backend)) from None
    except Exception as error:
        # SQLAlchemy's messages name the dialect and driver, never the password.
        raise _Failure(f"the key store failed: {_first_line(error)}") from None
    keys = KeyManager(store)
    # Run last first: the manager (its threads) when the command ends, then
    # the store's connections.
    ctx.call_on_close(store.close)
    ctx.call_on_close(keys.close)
    return keys


def _missing_driver(driver: str | None, backend: str) -> str:
    if driver == "psycopg":
        return (
            "the PostgreSQL driver psycopg is not installed: "
            f"{install_hint('cli', 'postgres')}"
        )
    if backend == "postgresql":
        # Before SQLAlchemy 2.1, postgresql:// alone means psycopg2.
        return (
            f"the PostgreSQL driver {driver} is not installed: install it, or "
            "use psycopg 3 with a postgresql+psycopg:// URL and "
            f"{install_hint('cli', 'postgres')}"
        )
    return f"the database driver {driver} is not installed: install it"


# -- durations and times -------------------------------------------------------

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration_arg(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> timedelta | None:
    """A duration: a whole number with ``s``, ``m``, ``h`` or ``d`` (``90d``,
    ``12h``, ``30m``, ``45s``), or ``0``."""
    if value is None:
        return None
    text = value.strip()
    if text == "0":
        return timedelta(0)
    match = _DURATION.fullmatch(text)
    if match is None:
        raise click.BadParameter(
            f"{_text(text)!r} is not a duration: give a number with s, m, h or d, "
            "such as 90d, 12h or 30m, or 0"
        )
    number, unit = match.groups()
    try:
        return timedelta(**{_UNITS[unit]: int(number)})
    except OverflowError:
        raise click.BadParameter(f"{text} is too long a duration") from None


def _moment_arg(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """A moment: ISO 8601 with a UTC offset, e.g. ``2026-12-31T00:00:00Z`` or
    ``2026-12-31T01:00+01:00``; returned in UTC.

    A time without an offset is refused: whether it means UTC or the local
    time of the machine that runs the command is a guess, and an expiry
    guessed wrong by hours is a key that stops early or works too long.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{_text(text)!r} is not an ISO 8601 time such as 2026-12-31T00:00:00Z"
        ) from None
    if moment.utcoffset() is None:
        raise click.BadParameter(
            "give a UTC offset, such as 2026-12-31T00:00:00Z or "
            "2026-12-31T01:00:00+01:00: a time without one is ambiguous"
        )
    return moment.astimezone(timezone.utc)


def _expiry(
    expires_in: timedelta | None, expires_at: datetime | None
) -> datetime | None:
    """The new key's expiry from ``--expires-in`` or ``--expires-at``."""
    if expires_in is not None and expires_at is not None:
        raise click.UsageError(
            "--expires-in and --expires-at are mutually exclusive: give one"
        )
    if expires_in is None:
        if expires_at is not None and expires_at <= datetime.now(timezone.utc):
            raise click.BadParameter(
                "that time has passed: give one in the future",
                param_hint="'--expires-at'",
            )
        return expires_at
    if expires_in <= timedelta(0):
        raise click.BadParameter(
            "the key would expire at once: give a duration above 0",
            param_hint="'--expires-in'",
        )
    try:
        return datetime.now(timezone.utc) + expires_in
    except OverflowError:
        raise click.BadParameter(
            "that is too far in the future", param_hint="'--expires-in'"
        ) from None


# -- output ------------------------------------------------------------------


def _text(value: str | None) -> str:
    # A record written to the store by other means could hold terminal
    # escapes; never send them to a terminal.
    if value is None:
        return "-"
    return "".join(char if char.isprintable() else "\ufffd" for char in value)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(record: ApiKey) -> str:
    """``active``, ``expired`` or ``revoked``, as of now."""
    if record.revoked_at is not None:
        return "revoked"
    return "expired" if record.expired else "active"


def _status(record: ApiKey) -> str:
    state = _state(record)
    if state == "revoked":
        status = f"revoked {_when(record.revoked_at)}"
        if record.revoked_by is not None:
            status += f" by {_text(record.revoked_by)}"
        return status
    if state == "expired":
        return f"expired {_when(record.expires_at)}"
    return state


def _record_lines(record: ApiKey) -> list[str]:
    fields = [
        ("id", record.id),
        ("project", _text(record.project_id)),
        ("name", _text(record.name)),
        ("prefix", record.prefix),
        ("created", _when(record.created_at)),
        ("created by", _text(record.created_by)),
        ("last used", _when(record.last_used_at)),
        ("expires", "never" if record.expires_at is None else _when(record.expires_at)),
        ("status", _status(record)),
    ]
    return [f"{label + ':':<12}{value}" for label, value in fields]


def _table(records: Sequence[ApiKey]) -> list[str]:
    header = (
        "ID",
        "NAME",
        "PREFIX",
        "CREATED",
        "CREATED BY",
        "LAST USED",
        "EXPIRES",
        "STATUS",
    )
    rows = [
        (
            _text(record.id),
            _text(record.name),
            record.prefix,
            _when(record.created_at),
            _text(record.created_by),
            _when(record.last_used_at),
            "never" if record.expires_at is None else _when(record.expires_at),
            _state(record),
        )
        for record in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in [header, *rows]
    ]


def _emit(lines: Sequence[str] | None = None, *, document: Any = None) -> None:
    # Everything is composed first and written at once: a failure never
    # leaves half an answer on stdout.
    if lines is None:
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo("\n".join(lines))


def _unseen_key(keys: KeyManager, record: ApiKey, error: OSError) -> NoReturn:
    """The new key could not be written out: revoke it, so no unseen key stays
    active, and say so in one line."""
    # What is left in stdout's buffer must not be written again at exit.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    try:
        keys.revoke(record.id, revoked_by="vemetric-auth: the key could not be shown")
    except Exception:
        raise _Failure(
            f"could not write the new key ({error.strerror}), nor revoke it: "
            f"revoke key {record.id}"
        ) from None
    raise _Failure(
        f"could not write the new key ({error.strerror}); key {record.id} was revoked"
    )


def _refuse_closed_stdout() -> None:
    if sys.stdout is None or sys.stdout.closed:
        # The key would be created and never seen.
        raise _Failure("standard output is closed: the new key could not be shown")


def _show_new_key(
    keys: KeyManager,
    issued: IssuedKey,
    *,
    headline: str,
    as_json: bool,
    pending: bool,
) -> None:
    """Write the new key out, then (if *pending*) activate it: it works only
    once written."""
    record = issued.record
    try:
        if as_json:
            _emit(document={"key": issued.key, "record": record.to_dict()})
        else:
            _emit([headline, "", f"    {issued.key}", "", *_record_lines(record)])
    except OSError as error:
        _unseen_key(keys, record, error)
    if not pending:
        return
    try:
        keys.activate(issued)
    except StoreUnavailable as error:
        # It was shown: whether it works is for the store to say.
        raise _Failure(
            f"could not confirm that the new key {record.id} was activated "
            f"({_store_failure(error)}): 'list' shows whether it is active"
        ) from None
    except (KeyNotFound, ValueError) as error:
        raise _Failure(
            f"the new key {record.id} was not activated and never works ({error})"
        ) from None


# -- commands ----------------------------------------------------------------

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)
_expires_in_option = click.option(
    "--expires-in",
    callback=_duration_arg,
    metavar="DURATION",
    help="The new key stops working after this long: 90d, 12h, 30m, 45s.",
)
_expires_at_option = click.option(
    "--expires-at",
    callback=_moment_arg,
    metavar="ISO8601",
    help="The new key stops working then, e.g. 2026-12-31T00:00:00Z "
    "(a UTC offset is needed).",
)


@click.command(short_help="Create a key and print it, this once.")
@click.option(
    "--project",
    "project_id",
    callback=_text_arg,
    required=True,
    metavar="PROJECT_ID",
    help="The project the key gives access to.",
)
@click.option(
    "--name",
    callback=_text_arg,
    required=True,
    help="What the key is for, 1 to 100 characters, e.g. 'Production dashboard'.",
)
@click.option(
    "--created-by", callback=_text_arg, metavar="WHO", help="Who creates the key."
)
@_expires_in_option
@_expires_at_option
@_json_option
@_pass_opener
def create(
    opener: KeysOpener,
    project_id: str,
    name: str,
    created_by: str | None,
    expires_in: timedelta | None,
    expires_at: datetime | None,
    as_json: bool,
) -> None:
    """Create a key for a project and print it, this once, with its record.

    The key never expires unless --expires-in or --expires-at is given. It
    works once it has been written out.
    """
    expires_at = _expiry(expires_in, expires_at)
    _refuse_closed_stdout()
    keys = _keys(opener, existing=False)
    # A store that cannot activate a key later gets it active at once, and
    # revoked if it cannot be shown.
    pending = isinstance(keys.store, RollingKeyStore)
    with _reported_errors():
        issued = keys.create(
            project_id,
            name,
            created_by=created_by,
            expires_at=expires_at,
            pending=pending,
        )
    _show_new_key(
        keys,
        issued,
        headline="API key created. Copy it now: it is shown only this once.",
        as_json=as_json,
        pending=pending,
    )


@click.command(short_help="Replace a key by a new one, the old one expiring later.")
@click.argument("key_id", callback=_key_id_arg)
@click.option(
    "--overlap",
    callback=_duration_arg,
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long the old key keeps working (0: it is revoked at once).",
)
@click.option(
    "--rolled-by", callback=_text_arg, metavar="WHO", help="Who rolls the key."
)
@_expires_in_option
@_expires_at_option
@_json_option
@_pass_opener
def roll(
    opener: KeysOpener,
    key_id: str,
    overlap: timedelta,
    rolled_by: str | None,
    expires_in: timedelta | None,
    expires_at: datetime | None,
    as_json: bool,
) -> None:
    """Replace the key KEY_ID by a new one and print it, this once.

    The new key has the old one's project and name. The old key keeps working
    for the --overlap (24h unless given), or until its own earlier expiry,
    then stops by itself: deploy the new key meanwhile. --overlap 0 revokes
    it at once. The new key never expires unless --expires-in or
    --expires-at is given. Nothing changes until the new key has been
    written out.
    """
    expires_at = _expiry(expires_in, expires_at)
    _refuse_closed_stdout()
    keys = _keys(opener)
    with _reported_errors():
        if keys.get(key_id).revoked:
            # Not a usage error: the key is as the store has it.
            raise _Failure(f"key {key_id} is revoked: a revoked key can not be rolled")
        issued = keys.roll(
            key_id,
            overlap=overlap,
            rolled_by=rolled_by,
            expires_at=expires_at,
            pending=True,
        )
    _show_new_key(
        keys,
        issued,
        headline="API key rolled. Copy the new key now: it is shown only this once.",
        as_json=as_json,
        pending=True,
    )
    if as_json:
        return
    if overlap == timedelta(0):
        line = f"The old key {key_id} is revoked."
    else:
        try:
            old = keys.get(key_id)
        except (KeyNotFound, StoreUnavailable):
            line = f"The old key {key_id} stops working within {overlap}."
        else:
            line = f"The old key {old.id} stops working at {_when(old.expires_at)}."
    with contextlib.suppress(OSError):
        _emit(["", line])


@click.command("list", short_help="List a project's keys, newest first.")
@click.option(
    "--project",
    "project_id",
    callback=_text_arg,
    required=True,
    metavar="PROJECT_ID",
    help="The project whose keys to list.",
)
@click.option(
    "--all", "include_revoked", is_flag=True, help="Include revoked keys too."
)
@_json_option
@_pass_opener
def list_keys(
    opener: KeysOpener, project_id: str, include_revoked: bool, as_json: bool
) -> None:
    """List a project's keys, newest first: id, name, prefix, created, creator,
    last use, expiry and status (active, expired or revoked).

    Revoked keys are left out unless --all is given; expired keys are listed.
    Last use is recorded about once a minute. The keys themselves are never
    shown: they are not stored.
    """
    keys = _keys(opener)
    with _reported_errors():
        records = keys.list(project_id, include_revoked=include_revoked)
    if as_json:
        _emit(document=[record.to_dict() for record in records])
    elif not records:
        which = "API keys" if include_revoked else "active API keys"
        _emit([f"No {which} for project {_text(project_id)}."])
    else:
        _emit(_table(records))


@click.command(short_help="Revoke a key for good.")
@click.argument("key_id", callback=_key_id_arg)
@click.option(
    "--revoked-by", callback=_text_arg, metavar="WHO", help="Who revokes the key."
)
@_json_option
@_pass_opener
def revoke(
    opener: KeysOpener, key_id: str, revoked_by: str | None, as_json: bool
) -> None:
    """Revoke the key KEY_ID (its id, as 'list' shows it) for good.

    Revoking a revoked key changes nothing and prints its record as it is.
    """
    keys = _keys(opener)
    started = datetime.now(timezone.utc)
    with _reported_errors():
        record = keys.revoke(key_id, revoked_by=revoked_by)
    if as_json:
        _emit(document=record.to_dict())
        return
    revoked_at = record.revoked_at
    if revoked_at is not None and revoked_at < started:
        headline = "API key was already revoked; nothing changed."
    else:
        headline = "API key revoked."
    _emit([headline, "", *_record_lines(record)])


#: The subcommands, shared by ``vemetric-auth`` and ``flask vemetric-auth``.
COMMANDS: tuple[click.Command, ...] = (create, roll, list_keys, revoke)


@click.group("vemetric-auth", cls=CommandGroup)
@click.option(
    "--database-url",
    envvar="VEMETRIC_AUTH_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    metavar="URL",
    help="SQLAlchemy URL of the key store; VEMETRIC_AUTH_DATABASE_URL if not given.",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str) -> None:
    """Create, roll, list and revoke vem_ API keys in a SQL key store."""
    ctx.obj = KeysOpener(
        functools.partial(_open_sql_keys, database_url, ctx, create_database=True),
        open_existing_keys=functools.partial(
            _open_sql_keys, database_url, ctx, create_database=False
        ),
    )


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``vemetric-auth`` command line; exits with its status."""
    cli.main(args=None if argv is None else list(argv), prog_name="vemetric-auth")
