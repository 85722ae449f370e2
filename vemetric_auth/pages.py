"""Key management pages: a Flask blueprint a host app mounts behind its login.

The "Settings > API Keys" pages of a project: the list of its keys (with
their last use, expiry and status), a form that creates one and shows it
once, a confirmation before revoking one, and a form that rolls one over to a
new key after an overlap of the user's choosing.

.. code-block:: python

    from flask import Flask, abort, redirect, request, session, url_for
    from vemetric_auth.flask import VemetricAuth, key_pages

    app = Flask(__name__)
    app.secret_key = "..."  # the pages' CSRF tokens live in the session
    auth = VemetricAuth(app)

    def can_manage(project_id):
        user = session.get("user")
        if user is None:  # not logged in: the app's own login page
            abort(redirect(url_for("login", next=request.path)))
        return user if owns(user, project_id) else None  # None: 403

    app.register_blueprint(
        key_pages(auth, authorize=can_manage), url_prefix="/settings"
    )
    # GET /settings/projects/<project_id>/keys

The templates live in the package under ``templates/vemetric_auth/`` and the
stylesheet and copy script under ``static/vemetric_auth/``: an app overrides
a template by placing its own at the same path in its template folder.

Security: every change is a ``POST`` carrying a CSRF token signed with the
app's ``secret_key`` (itsdangerous) and bound to a random value in the
session; a missing, wrong or stale token answers ``400`` and changes
nothing. Every response of the pages is ``Cache-Control: no-store`` and
``Referrer-Policy: no-referrer`` under a Content-Security-Policy that allows
no inline script or style. Names are HTML-escaped. The plaintext of a new key
is only in the body of the response to the ``POST`` that made it: never in a
URL, a redirect, the session, a flash message or a log record. On a store
with :class:`~vemetric_auth.RollingKeyStore`'s methods, a new key is stored
inactive and made to work only once its page is rendered.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import shlex
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, TypeVar
from urllib.parse import quote

from ._extras import install_hint

try:
    from flask import (
        Blueprint,
        abort,
        current_app,
        flash,
        g,
        redirect,
        render_template,
        request,
        session,
        url_for,
    )
    from itsdangerous import BadData, URLSafeTimedSerializer
except ModuleNotFoundError as error:
    if error.name not in ("flask", "itsdangerous"):
        raise  # a broken installation: its own error says more
    raise ImportError(
        f"vemetric_auth.pages needs Flask: {install_hint('flask')}", name=error.name
    ) from None
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from .errors import KeyNotFound, StoreUnavailable
from .keys import holds_key
from .manager import KeyManager
from .records import (
    MAX_NAME_LENGTH,
    ApiKey,
    IssuedKey,
    _check_actor,
    _check_id,
    _check_key_id,
    _check_name,
)
from .stores.base import RollingKeyStore

if TYPE_CHECKING:
    from .flask import VemetricAuth

__all__ = ["CSRF_TIME_LIMIT", "SECURITY_HEADERS", "key_pages"]

#: Seconds a form's CSRF token stays good; an older form answers ``400``.
CSRF_TIME_LIMIT = 3600

#: The headers every response of the pages carries (static files apart from
#: ``Cache-Control``).
SECURITY_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

# Session entry holding the random value CSRF tokens are bound to; the
# session holds nothing else of the pages but flashed notices.
_CSRF_SESSION_KEY = "_vemetric_auth_csrf"
_CSRF_FIELD = "csrf_token"
_CSRF_SALT = "vemetric_auth.pages.csrf"
_FLASH_CATEGORY = "vemetric_auth"
_RETRY_AFTER = "5"
# Who revoked a new key whose page could not be rendered, as the record says.
_NOT_SHOWN = "vemetric-auth: the page showing it failed"

#: A new key's expiry choices: form value, label, lifetime (``None``: never).
_EXPIRIES: tuple[tuple[str, str, timedelta | None], ...] = (
    ("never", "Never", None),
    ("7d", "In 7 days", timedelta(days=7)),
    ("30d", "In 30 days", timedelta(days=30)),
    ("90d", "In 90 days", timedelta(days=90)),
    ("365d", "In a year", timedelta(days=365)),
)
#: How long a rolled key keeps working: form value, label, overlap.
_OVERLAPS: tuple[tuple[str, str, timedelta], ...] = (
    ("0", "At once: revoke it now", timedelta(0)),
    ("1h", "In 1 hour", timedelta(hours=1)),
    ("24h", "In 24 hours", timedelta(hours=24)),
    ("7d", "In 7 days", timedelta(days=7)),
    ("30d", "In 30 days", timedelta(days=30)),
)
_DEFAULT_OVERLAP = "24h"

logger = logging.getLogger("vemetric_auth")

_T = TypeVar("_T")

#: Who is acting: what ``authorize`` returned for the request's project.
Authorize = Callable[[str], "str | None"]


def key_pages(
    keys: VemetricAuth | KeyManager,
    *,
    authorize: Authorize,
    name: str = "vemetric_auth_pages",
    api_url: str | Callable[[str], str] | None = None,
) -> Blueprint:
    """Return a blueprint of the key management pages of one project per URL.

    Register it under a prefix of the app's choosing; its pages are then
    ``<prefix>/projects/<project_id>/keys`` (the list; endpoint
    ``<name>.list_keys``), ``.../keys/new`` (create),
    ``.../keys/<key_id>/revoke`` (confirm and revoke) and
    ``.../keys/<key_id>/roll`` (choose the overlap and roll).

    Expiry and rolling need a store with
    :class:`~vemetric_auth.RollingKeyStore`'s methods (the shipped ones have
    them): on a store without them the create form asks for no expiry and
    the list offers no roll.

    :param keys: The app's :class:`~vemetric_auth.flask.VemetricAuth`: the
        pages then use the key manager of the app they run in, and need no
        API key (the blueprint is marked :meth:`~VemetricAuth.exempt`). Or a
        :class:`~vemetric_auth.KeyManager`, for an app protected some other
        way, which then must not ask an API key of these pages itself.
    :param authorize: Called with the project id of every request to the
        pages (static files apart), before anything else is done. Returns the
        acting user's name, stored as the ``created_by`` and ``revoked_by`` of
        the keys they create, roll and revoke; or ``None`` to refuse
        (``403``). To
        send an anonymous user to the app's login page instead, raise the
        redirect: ``flask.abort(flask.redirect(url_for("login")))``.
    :param name: The blueprint's name, the first part of its endpoints; give
        another to mount the pages twice in one app.
    :param api_url: The URL the ``curl`` example of a new key calls: a
        string, or a function of the project id returning one. ``None``: the
        root URL of the app.

    The pages need the app's ``secret_key``: their CSRF tokens are bound to a
    value in Flask's session. A request that cannot reach the key store gets
    a ``503`` page.
    """
    if not callable(authorize):
        raise TypeError("authorize must be a function of the project id")
    if api_url is not None and not (isinstance(api_url, str) or callable(api_url)):
        raise TypeError("api_url must be a str, a function of the project id or None")
    pages = _KeyPages(keys, authorize, api_url)
    blueprint = Blueprint(
        name, __name__, template_folder="templates", static_folder="static"
    )
    blueprint.before_request(pages.guard)
    blueprint.after_request(_add_security_headers)
    blueprint.context_processor(pages.template_context)
    blueprint.register_error_handler(HTTPException, _error_page)
    blueprint.register_error_handler(StoreUnavailable, _unavailable_page)
    blueprint.add_url_rule(
        "/projects/<project_id>/keys", "list_keys", pages.list_keys, methods=["GET"]
    )
    blueprint.add_url_rule(
        "/projects/<project_id>/keys",
        "create_key",
        pages.create_key,
        methods=["POST"],
    )
    blueprint.add_url_rule(
        "/projects/<project_id>/keys/new", "new_key", pages.new_key, methods=["GET"]
    )
    blueprint.add_url_rule(
        "/projects/<project_id>/keys/<key_id>/revoke",
        "confirm_revoke",
        pages.confirm_revoke,
        methods=["GET"],
    )
    blueprint.add_url_rule(
        "/projects/<project_id>/keys/<key_id>/revoke",
        "revoke_key",
        pages.revoke_key,
        methods=["POST"],
    )
    blueprint.add_url_rule(
        "/projects/<project_id>/keys/<key_id>/roll",
        "confirm_roll",
        pages.confirm_roll,
        methods=["GET"],
    )
    blueprint.add_url_rule(
        "/projects/<project_id>/keys/<key_id>/roll",
        "roll_key",
        pages.roll_key,
        methods=["POST"],
    )
    if not isinstance(keys, KeyManager):
        keys.exempt(blueprint)
    return blueprint


class _KeyPages:
    """The views of one :func:`key_pages` blueprint, and what they share."""

    def __init__(
        self,
        keys: VemetricAuth | KeyManager,
        authorize: Authorize,
        api_url: str | Callable[[str], str] | None,
    ) -> None:
        from .flask import VemetricAuth

        if not isinstance(keys, (KeyManager, VemetricAuth)):
            raise TypeError("keys must be a VemetricAuth or a KeyManager")
        self._keys = keys
        self._authorize = authorize
        self._api_url = api_url

    # -- what every request goes through ------------------------------------

    def guard(self) -> None:
        """The ``before_request`` function: authorize, then check the CSRF token."""
        endpoint = request.endpoint or ""
        if endpoint.rsplit(".", 1)[-1] == "static":
            return
        view_args = request.view_args or {}
        project_id = view_args.get("project_id")
        try:
            project_id = _check_id(project_id, "project_id")
        except (TypeError, ValueError):
            abort(404)
        user = self._authorize(project_id)
        if user is None:
            abort(403)
        # A host returning something that is not a name is a bug of the host:
        # a 500, never a page that acts for nobody.
        g._vemetric_auth_pages_user = _check_actor(user, "the user authorize returned")
        if request.method == "POST":
            _check_csrf_token()

    def template_context(self) -> dict[str, Any]:
        """What every template of the pages can use."""
        user = g.get("_vemetric_auth_pages_user")
        view_args = request.view_args or {}
        return {
            # Only a page the user may see names the project and links to it.
            "project_id": view_args.get("project_id") if user else None,
            "user": user,
            "csrf_token": _csrf_token,
            "csrf_field": _CSRF_FIELD,
        }

    def _manager(self) -> KeyManager:
        if isinstance(self._keys, KeyManager):
            return self._keys
        return self._keys.keys_for(current_app)

    def _rolling(self, keys: KeyManager) -> bool:
        """Whether the store can expire keys, roll them and hold them pending."""
        return isinstance(keys.store, RollingKeyStore)

    # -- list ------------------------------------------------------------

    def list_keys(self, project_id: str) -> str:
        """The project's keys, newest first; revoked ones on request."""
        show_revoked = request.args.get("revoked") == "shown"
        # One store call, whatever the number of keys: the rows need nothing
        # more than the records.
        keys = self._manager()
        records = keys.list(project_id, include_revoked=True)
        keys_url = url_for(".list_keys", project_id=project_id)
        now = _utcnow()
        rows = []
        hidden = 0
        for record in records:
            if record.revoked and not show_revoked:
                hidden += 1
                continue
            rows.append(_row(record, keys_url, now))
        return render_template(
            "vemetric_auth/list.html",
            rows=rows,
            revoked_hidden=hidden,
            show_revoked=show_revoked,
            any_revoked=hidden > 0 or any(row.revoked for row in rows),
            keys_url=keys_url,
            can_roll=self._rolling(keys),
        )

    # -- create ----------------------------------------------------------

    def new_key(self, project_id: str) -> str:
        """The form that asks for a name and, if the store can, an expiry."""
        return self._create_form(name="", expires="never", errors={})

    def create_key(self, project_id: str) -> tuple[str, int] | str:
        """Create the key and show it, this once; or the form with its errors."""
        keys = self._manager()
        rolling = self._rolling(keys)
        given = request.form.get("name", "")
        expires = request.form.get("expires", "never") if rolling else "never"
        errors = {}
        try:
            name = _check_name(given)
        except (TypeError, ValueError) as error:
            errors["name"] = _sentence(error)
        lifetime = _choice(_EXPIRIES, expires)
        if lifetime is None:
            errors["expires"] = "Choose when the key expires."
        if errors or lifetime is None:
            return self._create_form(name=given, expires=expires, errors=errors), 422
        issued = keys.create(
            project_id,
            name,
            created_by=g._vemetric_auth_pages_user,
            expires_at=_expiry(lifetime[0]),
            pending=rolling,
        )
        return self._show_then_activate(keys, project_id, issued, pending=rolling)

    def _create_form(self, *, name: str, expires: str, errors: dict[str, str]) -> str:
        return render_template(
            "vemetric_auth/create.html",
            # Never echo a key pasted into the name: no response but the
            # one to the POST that made a key may hold one.
            name="" if holds_key(name) else name,
            expires=expires,
            expiries=[(value, label) for value, label, _ in _EXPIRIES],
            can_expire=self._rolling(self._manager()),
            errors=errors,
            max_name_length=MAX_NAME_LENGTH,
        )

    def _show_then_activate(
        self,
        keys: KeyManager,
        project_id: str,
        issued: IssuedKey,
        *,
        pending: bool,
        rolled_from: ApiKey | None = None,
        old_until: datetime | None = None,
    ) -> str:
        """Render the page of a new key; then, if *pending*, make the key work.

        A key whose page could not be rendered never works: it is revoked.
        """
        try:
            # The response body is the one place the plaintext goes.
            page = render_template(
                "vemetric_auth/issued.html",
                key=issued.key,
                record=issued.record,
                created=_time(issued.record.created_at),
                expires=_maybe_time(issued.record.expires_at),
                rolled_from=rolled_from,
                old_until=_maybe_time(old_until),
                curl=shlex.join(
                    [
                        "curl",
                        "-i",
                        "-H",
                        f"Authorization: Bearer {issued.key}",
                        self._curl_url(project_id),
                    ]
                ),
            )
        except BaseException:
            self._revoke_unshown(keys, issued.record)
            raise
        if pending:
            try:
                # Rendered, not sent: if this fails, the answer is an error
                # page without the key, so the key must never work, even if
                # the store lands the activation late.
                keys.activate(issued, shown=False)
            except (ValueError, KeyNotFound):
                abort(
                    409,
                    description=(
                        "The new key could not be made to work: it, or the key "
                        "it replaces, was revoked or removed meanwhile. The new "
                        "key never works; nothing else was changed."
                    ),
                )
        return page

    def _revoke_unshown(self, keys: KeyManager, record: ApiKey) -> None:
        try:
            keys.revoke(record.id, revoked_by=_NOT_SHOWN)
        except Exception:  # the page's own error is the one to report
            logger.warning(
                "could not revoke key %s, whose page failed", record.id, exc_info=True
            )

    def _curl_url(self, project_id: str) -> str:
        if self._api_url is None:
            return request.url_root
        if isinstance(self._api_url, str):
            return self._api_url
        return self._api_url(project_id)

    # -- revoke ----------------------------------------------------------

    def confirm_revoke(self, project_id: str, key_id: str) -> str:
        """The confirmation page naming the key."""
        record = self._record(project_id, key_id)
        return render_template(
            "vemetric_auth/revoke.html",
            row=_row(record, url_for(".list_keys", project_id=project_id), _utcnow()),
        )

    def revoke_key(self, project_id: str, key_id: str) -> Response:
        """Revoke the key, then back to the list with a notice."""
        record = self._record(project_id, key_id)
        if record.revoked:
            flash(
                f"“{record.name}” ({record.prefix}) was already revoked.",
                _FLASH_CATEGORY,
            )
        else:
            record = self._manager().revoke(
                record.id, revoked_by=g._vemetric_auth_pages_user
            )
            flash(
                f"Revoked “{record.name}” ({record.prefix}). Requests with it "
                "are refused from now on.",
                _FLASH_CATEGORY,
            )
        return redirect(url_for(".list_keys", project_id=project_id), 303)

    # -- roll ----------------------------------------------------------------

    def confirm_roll(self, project_id: str, key_id: str) -> str:
        """The form that asks for the overlap (and the new key's expiry)."""
        record = self._rollable(project_id, key_id)
        return self._roll_form(record, overlap=_DEFAULT_OVERLAP, expires="never")

    def roll_key(self, project_id: str, key_id: str) -> tuple[str, int] | str:
        """Roll the key over to a new one and show the new key, this once."""
        keys = self._manager()
        record = self._rollable(project_id, key_id)
        overlap_choice = request.form.get("overlap", "")
        expires = request.form.get("expires", "never")
        overlap = _choice(_OVERLAPS, overlap_choice)
        lifetime = _choice(_EXPIRIES, expires)
        errors = {}
        if overlap is None:
            errors["overlap"] = "Choose when the old key stops working."
        if lifetime is None:
            errors["expires"] = "Choose when the new key expires."
        if record.revoked:
            errors["key"] = "This key is revoked: a revoked key cannot be rolled."
        if errors or overlap is None or lifetime is None:
            form = self._roll_form(
                record, overlap=overlap_choice, expires=expires, errors=errors
            )
            return form, 409 if "key" in errors else 422
        try:
            issued = keys.roll(
                record.id,
                overlap=overlap[0],
                rolled_by=g._vemetric_auth_pages_user,
                expires_at=_expiry(lifetime[0]),
                pending=True,
            )
        except ValueError:
            abort(409, description="This key was revoked meanwhile: nothing changed.")
        except KeyNotFound:
            abort(404)
        old_until = None
        if overlap[0]:
            old_until = _utcnow() + overlap[0]
            if record.expires_at is not None:
                old_until = min(old_until, record.expires_at)
        return self._show_then_activate(
            keys,
            project_id,
            issued,
            pending=True,
            rolled_from=record,
            old_until=old_until,
        )

    def _rollable(self, project_id: str, key_id: str) -> ApiKey:
        """The record to roll; a ``404`` on a store that cannot roll."""
        record = self._record(project_id, key_id)
        if not self._rolling(self._manager()):
            abort(404)
        return record

    def _roll_form(
        self,
        record: ApiKey,
        *,
        overlap: str,
        expires: str,
        errors: dict[str, str] | None = None,
    ) -> str:
        return render_template(
            "vemetric_auth/roll.html",
            row=_row(
                record, url_for(".list_keys", project_id=record.project_id), _utcnow()
            ),
            overlap=overlap,
            overlaps=[(value, label) for value, label, _ in _OVERLAPS],
            expires=expires,
            expiries=[(value, label) for value, label, _ in _EXPIRIES],
            errors=errors or {},
        )

    def _record(self, project_id: str, key_id: str) -> ApiKey:
        """The record *key_id* of *project_id*; a ``404`` for any other."""
        try:
            _check_key_id(key_id)
            record = self._manager().get(key_id)
        except (TypeError, ValueError, KeyNotFound):
            abort(404)
        # The user is authorized for this project only: a key of another
        # project is as unknown here as one that does not exist.
        if record.project_id != project_id:
            abort(404)
        return record


