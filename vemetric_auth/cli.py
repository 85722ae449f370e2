"""The ``vemetric-auth`` command: create, list and revoke API keys.

Run as ``vemetric-auth`` or ``python -m vemetric_auth`` on the SQL store named by
``--database-url`` (or ``VEMETRIC_AUTH_DATABASE_URL``, default
``sqlite:///vemetric_auth.db``); the Flask extension mounts the same commands
as ``flask vemetric-auth``, on the app's own store.

.. code-block:: text

    vemetric-auth create --project P --name N [--created-by U] [--json]
    vemetric-auth list --project P [--all] [--json]
    vemetric-auth revoke KEY_ID [--revoked-by U] [--json]

With ``--json``, stdout is exactly one JSON document. Any failure is one line
on stderr: exit status 2 for a wrong command line (missing or bad options,
invalid values), 1 for anything else (unknown key id, a store that fails or
cannot be reached). Nothing is written to the store when the input is refused.

The command line is built with click, Flask's own dependency, so that
``vemetric-auth`` and ``flask vemetric-auth`` are one implementation. click is
not needed by the core package: install the ``flask`` extra (and ``sql`` for
the SQL store) to use the command.

Security: the plaintext key of a new key is written to stdout of ``create``,
once, and nowhere else: not to stderr, not to logs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, NoReturn

import click

from .errors import KeyNotFound, StoreUnavailable
from .keys import holds_key
from .manager import KeyManager
from .records import ApiKey

__all__ = [
    "COMMANDS",
    "DEFAULT_DATABASE_URL",
    "CommandGroup",
    "cli",
    "main",
    "use_keys",
]

#: The store the command uses without ``--database-url`` or
#: ``VEMETRIC_AUTH_DATABASE_URL``: a SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///vemetric_auth.db"

# ctx.meta entry (shared by a command and its group) holding a callable that
# returns the KeyManager to use, given create_database (whether a missing
# SQLite file may be made). Opening the store is left to the subcommand, so
# that "--help" never touches a database.
_KEYS_META = "vemetric_auth.keys"


class _Failure(click.ClickException):
    """An error shown as ``Error: <message>``, one line; exit status 1."""

    def __init__(self, message: str) -> None:
        # One line whatever the message: drivers put newlines in theirs.
        super().__init__(" ".join(message.split()))


class _UsageFailure(_Failure):
    """A wrong command line, shown in one line; exit status 2, as click's."""

    exit_code = 2


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    # click shows a usage error as three lines (usage, hint, error); scripts
    # and log scrapers get one here, with click's exit status 2.
    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    try:
        yield
    except click.UsageError as error:
        if isinstance(error, no_args_is_help):
            raise  # a bare group name shows its help, as click intends
        message = error.format_message()
        if error.ctx is not None:
            message += f" (see '{error.ctx.command_path} --help')"
        raise _UsageFailure(message) from None


class CommandGroup(click.Group):
    """A click group whose errors, its subcommands' included, are one line.

    Used for both ``vemetric-auth`` and ``flask vemetric-auth``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse the group's own options; a usage error becomes one line."""
        with _one_line_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; a usage error in its arguments becomes one line."""
        with _one_line_usage_errors():
            return super().invoke(ctx)


def use_keys(opener: Callable[[], KeyManager]) -> None:
    """Make the running group's subcommands use the manager *opener* returns.

    Call it from a group's callback; *opener* runs only when a subcommand
    needs the store.
    """
    ctx = click.get_current_context()
    # An application's store is opened as the application opens it.
    ctx.meta[_KEYS_META] = lambda *, create_database: opener()


def _keys(ctx: click.Context, *, existing: bool = True) -> KeyManager:
    """Open the group's key store; with *existing*, refuse to make a new SQLite file.

    ``list`` and ``revoke`` read an existing store: a mistyped file name
    should be an error, not a new, empty database. The store raises
    :exc:`FileNotFoundError` on first use then; see :func:`_store_failure`.
    """
    opener: Callable[..., KeyManager] | None = ctx.meta.get(_KEYS_META)
    if opener is None:
        raise RuntimeError("vemetric-auth commands run under a group calling use_keys")
    with _reported_errors():
        return opener(create_database=not existing)


@contextmanager
def _reported_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one-line messages."""
    try:
        yield
    except KeyNotFound as error:
        raise _Failure(str(error)) from None
    except StoreUnavailable as error:
        raise _Failure(_store_failure(error)) from None
    except ValueError as error:
        # KeyManager validates its input before it writes anything.
        raise _UsageFailure(str(error)) from None


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


