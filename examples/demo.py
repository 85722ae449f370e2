"""What ``make demo`` runs: a demo project and key, then the API of flask_app.py.

On the embedded SQLite store (``VEMETRIC_AUTH_DATABASE_URL``, default
``sqlite:///vemetric_auth.db`` in the working directory) it creates the project
``proj_demo`` unless it exists, a new API key for it that expires in 30 days,
and a second key that it revokes at once; prints the key, its expiry and a
``curl`` line for the success case and for each of the four ``401`` errors, a
``curl`` loop that runs the project past its rate limit (100 requests a
minute, Vemetric's), showing ``X-RateLimit-Remaining`` count down and then the
``429``, the address of the key management pages with the demo login (user
``demo``, a new password each run unless ``DEMO_PASSWORD`` is set), and how to
see the key's last use and roll it over; then serves ``examples/flask_app.py``
on ``127.0.0.1:5000`` with werkzeug until Ctrl+C (which writes the last use of
the keys before the demo ends)::

    pip install -e '.[flask,ratelimit]'   # from a clone (make demo does it)
    python examples/demo.py            # or: make demo
    python examples/demo.py 8080       # another port; PORT=8080 works too

The port is taken before any key is made: when 5000 is busy (on macOS, the
AirPlay Receiver holds it) the demo serves on a free port and says which; when
a port given on purpose is busy, it stops, having created nothing.

Run it again for another key: the project is reused. List, roll and revoke
keys meanwhile with ``vemetric-auth list --project proj_demo`` (its LAST USED
column shows a ``curl`` of a minute ago), ``vemetric-auth roll KEY_ID`` and
``vemetric-auth revoke KEY_ID`` from the same directory.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flask_app import DEMO_USER, auth, create_app, projects
from limits import parse

PROJECT_ID = "proj_demo"
DEFAULT_PORT = 5000
#: How long the demo key works.
KEY_LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class Demo:
    """What :func:`setup` made: the new key, a revoked one, and their project."""

    project_id: str
    key: str
    key_id: str
    revoked_key: str
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        # The keys stay out of any repr.
        return f"Demo(project_id={self.project_id!r}, key_id={self.key_id!r})"


def setup(app: Flask) -> Demo:
    """Create the demo project unless it exists, a new key expiring in
    :data:`KEY_LIFETIME`, and a revoked key."""
    with app.app_context():
        projects().add(PROJECT_ID, "Demo project", "demo.example")
        keys = auth.keys_for(app)
        issued = keys.create(
            PROJECT_ID,
            "Demo key",
            created_by="make demo",
            expires_at=datetime.now(timezone.utc) + KEY_LIFETIME,
        )
        revoked = keys.create(PROJECT_ID, "Demo key, revoked", created_by="make demo")
        keys.revoke(revoked.record.id, revoked_by="make demo")
    return Demo(
        PROJECT_ID,
        issued.key,
        issued.record.id,
        revoked.key,
        issued.record.expires_at,
    )


def lifecycle_lines(demo: Demo, base_url: str) -> list[str]:
    """Return how to see the demo key's expiry and last use, and roll it."""
    expires = (
        "never" if demo.expires_at is None else f"{demo.expires_at:%Y-%m-%d %H:%M} UTC"
    )
    header = f"Authorization: Bearer {demo.key}"
    return [
        f"The key expires {expires}. Its last use is written about once a minute:",
        "  " + shlex.join(["curl", "-H", header, base_url + "/v1/key"]),
        f"  .venv/bin/vemetric-auth list --project {demo.project_id}"
        "      # LAST USED, EXPIRES, STATUS",
        "Rotate it: a new key at once, this one working one more hour:",
        f"  .venv/bin/vemetric-auth roll {demo.key_id} --overlap 1h",
    ]


def curl_lines(demo: Demo, base_url: str) -> list[str]:
    """Return commented ``curl`` lines: success, the four 401s, the exempt path."""
    url = base_url + "/v1/project"

    def curl(comment: str, header: str | None, target: str = url) -> list[str]:
        command = ["curl", "-i"]
        if header is not None:
            command += ["-H", header]
        return [f"# {comment}", shlex.join([*command, target])]

    return [
        *curl("200: the project of the key", f"Authorization: Bearer {demo.key}"),
        *curl("401 Missing API key", None),
        *curl(
            "401 Malformed Authorization header", "Authorization: Basic ZGVtbzpkZW1v"
        ),
        *curl("401 Invalid API key format", "Authorization: Bearer vem_not_a_key"),
        *curl(
            "401 Invalid or revoked API key (a key revoked just now)",
            f"Authorization: Bearer {demo.revoked_key}",
        ),
        *curl("200 without a key: an exempt route", None, base_url + "/health"),
    ]