# -- rows of the list -----------------------------------------------------------


class _Time(NamedTuple):
    """A moment as the pages show it; in a template, its ``<time>`` element."""

    iso: str  #: ISO 8601, for ``<time datetime>``
    label: str  #: what a reader sees, to the minute (UTC, said around it)

    def __html__(self) -> str:
        # Digits and punctuation only: nothing to escape.
        return f'<time datetime="{self.iso}">{self.label}</time>'


class _Row(NamedTuple):
    """What the templates show of a record, formatted once.

    Attributes, not a dict: Jinja reads an attribute at once, where a dict
    key costs it a failed attribute lookup first, a thousand rows over.
    """

    id: str
    name: str
    prefix: str
    created: _Time
    created_by: str | None
    last_used: _Time | None
    expires: _Time | None
    revoked: bool
    revoked_at: _Time | None
    revoked_by: str | None
    status: str  #: active, expired or revoked
    revoke_url: str
    roll_url: str


def _row(record: ApiKey, keys_url: str, now: datetime) -> _Row:
    # Formatted for a thousand rows per page: no strftime, no needless quote.
    key_id = record.id
    if not (key_id.isascii() and key_id.isalnum()):
        key_id = quote(key_id, safe="")
    key_url = f"{keys_url}/{key_id}"
    expires_at = record.expires_at
    revoked_at = record.revoked_at
    if revoked_at is not None:
        status = "revoked"
    elif expires_at is not None and now >= expires_at:
        status = "expired"
    else:
        status = "active"
    return _Row(
        record.id,
        record.name,
        record.prefix,
        _time(record.created_at),
        record.created_by,
        None if record.last_used_at is None else _time(record.last_used_at),
        None if expires_at is None else _time(expires_at),
        revoked_at is not None,
        None if revoked_at is None else _time(revoked_at),
        record.revoked_by,
        status,
        key_url + "/revoke",
        key_url + "/roll",
    )


