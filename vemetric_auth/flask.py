"""Flask integration: every route of an app needs an API key unless exempt.

.. code-block:: python

    from flask import Flask, g
    from vemetric_auth.flask import VemetricAuth

    app = Flask(__name__)
    app.config["VEMETRIC_AUTH_DATABASE_URL"] = "sqlite:///vemetric_auth.db"
    auth = VemetricAuth(app)

    @auth.project_loader
    def load_project(project_id):
        return Project.query.get(project_id)   # None: the key is refused

    @app.get("/v1/project")
    def project():
        return {"project": g.project.to_dict()}

    @app.get("/health")
    @auth.exempt
    def health():
        return {"ok": True}

The credential check is the one of :class:`~vemetric_auth.ApiKeyMiddleware`
(the same request gate), and its errors are the same responses, made by the
same function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from werkzeug.wrappers import Response

from ._extras import install_hint

try:
    import click
    from flask import Blueprint, Flask, Request, current_app, g, request
    from flask.cli import with_appcontext
except ModuleNotFoundError as error:
    if error.name not in ("flask", "click"):
        raise  # a broken installation: its own error says more
    raise ImportError(
        f"vemetric_auth.flask needs Flask: {install_hint('flask')}", name=error.name
    ) from None

from ._http import (
    EXEMPT,
    PREFLIGHT,
    RATE_LIMIT_ENVIRON_KEY,
    RATE_LIMITED,
    RequestGate,
    rate_limiter,
    validate_paths,
    validate_realm,
    validate_retry_after,
)
from .cli import COMMANDS, DEFAULT_DATABASE_URL, CommandGroup, KeysOpener
from .errors import AuthError
from .manager import KeyManager
from .stores.base import DEFAULT_TABLE_NAME

__all__ = ["VemetricAuth"]


#: The ``app.extensions`` entry of the extension's per-app state.
EXTENSION_NAME = "vemetric_auth"
# Set on view functions by VemetricAuth.exempt. functools.wraps copies a
# function's __dict__, so the mark survives decorators stacked above it.
_EXEMPT_MARK = "_vemetric_auth_exempt"

# The config key of each rate limit setting, named in its errors.
_RATE_LIMIT_CONFIG = {
    "rate_limit": "VEMETRIC_AUTH_RATE_LIMIT",
    "storage_uri": "VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI",
    "storage_options": "VEMETRIC_AUTH_RATE_LIMIT_STORAGE_OPTIONS",
    "by": "VEMETRIC_AUTH_RATE_LIMIT_BY",
    "strategy": "VEMETRIC_AUTH_RATE_LIMIT_STRATEGY",
}

_View = TypeVar("_View", bound=Callable[..., Any])
_Loader = TypeVar("_Loader", bound=Callable[[str], Any])
_T = TypeVar("_T")


class VemetricAuth:
    """Require ``Authorization: Bearer <key>`` on every route of a Flask app.

    Once registered, every request needs a valid, active key, including
    requests that match no route (they get their ``404`` or ``405`` only
    with a key). Exceptions:
    views marked :meth:`exempt`, the paths and endpoints listed in
    ``VEMETRIC_AUTH_EXEMPT_PATHS`` and ``VEMETRIC_AUTH_EXEMPT_ENDPOINTS``, and
    CORS preflights (``OPTIONS`` with both ``Origin`` and
    ``Access-Control-Request-Method``) unless ``VEMETRIC_AUTH_ALLOW_OPTIONS``
    is false. A preflight gets Flask's automatic ``OPTIONS`` answer; to a
    route whose view handles ``OPTIONS`` itself it gets
    ``app.make_default_options_response()`` instead, and the view never
    runs. Either passes through the ``after_request`` functions, where a CORS
    extension adds its headers. Any other ``OPTIONS`` request needs a key.

    A request let through finds ``g.api_key`` (the
    :class:`~vemetric_auth.ApiKey`), ``g.project_id`` (str) and ``g.project``
    (what the :meth:`project_loader` returned, or the project id without
    one), and the environ entries ``vemetric_auth.api_key`` and
    ``vemetric_auth.project_id`` the middleware sets. Exempt requests find
    none of them: use ``g.get("project")`` in a view that may be exempt.

    Refused requests get the responses of the HTTP contract: ``401`` with the
    JSON body and ``WWW-Authenticate`` challenge, or ``503`` with
    ``Retry-After`` when the key store fails. They pass through the app's
    ``after_request`` functions like any response. A non-``str``
    ``HTTP_AUTHORIZATION`` in the environ is answered as a malformed header
    (``401``, case 2), as by the middleware.

    :param app: The app to register on now; or call :meth:`init_app` later,
        once per app.
    :param keys: The :class:`~vemetric_auth.KeyManager` every app of this
        extension uses. Without it, each app gets its own, over a
        :class:`~vemetric_auth.SQLKeyStore` built from its config
        (``VEMETRIC_AUTH_DATABASE_URL``, ``VEMETRIC_AUTH_TABLE_NAME``,
        ``VEMETRIC_AUTH_CACHE_TTL``), which connects on first use.

    Config keys, read by :meth:`init_app` (later changes are not seen):

    - ``VEMETRIC_AUTH_DATABASE_URL``: SQLAlchemy URL of the key store;
      ``"sqlite:///vemetric_auth.db"`` (a file in the working directory).
    - ``VEMETRIC_AUTH_TABLE_NAME``: its table; ``"vemetric_api_keys"``.
    - ``VEMETRIC_AUTH_CACHE_TTL``: seconds a verified key is served from
      memory before its record is read again; ``60.0``.
    - ``VEMETRIC_AUTH_REALM``: the realm of ``WWW-Authenticate``;
      ``"vemetric"``.
    - ``VEMETRIC_AUTH_RETRY_AFTER``: ``Retry-After`` seconds of a ``503``;
      ``5``.
    - ``VEMETRIC_AUTH_ALLOW_OPTIONS``: CORS preflights pass without a key;
      ``True``.
    - ``VEMETRIC_AUTH_EXEMPT_PATHS``: paths served without a key, matched
      exactly against ``PATH_INFO`` as the middleware does; ``()``.
    - ``VEMETRIC_AUTH_EXEMPT_ENDPOINTS``: endpoints served without a key,
      such as ``"static"``; ``()``.
    - ``VEMETRIC_AUTH_RATE_LIMIT``: the requests each project may make, in
      the notation of the ``limits`` library (``"100/minute"``, Vemetric's),
      or a callable taking the request's :class:`~vemetric_auth.ApiKey` and
      returning such a string or ``None`` for no limit (tiers per project;
      it runs in the request context, ``g.project`` already loaded);
      ``None``: no limit. Needs the ``ratelimit`` extra.
    - ``VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI``: where the counts live, a
      ``limits`` storage URI; ``"memory://"`` (this process). Use a shared
      one, such as ``"redis://host:6379"`` (the ``redis`` extra), with
      several processes or machines.
    - ``VEMETRIC_AUTH_RATE_LIMIT_STORAGE_OPTIONS``: keyword arguments for
      the storage's client; none.
    - ``VEMETRIC_AUTH_RATE_LIMIT_BY``: ``"project"`` (all keys of a project
      together) or ``"key"``; ``"project"``.
    - ``VEMETRIC_AUTH_RATE_LIMIT_STRATEGY``: ``"fixed-window"``,
      ``"moving-window"`` or ``"sliding-window-counter"``;
      ``"fixed-window"``.

    The first three are not used when *keys* is given; the rate limit
    settings only with ``VEMETRIC_AUTH_RATE_LIMIT``. The rate limit keys are
    read with ``app.config.get``: unlike the others, their defaults do not
    show in ``app.config``.

    With a rate limit, every authenticated request is counted, after its
    key and project are found valid (never a refused key, an exempt view or
    a preflight). Every response to it gets ``X-RateLimit-Limit``,
    ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (Unix epoch
    seconds), added by an ``after_request`` function to whatever the app
    answers, its error responses too. Over the limit the view does not run:
    the answer is ``429`` with ``Retry-After``, the same headers and the JSON
    body ``RATE_LIMIT_EXCEEDED``, through the app's ``after_request``
    functions like the ``401``. A failing shared storage is never an error:
    each process counts in its own memory until the storage answers again.

    Security: the check runs as the app's first ``before_request`` function
    when :meth:`init_app` is called before the app registers its own, which
    then see only authenticated requests. The app's static files are
    protected too unless ``"static"`` is listed in
    ``VEMETRIC_AUTH_EXEMPT_ENDPOINTS``.
    """

    def __init__(
        self, app: Flask | None = None, *, keys: KeyManager | None = None
    ) -> None:
        if keys is not None and not isinstance(keys, KeyManager):
            raise TypeError("keys must be a vemetric_auth.KeyManager")
        self._keys = keys
        self._project_loader: Callable[[str], Any] | None = None
        self._exempt_blueprints: list[Blueprint] = []
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<VemetricAuth keys={self._keys!r}>"

    def init_app(self, app: Flask) -> None:
        """Protect every route of *app*, with the keys of its config.

        Sets the config defaults, reads and checks the config, stores the
        per-app state in ``app.extensions["vemetric_auth"]``, registers the
        check as a ``before_request`` function and the ``flask vemetric-auth``
        commands.

        :raises RuntimeError: a :class:`VemetricAuth` is already registered
            on *app*.
        :raises TypeError, ValueError: a config value is of the wrong type or
            out of range; the message names the config key.
        """
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "A 'VemetricAuth' instance has already been registered on this "
                "Flask app. Import and use that instance instead."
            )
        config = app.config
        config.setdefault("VEMETRIC_AUTH_DATABASE_URL", DEFAULT_DATABASE_URL)
        config.setdefault("VEMETRIC_AUTH_TABLE_NAME", DEFAULT_TABLE_NAME)
        config.setdefault("VEMETRIC_AUTH_CACHE_TTL", 60.0)
        config.setdefault("VEMETRIC_AUTH_REALM", "vemetric")
        config.setdefault("VEMETRIC_AUTH_RETRY_AFTER", 5)
        config.setdefault("VEMETRIC_AUTH_ALLOW_OPTIONS", True)
        config.setdefault("VEMETRIC_AUTH_EXEMPT_PATHS", ())
        config.setdefault("VEMETRIC_AUTH_EXEMPT_ENDPOINTS", ())

        allow_options = _config_flag(config, "VEMETRIC_AUTH_ALLOW_OPTIONS")
        exempt_endpoints = _config_value(
            config, "VEMETRIC_AUTH_EXEMPT_ENDPOINTS", validate_paths
        )
        realm = _config_value(config, "VEMETRIC_AUTH_REALM", validate_realm)
        retry_after = _config_value(
            config, "VEMETRIC_AUTH_RETRY_AFTER", validate_retry_after
        )
        exempt_paths = _config_value(
            config, "VEMETRIC_AUTH_EXEMPT_PATHS", validate_paths
        )
        # An optional feature: its keys are read with their defaults, not set
        # in the config of apps that do not use it.
        limiter = rate_limiter(
            config.get("VEMETRIC_AUTH_RATE_LIMIT"),
            storage_uri=config.get("VEMETRIC_AUTH_RATE_LIMIT_STORAGE_URI", "memory://"),
            storage_options=config.get("VEMETRIC_AUTH_RATE_LIMIT_STORAGE_OPTIONS"),
            by=config.get("VEMETRIC_AUTH_RATE_LIMIT_BY", "project"),
            strategy=config.get("VEMETRIC_AUTH_RATE_LIMIT_STRATEGY", "fixed-window"),
            names=_RATE_LIMIT_CONFIG,
        )
        keys = self._keys if self._keys is not None else _keys_from_config(config)
        gate = RequestGate(
            keys,
            realm=realm,
            retry_after=retry_after,
            exempt_paths=exempt_paths,
            allow_options=allow_options,
            limiter=limiter,
        )
        state = _AppState(
            self,
            gate,
            exempt_endpoints=exempt_endpoints,
            view_functions=app.view_functions,
            blueprints=app.blueprints,
        )
        app.extensions[EXTENSION_NAME] = state
        app.before_request(state.check_request)
        if limiter is not None:
            app.after_request(_add_rate_limit_headers)
        app.cli.add_command(_flask_commands)

    # -- decorators ----------------------------------------------------------

    def project_loader(self, loader: _Loader) -> _Loader:
        """Register the function that turns a key's project id into a project.

        It is called with the project id of every authenticated request, and
        its result becomes ``g.project``. Returning ``None`` (the project no
        longer exists) refuses the request as an invalid key (``401``, case 4
        of the HTTP contract). Raising an :class:`~vemetric_auth.AuthError`
        answers its response: raise
        :class:`~vemetric_auth.StoreUnavailable` for a ``503`` while the
        projects database is down. Any other exception propagates as the
        app's own, to its error handlers.

        One loader per extension; a new one replaces the last.
        """
        self._project_loader = loader
        return loader

    @overload
    def exempt(self, view: _View) -> _View: ...

    @overload
    def exempt(self, view: Blueprint) -> Blueprint: ...

    def exempt(self, view: _View | Blueprint) -> _View | Blueprint:
        """Serve a view function, or every view of a blueprint, without a key.

        Works above or below the route decorator, and through decorators
        made with :func:`functools.wraps`:

        .. code-block:: python

            @app.get("/health")
            @auth.exempt
            def health(): ...

        A view function is marked as such: it is exempt wherever it is
        registered. A blueprint object is exempt, with the blueprints nested
        in it, in the apps of this extension, whatever name it is registered
        under; another blueprint that happens to share its name is not.
        """
        if isinstance(view, Blueprint):
            if all(view is not known for known in self._exempt_blueprints):
                self._exempt_blueprints.append(view)
        else:
            setattr(view, _EXEMPT_MARK, True)
        return view

    # -- access to the keys --------------------------------------------------

    def keys_for(self, app: Flask) -> KeyManager:
        """Return the :class:`~vemetric_auth.KeyManager` *app* checks keys with.

        :raises RuntimeError: this extension is not registered on *app*.
        """
        state = app.extensions.get(EXTENSION_NAME)
        if not isinstance(state, _AppState) or state.extension is not self:
            raise RuntimeError(
                "This VemetricAuth is not registered on this Flask app: call "
                "init_app(app) first."
            )
        return state.keys

    @property
    def keys(self) -> KeyManager:
        """The :class:`~vemetric_auth.KeyManager` of the current app.

        Needs an app context: ``auth.keys.create("proj_1", "CI")``.
        """
        return self.keys_for(current_app)


class _AppState:
    """What a :class:`VemetricAuth` knows of one app.

    It is ``app.extensions["vemetric_auth"]``; its ``extension`` attribute is
    the :class:`VemetricAuth`, its ``keys`` the app's KeyManager.

    The extension holds no app; everything per app lives here, so one
    extension serves any number of apps in a process.
    """

    __slots__ = (
        "blueprints",
        "exempt_endpoints",
        "extension",
        "gate",
        "keys",
        "view_functions",
    )

    def __init__(
        self,
        extension: VemetricAuth,
        gate: RequestGate,
        *,
        exempt_endpoints: frozenset[str],
        view_functions: dict[str, Callable[..., Any]],
        blueprints: Mapping[str, object],
    ) -> None:
        self.extension = extension
        self.gate = gate
        self.keys = gate.keys
        self.exempt_endpoints = exempt_endpoints
        # The app's own dicts, filled as routes and blueprints are added;
        # looked up here without going through current_app on every request.
        self.view_functions = view_functions
        self.blueprints = blueprints

    def check_request(self) -> Response | None:
        """The ``before_request`` function: ``None`` lets the request through."""
        # Each access through a context proxy (request, g, current_app) costs
        # about as much as the whole check of a cached key: resolve them once.
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        environ = req.environ
        gate = self.gate
        passage = gate.passage(environ)
        if passage is EXEMPT or self._exempt_view(req):
            return None
        if passage is PREFLIGHT:
            rule = req.url_rule
            if rule is not None and not getattr(
                rule, "provide_automatic_options", False
            ):
                # The view handles OPTIONS itself: it must not run without a
                # key. Flask's own answer, which it gives every other route.
                return current_app.make_default_options_response()
            return None
        try:
            record, project = gate.authenticate(environ, self.extension._project_loader)
        except AuthError as error:
            # A new response each time: the app's after_request functions
            # may add headers to it.
            return gate.answer(error).response()
        request_globals = g._get_current_object()
        request_globals.api_key = record
        request_globals.project_id = record.project_id
        request_globals.project = project
        if gate.limiter is not None:
            decision = gate.rate_limit(environ, record)
            if decision is not None and not decision.allowed:
                # A new response, as for the 401s; it carries the
                # X-RateLimit-* headers already.
                return RATE_LIMITED.response(decision)
        return None

    def _exempt_view(self, req: Request) -> bool:
        # No matched rule (404, 405, redirect): nothing is exempt, so an
        # unauthenticated client learns nothing of the app's routes.
        rule = req.url_rule
        if rule is None:
            return False
        endpoint = rule.endpoint
        if endpoint in self.exempt_endpoints:
            return True
        view = self.view_functions.get(endpoint)
        if view is not None and getattr(view, _EXEMPT_MARK, False):
            return True
        exempt = self.extension._exempt_blueprints
        if not exempt:
            return False
        # req.blueprints names the request's blueprint and its parents as
        # registered on this app; compare the blueprint objects themselves.
        for name in req.blueprints:
            blueprint = self.blueprints.get(name)
            if blueprint is not None and any(blueprint is bp for bp in exempt):
                return True
        return False


def _add_rate_limit_headers(response: Response) -> Response:
    """The ``after_request`` function of an app with a rate limit: the
    request's ``X-RateLimit-*`` headers on whatever the app answered."""
    decision = request.environ.get(RATE_LIMIT_ENVIRON_KEY)
    # A refused request's 429 has them already.
    if decision is not None and decision.allowed:
        add = response.headers.add
        # One add each: Headers.extend costs twice as much for three headers.
        for name, value in decision.headers:
            add(name, value)
    return response


# -- config ------------------------------------------------------------------


def _keys_from_config(config: Any) -> KeyManager:
    try:
        from .stores.sql import SQLKeyStore
    except ModuleNotFoundError:
        raise RuntimeError(
            "VemetricAuth without keys= uses the SQL key store, which needs "
            "SQLAlchemy: pip install 'vemetric-auth[sql]'"
        ) from None
    # Builds the engine only: the database is connected to, and the table
    # created, on first use, in the process that serves (fork-safe).
    store = SQLKeyStore(
        config["VEMETRIC_AUTH_DATABASE_URL"],
        table_name=config["VEMETRIC_AUTH_TABLE_NAME"],
    )
    try:
        return KeyManager(store, cache_ttl=config["VEMETRIC_AUTH_CACHE_TTL"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"VEMETRIC_AUTH_CACHE_TTL: {error}") from None


def _config_value(config: Any, name: str, validate: Callable[[Any], _T]) -> _T:
    try:
        return validate(config[name])
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}: {error}") from None


def _config_flag(config: Any, name: str) -> bool:
    value = config[name]
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False")
    return value


# -- flask vemetric-auth -----------------------------------------------------


def _app_keys() -> KeyManager:
    state = current_app.extensions.get(EXTENSION_NAME)
    if not isinstance(state, _AppState):
        raise click.UsageError("VemetricAuth is not registered on this app")
    return state.keys


@click.group("vemetric-auth", cls=CommandGroup)
@with_appcontext
@click.pass_context
def _flask_commands(ctx: click.Context) -> None:
    """Create, roll, list and revoke vem_ API keys in this app's key store."""
    ctx.obj = KeysOpener(_app_keys)


for _command in COMMANDS:
    _flask_commands.add_command(_command)


from .pages import key_pages as key_pages  # noqa: E402  (exported beside VemetricAuth)