def key_pages_url(demo: Demo, base_url: str) -> str:
    """Return the address of the demo project's key management pages."""
    return f"{base_url}/settings/projects/{demo.project_id}/keys"


def rate_limit_lines(demo: Demo, base_url: str, limit: int) -> list[str]:
    """Return a commented shell loop of *limit* + 1 requests with the demo key:
    one line per answer, its status and rate limit headers."""
    header = shlex.quote(f"Authorization: Bearer {demo.key}")
    url = shlex.quote(base_url + "/v1/project")
    return [
        f"# {limit} requests a minute per project: watch X-RateLimit-Remaining "
        "count down, then the 429 with Retry-After",
        f"for i in $(seq {limit + 1}); do curl -s -o /dev/null -D - -H {header} "
        f"{url} | tr -d '\\r' | grep -iE '^(HTTP/|x-ratelimit-|retry-after)' "
        "| paste -sd ' ' -; done",
    ]


def _limit_of(app: Flask) -> int | None:
    """The requests a window allows, when the app has a limit (a string)."""
    limit = app.config["VEMETRIC_AUTH_RATE_LIMIT"]
    return parse(limit).amount if isinstance(limit, str) else None


def listen(port: int | None) -> socket.socket:
    """Return a socket listening on 127.0.0.1:*port*, or on port 5000.

    Without a *port*, a busy 5000 gives a free port instead.

    :raises OSError: *port* was given and cannot be had.
    """
    try:
        return socket.create_server(
            ("127.0.0.1", DEFAULT_PORT if port is None else port)
        )
    except OSError as error:
        if port is not None or error.errno != errno.EADDRINUSE:
            raise
    return socket.create_server(("127.0.0.1", 0))


def serve(app: Flask, listener: socket.socket) -> BaseWSGIServer:
    """Return werkzeug's threaded server for *app* on the bound *listener*."""
    host, port = listener.getsockname()[:2]
    # werkzeug serves a copy of the socket it is given; the demo keeps none.
    with listener:
        return make_server(host, port, app, threaded=True, fd=listener.fileno())


def main(argv: Sequence[str] | None = None) -> None:
    """Take the port, set up the demo, print how to call it, serve until Ctrl+C."""
    args = sys.argv[1:] if argv is None else list(argv)
    chosen = args[0] if args else os.environ.get("PORT")
    port = None if chosen is None else _port(chosen)
    try:
        listener = listen(port)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        sys.exit(f"Cannot serve on 127.0.0.1:{port}: {reason}. No key was made.")
    password = os.environ.get("DEMO_PASSWORD") or secrets.token_hex(8)
    app = create_app({"DEMO_PASSWORD": password})
    server = serve(app, listener)
    demo = setup(app)
    base_url = f"http://127.0.0.1:{server.port}"
    if chosen is None and server.port != DEFAULT_PORT:
        print(f"Port {DEFAULT_PORT} is busy: serving on {server.port} instead.")
    print(f"Key store: {app.config['VEMETRIC_AUTH_DATABASE_URL']}")
    print(f"Project:   {demo.project_id}")
    print(f"API key:   {demo.key}   (shown this once; id {demo.key_id})")
    if demo.expires_at is not None:
        print(f"Expires:   {demo.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    print()
    print("Try, in another terminal:")
    print()
    for line in curl_lines(demo, base_url):
        print("  " + line)
    print()
    limit = _limit_of(app)
    if limit is not None:
        print("The rate limit:")
        print()
        for line in rate_limit_lines(demo, base_url, limit):
            print("  " + line)
        print()
    print(f"Key pages: {key_pages_url(demo, base_url)}")
    print(f"           log in as {DEMO_USER}, password {password}")
    print()
    print(f"Manage keys: .venv/bin/vemetric-auth list --project {demo.project_id}")
    print()
    for line in lifecycle_lines(demo, base_url):
        print(line)
    print()
    print(f"Serving on {base_url} (Ctrl+C to stop)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        # Writes the last use of the keys served.
        auth.keys_for(app).close()


def _port(text: str) -> int:
    port = int(text) if text.isascii() and text.isdigit() else 0
    if not 0 < port < 65536:
        sys.exit(f"Not a port number: {text!r}")
    return port


if __name__ == "__main__":
    main()