def _open_sql_keys(database_url: str, *, create_database: bool) -> KeyManager:
    try:
        from sqlalchemy.exc import ArgumentError

        from .stores.sql import SQLKeyStore
    except ModuleNotFoundError:
        raise _Failure(
            "the SQL key store needs SQLAlchemy: pip install 'vemetric-auth[sql]'"
        ) from None
    # SQLKeyStore parses the URL and builds its engine here; it connects (and
    # creates its table) only on first use, after the input was checked.
    try:
        store = SQLKeyStore(database_url, create_database=create_database)
    except ArgumentError as error:
        # Unparsable, or an unknown dialect (NoSuchModuleError is one too).
        raise _UsageFailure(
            f"--database-url (or VEMETRIC_AUTH_DATABASE_URL) is not usable: "
            f"{_first_line(error)}"
        ) from None
    except Exception as error:
        # A missing driver, say. SQLAlchemy's messages name the dialect and
        # driver, never the password.
        raise _Failure(f"the key store failed: {_first_line(error)}") from None
    return KeyManager(store)


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


def _status(record: ApiKey) -> str:
    if record.revoked_at is None:
        return "active"
    status = f"revoked {_when(record.revoked_at)}"
    if record.revoked_by is not None:
        status += f" by {_text(record.revoked_by)}"
    return status


def _record_lines(record: ApiKey) -> list[str]:
    fields = [
        ("id", record.id),
        ("project", _text(record.project_id)),
        ("name", _text(record.name)),
        ("prefix", record.prefix),
        ("created", _when(record.created_at)),
        ("created by", _text(record.created_by)),
        ("status", _status(record)),
    ]
    return [f"{label + ':':<12}{value}" for label, value in fields]


def _table(records: Sequence[ApiKey]) -> list[str]:
    header = ("ID", "NAME", "PREFIX", "CREATED", "CREATED BY", "STATUS")
    rows = [
        (
            _text(record.id),
            _text(record.name),
            record.prefix,
            _when(record.created_at),
            _text(record.created_by),
            "revoked" if record.revoked else "active",
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


# -- commands ----------------------------------------------------------------

_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)


@click.command(short_help="Create a key and print it, this once.")
@click.option(
    "--project",
    "project_id",
    required=True,
    metavar="PROJECT_ID",
    help="The project the key gives access to.",
)
@click.option(
    "--name",
    required=True,
    help="What the key is for, 1 to 100 characters, e.g. 'Production dashboard'.",
)
@click.option("--created-by", metavar="WHO", help="Who creates the key.")
@_json_option
@click.pass_context
def create(
    ctx: click.Context,
    project_id: str,
    name: str,
    created_by: str | None,
    as_json: bool,
) -> None:
    """Create a key for a project and print it, this once, with its record."""
    if sys.stdout is None or sys.stdout.closed:
        # The key would be created and never seen.
        raise _Failure("standard output is closed: the new key could not be shown")
    keys = _keys(ctx, existing=False)
    with _reported_errors():
        issued = keys.create(project_id, name, created_by=created_by)
    record = issued.record
    try:
        if as_json:
            _emit(document={"key": issued.key, "record": record.to_dict()})
        else:
            _emit(
                [
                    "API key created. Copy it now: it is shown only this once.",
                    "",
                    f"    {issued.key}",
                    "",
                    *_record_lines(record),
                ]
            )
    except OSError as error:
        _unseen_key(keys, record, error)


@click.command("list", short_help="List a project's keys, newest first.")
@click.option(
    "--project",
    "project_id",
    required=True,
    metavar="PROJECT_ID",
    help="The project whose keys to list.",
)
@click.option(
    "--all", "include_revoked", is_flag=True, help="Include revoked keys too."
)
@_json_option
@click.pass_context
def list_keys(
    ctx: click.Context, project_id: str, include_revoked: bool, as_json: bool
) -> None:
    """List a project's keys, newest first: id, name, prefix, created, creator, status.

    Revoked keys are left out unless --all is given. The keys themselves
    are never shown: they are not stored.
    """
    keys = _keys(ctx)
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
@click.argument("key_id")
@click.option("--revoked-by", metavar="WHO", help="Who revokes the key.")
@_json_option
@click.pass_context
def revoke(
    ctx: click.Context, key_id: str, revoked_by: str | None, as_json: bool
) -> None:
    """Revoke the key KEY_ID (its id, as 'list' shows it) for good.

    Revoking a revoked key changes nothing and prints its record as it is.
    """
    if holds_key(key_id):
        # Someone pasted the key itself: refuse it without echoing it into an
        # error message, a log or a SQL statement (KeyManager.revoke would too).
        raise _UsageFailure(
            "that is an API key, not a key id: give the id that list shows"
        )
    keys = _keys(ctx)
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
COMMANDS: tuple[click.Command, ...] = (create, list_keys, revoke)


@click.group("vemetric-auth", cls=CommandGroup)
@click.option(
    "--database-url",
    envvar="VEMETRIC_AUTH_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    metavar="URL",
    help="SQLAlchemy URL of the key store; VEMETRIC_AUTH_DATABASE_URL if not given.",
)
def cli(database_url: str) -> None:
    """Create, list and revoke vem_ API keys in a SQL key store."""
    ctx = click.get_current_context()
    ctx.meta[_KEYS_META] = functools.partial(_open_sql_keys, database_url)


for _command in COMMANDS:
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``vemetric-auth`` command line; exits with its status."""
    cli.main(args=None if argv is None else list(argv), prog_name="vemetric-auth")