def _time(moment: datetime) -> _Time:
    if moment.tzinfo is not timezone.utc:
        moment = moment.astimezone(timezone.utc)
    iso = moment.isoformat(timespec="seconds")
    return _Time(iso, f"{iso[:10]} {iso[11:16]}")


def _maybe_time(moment: datetime | None) -> _Time | None:
    return None if moment is None else _time(moment)


# -- form choices -------------------------------------------------------------------


def _choice(choices: tuple[tuple[str, str, _T], ...], value: str) -> tuple[_T] | None:
    """The meaning of the form value *value* among *choices*, in a 1-tuple;
    ``None`` if it is none of them."""
    for known, _, meaning in choices:
        if known == value:
            return (meaning,)
    return None


def _expiry(lifetime: timedelta | None) -> datetime | None:
    return None if lifetime is None else _utcnow() + lifetime


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _sentence(error: Exception) -> str:
    """A validation error of the manager, as a sentence next to its field."""
    text = str(error)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


# -- CSRF ------------------------------------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    secret = current_app.secret_key
    if not secret:
        raise RuntimeError(
            "the key management pages need the app's secret_key: their CSRF "
            "tokens are bound to the session"
        )
    return URLSafeTimedSerializer(secret, salt=_CSRF_SALT)


def _csrf_token() -> str:
    """The token the forms of this request carry, made once per request."""
    token = g.get("_vemetric_auth_csrf_token")
    if token is None:
        bound = session.get(_CSRF_SESSION_KEY)
        if not isinstance(bound, str):
            bound = secrets.token_hex(32)
            session[_CSRF_SESSION_KEY] = bound
        token = _serializer().dumps(bound)
        g._vemetric_auth_csrf_token = token
    assert isinstance(token, str)
    return token


def _check_csrf_token() -> None:
    """Refuse (``400``) a POST without a token signed for this session."""
    sent = request.form.get(_CSRF_FIELD)
    bound = session.get(_CSRF_SESSION_KEY)
    if not sent or not isinstance(bound, str):
        _refuse_form("The form was not sent from this page: nothing was changed.")
    try:
        value = _serializer().loads(sent, max_age=CSRF_TIME_LIMIT)
    except BadData:
        _refuse_form("The form has expired or is not valid: nothing was changed.")
    if not isinstance(value, str) or not hmac.compare_digest(value, bound):
        _refuse_form("The form was not sent from this page: nothing was changed.")


def _refuse_form(description: str) -> NoReturn:
    abort(400, description=description + " Reload the page and try again.")


# -- responses ---------------------------------------------------------------------


def _add_security_headers(response: Response) -> Response:
    static = (request.endpoint or "").rsplit(".", 1)[-1] == "static"
    for header, value in SECURITY_HEADERS.items():
        if static and header == "Cache-Control":
            continue
        response.headers[header] = value
    return response


def _error_page(error: HTTPException) -> Response | HTTPException:
    if error.code is None or error.code < 400:
        return error
    response = current_app.make_response(
        (
            render_template(
                "vemetric_auth/error.html",
                code=error.code,
                title=error.name,
                description=error.description,
            ),
            error.code,
        )
    )
    # A 405's Allow header, say.
    for header, value in error.get_headers():
        if header.lower() != "content-type":
            response.headers[header] = value
    return response


def _unavailable_page(error: StoreUnavailable) -> Response:
    response = current_app.make_response(
        (
            render_template(
                "vemetric_auth/error.html",
                code=503,
                title="Service Unavailable",
                description=(
                    "The API keys cannot be reached right now: nothing was "
                    "changed. Try again in a moment."
                ),
            ),
            503,
        )
    )
    response.headers["Retry-After"] = _RETRY_AFTER
    return response
