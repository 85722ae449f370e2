"""The key management pages (SPEC section 10), through Flask's test client.

Each security point of the section is pinned here: the host's callback
guards every page, every change is a POST with a CSRF token, every page
carries the cache, referrer and content-security headers, names are escaped,
and the plaintext of a new key is in the body of the response to the POST
that made it and nowhere else. The whole flow in a real browser is in
``test_pages_browser.py``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import itsdangerous
import pytest
from conftest import FlakyStore
from flask import Flask, abort, redirect
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from vemetric_auth import ApiKey, InMemoryKeyStore, InvalidApiKey, KeyManager
from vemetric_auth import pages as pages_module
from vemetric_auth.flask import VemetricAuth, key_pages

PREFIX = "/settings"
LIST = PREFIX + "/projects/proj_1/keys"
NEW = LIST + "/new"
XSS = "<script>alert(1)</script>"
KEY_PATTERN = re.compile(r"vem_[a-z0-9]{32}")


class Host:
    """A host app: an API protected by VemetricAuth, the key pages under /settings.

    ``users`` says who may manage which project (``authorize``'s answer);
    ``calls`` records the project ids ``authorize`` was called with.
    """

    def __init__(self, keys: KeyManager, **options: Any) -> None:
        self.keys = keys
        self.users: dict[str, str] = {"proj_1": "alice", "proj_2": "bob"}
        self.calls: list[str] = []
        self.app = Flask(__name__)
        self.app.config.update(TESTING=True, SECRET_KEY="test secret")
        self.auth = VemetricAuth(self.app, keys=keys)

        @self.app.get("/v1/project")
        def project() -> dict[str, str]:
            return {"project": "yes"}

        self.app.register_blueprint(
            key_pages(self.auth, authorize=self.authorize, **options),
            url_prefix=PREFIX,
        )

    def authorize(self, project_id: str) -> str | None:
        self.calls.append(project_id)
        return self.users.get(project_id)

    def client(self) -> FlaskClient:
        return self.app.test_client()


@pytest.fixture
def host(keys: KeyManager) -> Host:
    return Host(keys)


@pytest.fixture
def client(host: Host) -> FlaskClient:
    return host.client()


def token_of(response: TestResponse) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert found is not None, response.text
    return found.group(1)


def form_token(client: FlaskClient, url: str = NEW) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return token_of(response)


def create(client: FlaskClient, name: str, project: str = "proj_1") -> TestResponse:
    """Create a key through the pages, as a browser would."""
    url = f"{PREFIX}/projects/{project}/keys"
    token = form_token(client, url + "/new")
    return client.post(url, data={"name": name, "csrf_token": token})


def key_in(response: TestResponse) -> str:
    found = KEY_PATTERN.findall(response.text)
    assert found, response.text
    assert len(set(found)) == 1
    return str(found[0])


def row_names(response: TestResponse) -> list[str]:
    return re.findall(r'<th scope="row" class="name">(.*?)</th>', response.text)


def revoke_url(record: ApiKey) -> str:
    return f"{PREFIX}/projects/{record.project_id}/keys/{record.id}/revoke"


def roll_url(record: ApiKey) -> str:
    return f"{PREFIX}/projects/{record.project_id}/keys/{record.id}/roll"


def roll(
    client: FlaskClient, record: ApiKey, overlap: str = "24h", expires: str = "never"
) -> TestResponse:
    """Roll a key through the pages, as a browser would."""
    token = form_token(client, roll_url(record))
    return client.post(
        roll_url(record),
        data={"overlap": overlap, "expires": expires, "csrf_token": token},
    )


def snapshot(keys: KeyManager) -> list[ApiKey]:
    return [
        record
        for project in ("proj_1", "proj_2")
        for record in keys.list(project, include_revoked=True)
    ]


class Page(HTMLParser):
    """What the tests check of a page's HTML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False
        self.text_parts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)
        self.text_parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


# -- mounting and the host's callback ---------------------------------------------


def test_pages_need_no_api_key_and_the_api_still_does(client: FlaskClient) -> None:
    assert client.get(LIST).status_code == 200
    assert client.get(NEW).status_code == 200
    assert client.get("/v1/project").status_code == 401


def test_authorize_gets_the_project_of_the_url(host: Host, client: FlaskClient) -> None:
    client.get(LIST)
    client.get(f"{PREFIX}/projects/proj_2/keys/new")
    assert host.calls == ["proj_1", "proj_2"]


def test_none_from_authorize_is_403_before_any_store_call(
    flaky_store: FlakyStore, flaky_keys: KeyManager
) -> None:
    host = Host(flaky_keys)
    issued = flaky_keys.create("proj_3", "not yours")
    flaky_store.calls.clear()
    client = host.client()
    token = form_token(client)
    for method, url, data in [
        ("GET", f"{PREFIX}/projects/proj_3/keys", None),
        ("GET", f"{PREFIX}/projects/proj_3/keys/new", None),
        ("POST", f"{PREFIX}/projects/proj_3/keys", {"name": "x", "csrf_token": token}),
        ("GET", revoke_url(issued.record), None),
        ("POST", revoke_url(issued.record), {"csrf_token": token}),
    ]:
        response = client.open(url, method=method, data=data)
        assert response.status_code == 403, url
        assert "Forbidden" in response.text
        assert "proj_3" not in Page(response.text).text  # nothing of the project
    assert flaky_store.calls == {}
    assert flaky_keys.get(issued.record.id).revoked is False


def test_authorize_may_answer_with_the_hosts_login_redirect(keys: KeyManager) -> None:
    def to_login(project_id: str) -> str | None:
        abort(redirect("/login?next=/settings"))

    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="s")
    auth = VemetricAuth(app, keys=keys)
    app.register_blueprint(key_pages(auth, authorize=to_login), url_prefix=PREFIX)
    client = app.test_client()
    for response in (client.get(LIST), client.post(LIST, data={"name": "x"})):
        assert response.status_code == 302
        assert response.location == "/login?next=/settings"
        assert_security_headers(response)
    assert keys.list("proj_1") == []


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(42, id="not-a-str"),
        pytest.param("", id="empty"),
        pytest.param("x" * 256, id="too-long"),
    ],
)
def test_authorize_answering_no_name_is_an_error_never_a_page(
    keys: KeyManager, answer: object
) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="s")
    auth = VemetricAuth(app, keys=keys)
    app.register_blueprint(
        key_pages(auth, authorize=lambda project_id: answer),  # type: ignore[arg-type,return-value]
        url_prefix=PREFIX,
    )
    with pytest.raises((TypeError, ValueError)):
        app.test_client().get(LIST)


@pytest.mark.parametrize(
    "project",
    [
        pytest.param("%01", id="control-character"),
        pytest.param("x" * 256, id="too-long"),
        pytest.param("%20", id="blank"),
    ],
)
def test_a_project_id_no_manager_would_take_is_404_unasked(
    host: Host, client: FlaskClient, project: str
) -> None:
    response = client.get(f"{PREFIX}/projects/{project}/keys")
    assert response.status_code == 404
    assert host.calls == []


def test_static_files_are_served_without_authorize_or_api_key(
    host: Host, client: FlaskClient
) -> None:
    for name, kind in [("pages.css", "text/css"), ("copy.js", "javascript")]:
        response = client.get(f"{PREFIX}/static/vemetric_auth/{name}")
        assert response.status_code == 200
        assert kind in response.content_type
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        response.close()
    assert host.calls == []


def test_pages_on_a_key_manager_without_the_extension(keys: KeyManager) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="s")
    app.register_blueprint(
        key_pages(keys, authorize=lambda project_id: "carol"), url_prefix="/k"
    )
    client = app.test_client()
    token = form_token(client, "/k/projects/p/keys/new")
    response = client.post(
        "/k/projects/p/keys", data={"name": "n", "csrf_token": token}
    )
    assert response.status_code == 200
    assert keys.list("p")[0].created_by == "carol"


def test_two_mounts_in_one_app_by_name(keys: KeyManager) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="s")
    auth = VemetricAuth(app, keys=keys)
    app.register_blueprint(key_pages(auth, authorize=lambda p: "a"), url_prefix="/one")
    app.register_blueprint(
        key_pages(auth, authorize=lambda p: None, name="other_pages"),
        url_prefix="/two",
    )
    client = app.test_client()
    assert client.get("/one/projects/p/keys").status_code == 200
    assert client.get("/two/projects/p/keys").status_code == 403
    with app.test_request_context():
        from flask import url_for

        assert (
            url_for("other_pages.list_keys", project_id="p") == "/two/projects/p/keys"
        )


def test_key_pages_checks_its_arguments(keys: KeyManager) -> None:
    with pytest.raises(TypeError, match="authorize"):
        key_pages(keys, authorize="alice")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys"):
        key_pages(object(), authorize=lambda p: "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="api_url"):
        key_pages(keys, authorize=lambda p: "a", api_url=3)  # type: ignore[arg-type]


def test_the_pages_need_the_apps_secret_key(keys: KeyManager) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True)
    app.register_blueprint(key_pages(keys, authorize=lambda p: "a"), url_prefix="/k")
    with pytest.raises(RuntimeError, match="secret_key"):
        app.test_client().get("/k/projects/p/keys/new")


def test_an_app_overrides_a_template_at_the_same_path(
    keys: KeyManager, tmp_path: Path
) -> None:
    (tmp_path / "vemetric_auth").mkdir()
    (tmp_path / "vemetric_auth" / "list.html").write_text(
        "{% extends 'vemetric_auth/layout.html' %}"
        "{% block content %}Our own list: {{ rows|length }} keys{% endblock %}"
    )
    app = Flask(__name__, template_folder=str(tmp_path))
    app.config.update(TESTING=True, SECRET_KEY="s")
    app.register_blueprint(key_pages(keys, authorize=lambda p: "a"), url_prefix="/k")
    keys.create("p", "one")
    response = app.test_client().get("/k/projects/p/keys")
    assert "Our own list: 1 keys" in response.text
    assert "pages.css" in response.text  # the package's own layout around it


# -- the list ------------------------------------------------------------------------


def test_the_empty_state_says_what_to_do(client: FlaskClient) -> None:
    page = Page(client.get(LIST).text)
    assert "No API keys yet" in page.text
    assert any(a.get("href") == NEW for a in page.all("a"))
    assert not page.all("table")


def test_the_list_shows_each_key_newest_first(
    keys: KeyManager, client: FlaskClient
) -> None:
    first = keys.create("proj_1", "first", created_by="alice")
    second = keys.create("proj_1", "second")
    third = keys.create("proj_1", "third", created_by="bob")
    keys.create("proj_2", "another project's")
    response = client.get(LIST)
    page = Page(response.text)
    text = page.text
    assert row_names(response) == ["third", "second", "first"]
    assert "another project's" not in text
    for issued in (first, second, third):
        record = issued.record
        assert record.prefix in text
        assert record.created_at.strftime("%Y-%m-%d %H:%M") in text
        assert any(a.get("href") == revoke_url(record) for a in page.all("a"))
        assert issued.key not in response.text
    assert "alice" in text
    assert "bob" in text
    assert text.count("active") >= 3


def test_revoked_keys_are_behind_a_toggle(
    keys: KeyManager, client: FlaskClient
) -> None:
    kept = keys.create("proj_1", "kept")
    gone = keys.create("proj_1", "gone")
    keys.revoke(gone.record.id, revoked_by="carol")
    text = Page(client.get(LIST).text).text
    assert "kept" in text
    assert "gone" not in text
    assert "Show revoked keys (1)" in text

    page = Page(client.get(LIST + "?revoked=shown").text)
    assert "gone" in page.text
    assert "kept" in page.text
    assert "revoked" in page.text
    assert "by carol" in page.text
    assert "Hide revoked keys" in page.text
    # No revoke button for a revoked key.
    assert not any(a.get("href") == revoke_url(gone.record) for a in page.all("a"))
    assert any(a.get("href") == revoke_url(kept.record) for a in page.all("a"))


def test_only_revoked_keys_still_show_the_empty_state_and_the_toggle(
    keys: KeyManager, client: FlaskClient
) -> None:
    gone = keys.create("proj_1", "gone")
    keys.revoke(gone.record.id)
    text = Page(client.get(LIST).text).text
    assert "No API keys in use" in text
    assert "Show revoked keys (1)" in text


def test_the_list_is_one_store_call_whatever_the_number_of_keys(
    flaky_store: FlakyStore, flaky_keys: KeyManager
) -> None:
    for n in range(25):
        flaky_keys.create("proj_1", f"key {n}")
    flaky_store.calls.clear()
    response = Host(flaky_keys).client().get(LIST)
    assert response.text.count('<tr class="row-') == 25
    assert flaky_store.calls == {"list": 1}


# -- create ---------------------------------------------------------------------------


def test_create_shows_the_key_once_and_it_works(
    host: Host, keys: KeyManager, client: FlaskClient
) -> None:
    response = create(client, "  CI deploys  ")
    assert response.status_code == 200
    key = key_in(response)
    page = Page(response.text)
    record = keys.authenticate(key)
    assert (record.project_id, record.name, record.created_by) == (
        "proj_1",
        "CI deploys",
        "alice",
    )
    # Shown in a read-only field, with the warning, a copy button and curl.
    [field] = [i for i in page.all("input") if i.get("value") == key]
    assert "readonly" in field
    assert "will not be shown again" in page.text
    buttons = [b for b in page.all("button") if b.get("data-copy")]
    assert buttons
    assert all("hidden" in b for b in buttons)
    assert f"curl -i -H 'Authorization: Bearer {key}' http://localhost/" in page.text
    assert any(
        (s.get("src") or "").endswith("/vemetric_auth/copy.js")
        for s in page.all("script")
    )
    # Never again: the list, the form, the revoke page.
    for url in (LIST, NEW, revoke_url(record)):
        assert key not in client.get(url).text


def test_the_curl_line_calls_the_api_url_given(keys: KeyManager) -> None:
    host = Host(keys, api_url=lambda project_id: f"https://api.example/{project_id}")
    response = create(host.client(), "curl")
    key = key_in(response)
    assert f"Bearer {key}' https://api.example/proj_1" in Page(response.text).text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("", "Name must not be empty.", id="empty"),
        pytest.param("   ", "Name must not be empty.", id="blank"),
        pytest.param(
            "x" * 101, "Name must be at most 100 characters, got 101.", id="too-long"
        ),
        pytest.param(
            "tab\tin it", "Name must not contain control characters.", id="control"
        ),
    ],
)
def test_create_refuses_a_bad_name_next_to_the_field(
    keys: KeyManager, client: FlaskClient, name: str, message: str
) -> None:
    response = create(client, name)
    assert response.status_code == 422
    page = Page(response.text)
    [error] = re.findall(
        r'<p class="error" id="key-name-error">(.*?)</p>', response.text
    )
    assert message in error
    [field] = [i for i in page.all("input") if i.get("name") == "name"]
    assert field.get("aria-invalid") == "true"
    assert "key-name-error" in (field.get("aria-describedby") or "")
    assert field.get("value") == name
    assert keys.list("proj_1", include_revoked=True) == []


def test_a_key_pasted_as_the_name_is_refused_and_not_echoed(
    keys: KeyManager, client: FlaskClient
) -> None:
    pasted = keys.create("proj_2", "someone's").key
    response = create(client, f"my key {pasted}")
    assert response.status_code == 422
    assert "Name must not contain an API key." in response.text
    assert pasted not in response.text
    assert pasted[12:] not in response.text
    assert keys.list("proj_1") == []


def test_a_name_without_a_form_field_is_refused(client: FlaskClient) -> None:
    token = form_token(client)
    response = client.post(LIST, data={"csrf_token": token})
    assert response.status_code == 422


# -- revoke ----------------------------------------------------------------------------


def test_revoke_asks_for_confirmation_then_lists_with_a_notice(
    keys: KeyManager, client: FlaskClient
) -> None:
    issued = keys.create("proj_1", "old CI")
    confirm = client.get(revoke_url(issued.record))
    assert confirm.status_code == 200
    page = Page(confirm.text)
    assert "Revoke API key “old CI”?" in page.text
    assert issued.record.prefix in page.text
    assert keys.get(issued.record.id).revoked is False  # asking changed nothing
    [form] = page.all("form")
    assert (form.get("method"), form.get("action")) == (
        "post",
        revoke_url(issued.record),
    )

    response = client.post(
        revoke_url(issued.record), data={"csrf_token": token_of(confirm)}
    )
    assert response.status_code == 303
    assert response.location == LIST
    record = keys.get(issued.record.id)
    assert (record.revoked, record.revoked_by) == (True, "alice")
    with pytest.raises(InvalidApiKey):
        keys.authenticate(issued.key)
    listed = Page(client.get(LIST).text).text
    assert f"Revoked “old CI” ({issued.record.prefix})" in listed
    # The notice is shown once.
    assert "Revoked “old CI”" not in Page(client.get(LIST).text).text


def test_revoking_a_revoked_key_changes_nothing(
    keys: KeyManager, client: FlaskClient
) -> None:
    issued = keys.create("proj_1", "twice")
    before = keys.revoke(issued.record.id, revoked_by="bob")
    confirm = client.get(revoke_url(issued.record))
    assert "was revoked on" in Page(confirm.text).text
    assert not Page(confirm.text).all("form")
    token = form_token(client)
    response = client.post(revoke_url(issued.record), data={"csrf_token": token})
    assert response.status_code == 303
    assert keys.get(issued.record.id) == before
    assert "was already revoked" in Page(client.get(LIST).text).text


def test_a_key_of_another_project_is_not_found_here(
    keys: KeyManager, client: FlaskClient
) -> None:
    theirs = keys.create("proj_2", "bob's").record
    token = form_token(client)
    url = f"{LIST}/{theirs.id}/revoke"
    assert client.get(url).status_code == 404
    assert client.post(url, data={"csrf_token": token}).status_code == 404
    assert keys.get(theirs.id).revoked is False


@pytest.mark.parametrize(
    "key_id",
    [
        pytest.param("0" * 32, id="unknown"),
        pytest.param("vem_abcd1234", id="a-prefix-not-an-id"),
        pytest.param("%01", id="control-character"),
    ],
)
def test_an_unknown_key_is_404(client: FlaskClient, key_id: str) -> None:
    assert client.get(f"{LIST}/{key_id}/revoke").status_code == 404


# -- CSRF and POST ------------------------------------------------------------------


def _other_sessions_token(host: Host) -> str:
    return form_token(host.client())


def _tampered(token: str) -> str:
    return token[:-2] + ("AA" if token[-2:] != "AA" else "BB")


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda host, token: None, id="missing"),
        pytest.param(lambda host, token: "", id="empty"),
        pytest.param(lambda host, token: "not-a-token", id="garbage"),
        pytest.param(lambda host, token: _tampered(token), id="tampered"),
        pytest.param(
            lambda host, token: _other_sessions_token(host), id="other-session"
        ),
        pytest.param(
            lambda host, token: itsdangerous.URLSafeTimedSerializer(
                "another secret", salt="vemetric_auth.pages.csrf"
            ).dumps("x" * 64),
            id="other-secret",
        ),
    ],
)
@pytest.mark.parametrize("action", ["create", "revoke", "roll"])
def test_a_post_without_this_sessions_token_is_400_and_changes_nothing(
    host: Host,
    keys: KeyManager,
    client: FlaskClient,
    forge: Callable[[Host, str], str | None],
    action: str,
) -> None:
    target = keys.create("proj_1", "target")
    token = form_token(client)
    forged = forge(host, token)
    data = {} if forged is None else {"csrf_token": forged}
    before = snapshot(keys)
    if action == "create":
        response = client.post(LIST, data={**data, "name": "forged"})
    elif action == "roll":
        response = client.post(roll_url(target.record), data={**data, "overlap": "0"})
    else:
        response = client.post(revoke_url(target.record), data=data)
    assert response.status_code == 400
    assert "nothing was changed" in response.text
    assert_security_headers(response)
    assert snapshot(keys) == before


def test_a_post_with_a_token_but_no_session_is_400(
    keys: KeyManager, host: Host
) -> None:
    token = form_token(host.client())
    fresh = host.client()  # no session cookie
    response = fresh.post(LIST, data={"name": "x", "csrf_token": token})
    assert response.status_code == 400
    assert keys.list("proj_1") == []


def test_a_stale_token_is_400(
    keys: KeyManager, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = form_token(client)
    later = int(itsdangerous.timed.time.time()) + pages_module.CSRF_TIME_LIMIT + 5
    monkeypatch.setattr(
        itsdangerous.TimestampSigner, "get_timestamp", lambda self: later
    )
    response = client.post(LIST, data={"name": "late", "csrf_token": token})
    assert response.status_code == 400
    assert "expired" in response.text
    assert keys.list("proj_1") == []


def test_a_token_works_for_every_form_of_its_session(
    keys: KeyManager, client: FlaskClient
) -> None:
    token = form_token(client)
    assert client.post(LIST, data={"name": "a", "csrf_token": token}).status_code == 200
    assert client.post(LIST, data={"name": "b", "csrf_token": token}).status_code == 200
    assert len(keys.list("proj_1")) == 2


def test_every_change_is_a_post_and_no_get_changes_anything(
    host: Host, keys: KeyManager, client: FlaskClient
) -> None:
    rules = [
        rule
        for rule in host.app.url_map.iter_rules()
        if rule.endpoint.startswith("vemetric_auth_pages.")
        and rule.endpoint != "vemetric_auth_pages.static"
    ]
    views = {
        rule.endpoint.split(".")[1]: rule.methods - {"HEAD", "OPTIONS"}
        for rule in rules
    }
    assert views == {
        "list_keys": {"GET"},
        "new_key": {"GET"},
        "create_key": {"POST"},
        "confirm_revoke": {"GET"},
        "revoke_key": {"POST"},
        "confirm_roll": {"GET"},
        "roll_key": {"POST"},
    }
    issued = keys.create("proj_1", "stays")
    before = snapshot(keys)
    for url in (
        LIST,
        LIST + "?revoked=shown",
        NEW,
        revoke_url(issued.record),
        roll_url(issued.record),
    ):
        assert client.get(url).status_code == 200
        assert client.head(url).status_code == 200
    # Another method matches no page: the app answers it (VemetricAuth asks
    # for a key before it tells a 405).
    for method in ("PUT", "PATCH", "DELETE"):
        for url in (revoke_url(issued.record), roll_url(issued.record), LIST):
            assert client.open(url, method=method).status_code in (401, 405)
    assert snapshot(keys) == before


# -- headers and HTML ------------------------------------------------------------------


def assert_security_headers(response: TestResponse) -> None:
    headers = response.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    policy = headers["Content-Security-Policy"]
    directives = dict(
        (part.split()[0], part.split()[1:])
        for part in policy.split(";")
        if part.strip()
    )
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


def assert_no_inline_code(response: TestResponse) -> None:
    page = Page(response.text)
    assert page.inline_scripts == []
    assert not page.all("style")
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        assert not any(name.startswith("on") for name in attrs), tag
        for name in ("href", "src", "action"):
            assert not (attrs.get(name) or "").lower().startswith("javascript:")


def every_page(
    keys: KeyManager, client: FlaskClient, flaky_store: FlakyStore | None = None
) -> Iterator[tuple[str, TestResponse]]:
    issued = keys.create("proj_1", "a key")
    gone = keys.create("proj_1", "a revoked key")
    keys.revoke(gone.record.id)
    yield "list", client.get(LIST)
    yield "list with revoked", client.get(LIST + "?revoked=shown")
    yield "new", client.get(NEW)
    yield "created", create(client, "new one")
    yield "name refused", create(client, "")
    yield "revoke confirm", client.get(revoke_url(issued.record))
    yield "revoke confirm of a revoked key", client.get(revoke_url(gone.record))
    token = form_token(client)
    yield "roll form", client.get(roll_url(issued.record))
    yield "rolled", roll(client, issued.record, overlap="1h")
    yield (
        "roll refused",
        client.post(
            roll_url(issued.record), data={"overlap": "2h", "csrf_token": token}
        ),
    )
    yield (
        "roll of a revoked key",
        client.post(roll_url(gone.record), data={"overlap": "1h", "csrf_token": token}),
    )
    yield "revoked", client.post(revoke_url(issued.record), data={"csrf_token": token})
    yield "csrf refused", client.post(LIST, data={"name": "x"})
    yield "forbidden", client.get(f"{PREFIX}/projects/proj_9/keys")
    yield "unknown key", client.get(f"{LIST}/{'0' * 32}/revoke")


def test_every_page_carries_the_security_headers_and_no_inline_code(
    keys: KeyManager, client: FlaskClient
) -> None:
    seen = set()
    for what, response in every_page(keys, client):
        assert response.status_code in (200, 303, 400, 403, 404, 409, 422), what
        seen.add(response.status_code)
        assert_security_headers(response)
        if response.content_type.startswith("text/html") and response.text.strip():
            assert_no_inline_code(response)
    assert seen == {200, 303, 400, 403, 404, 409, 422}


def test_a_store_outage_is_a_503_page_with_the_headers(
    flaky_store: FlakyStore, flaky_keys: KeyManager
) -> None:
    flaky_keys.create("proj_1", "there")
    client = Host(flaky_keys).client()
    token = form_token(client)
    flaky_store.failing = True
    for response in (
        client.get(LIST),
        client.post(LIST, data={"name": "x", "csrf_token": token}),
    ):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "nothing was changed" in response.text
        assert_security_headers(response)


def test_every_field_has_a_label_and_the_page_a_viewport(
    keys: KeyManager, client: FlaskClient
) -> None:
    for what, response in every_page(keys, client):
        if response.status_code == 303:
            continue
        page = Page(response.text)
        assert any(m.get("name") == "viewport" for m in page.all("meta")), what
        assert page.all("html")[0].get("lang") == "en"
        labelled = {label.get("for") for label in page.all("label")}
        for field in page.all("input") + page.all("select") + page.all("textarea"):
            if field.get("type") == "hidden":
                continue
            assert field.get("id") in labelled, (what, field)
        assert len(page.all("h1")) == 1, what


def test_names_are_escaped_everywhere(keys: KeyManager, client: FlaskClient) -> None:
    created = create(client, XSS)
    assert created.status_code == 200
    record = keys.list("proj_1")[0]
    assert record.name == XSS
    listed = client.get(LIST)
    confirm = client.get(revoke_url(record))
    revoked = client.post(revoke_url(record), data={"csrf_token": token_of(confirm)})
    notice = client.get(LIST + "?revoked=shown")
    refused = create(client, XSS + "x" * 100)  # echoed into the form
    for response in (created, listed, confirm, notice, refused):
        assert XSS not in response.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
        assert Page(response.text).inline_scripts == []
    assert revoked.status_code == 303


def test_the_user_and_project_are_escaped_too(keys: KeyManager) -> None:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="s")
    app.register_blueprint(
        key_pages(keys, authorize=lambda p: "<b>mallory</b>"), url_prefix="/k"
    )
    client = app.test_client()
    response = client.get("/k/projects/%3Ci%3Ep/keys")
    assert "<b>" not in response.text
    assert "<i>" not in response.text
    assert "&lt;b&gt;mallory&lt;/b&gt;" in response.text
    assert "&lt;i&gt;p" in response.text


# -- where the plaintext key may be -----------------------------------------------------


def test_the_key_is_only_in_the_body_of_the_post_that_made_it(
    host: Host, keys: KeyManager, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = form_token(client)
    response = client.post(LIST, data={"name": "secret holder", "csrf_token": token})
    key = key_in(response)
    record = keys.authenticate(key)
    # The response: its body only.
    assert response.status_code == 200
    assert response.location is None
    for name, value in response.headers.items():
        assert key not in value, name
        assert key[12:] not in value, name
    # The session (the signed cookie, decoded) and every cookie.
    serializer = host.app.session_interface.get_signing_serializer(host.app)
    for cookie in client._cookies.values():
        assert key not in cookie.value
        assert key[12:] not in cookie.value
        if cookie.key == host.app.config["SESSION_COOKIE_NAME"]:
            session = serializer.loads(cookie.value)
            assert set(session) == {"_vemetric_auth_csrf"}
            assert key not in repr(session)
    # Revoking it: the redirect, the flashed notice, the list after it.
    confirm = client.get(revoke_url(record))
    revoked = client.post(revoke_url(record), data={"csrf_token": token_of(confirm)})
    assert key not in (revoked.location or "")
    assert key not in revoked.text
    with client.session_transaction() as session:
        assert key not in repr(dict(session))
        assert key[12:] not in repr(dict(session))
        assert session.get("_flashes")  # the notice is there, without the key
    assert key not in client.get(LIST + "?revoked=shown").text
    # No log record, with or without its arguments.
    assert caplog.records  # the manager did log the creation
    assert key not in caplog.text
    assert key[12:] not in caplog.text
    for log_record in caplog.records:
        assert key not in log_record.getMessage()


def test_a_name_is_never_put_in_a_url(keys: KeyManager, client: FlaskClient) -> None:
    response = create(client, "Production dashboard")
    page = Page(response.text)
    for attrs in (
        page.all("a") + page.all("form") + page.all("link") + page.all("script")
    ):
        for name in ("href", "action", "src"):
            assert "Production" not in (attrs.get(name) or "")


def test_a_rolled_key_is_only_in_the_body_of_the_post_that_rolled_it(
    host: Host, keys: KeyManager, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    old = keys.create("proj_1", "to roll")
    response = roll(client, old.record)
    key = key_in(response)
    assert key != old.key
    assert response.location is None
    for name, value in response.headers.items():
        assert key not in value, name
    with client.session_transaction() as session:
        assert key not in repr(dict(session))
    for url in (LIST, roll_url(old.record), revoke_url(old.record)):
        assert key not in client.get(url).text
    assert key not in caplog.text
    assert key[12:] not in caplog.text


# -- the lifecycle: expiry, last use, roll ------------------------------------------


class SixMethodStore:
    """A store of the first release: the six methods of KeyStore, no more."""

    def __init__(self) -> None:
        self.inner = InMemoryKeyStore()

    def add(self, record: ApiKey, key_hash: str) -> None:
        self.inner.add(record, key_hash)

    def get(self, key_id: str) -> ApiKey | None:
        return self.inner.get(key_id)

    def find_by_prefix(self, prefix: str) -> Any:
        return self.inner.find_by_prefix(prefix)

    def list(self, project_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
        return self.inner.list(project_id, include_revoked=include_revoked)

    def revoke(self, key_id: str, *, revoked_at: Any, revoked_by: Any) -> Any:
        return self.inner.revoke(key_id, revoked_at=revoked_at, revoked_by=revoked_by)

    def set_hash(self, key_id: str, key_hash: str) -> None:
        self.inner.set_hash(key_id, key_hash)


def test_the_list_shows_last_use_expiry_and_status(
    keys: KeyManager, memory_store: InMemoryKeyStore, client: FlaskClient
) -> None:
    soon = datetime.now(timezone.utc) + timedelta(days=30)
    used = keys.create("proj_1", "used", expires_at=soon)
    memory_store.record_use(
        {used.record.id: datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)}
    )
    expired = keys.create("proj_1", "expired", expires_at=soon)
    memory_store.set_expiry(
        expired.record.id, datetime(2026, 1, 1, tzinfo=timezone.utc)
    )
    response = client.get(LIST)
    rows = re.findall(r"<tr class=\"row-(\w+)\">(.*?)</tr>", response.text, re.S)
    by_name = {
        re.search(r'class="name">(.*?)<', row).group(1): (status, row)
        for status, row in rows
    }  # type: ignore[union-attr]
    status, row = by_name["used"]
    assert status == "active"
    assert "2026-01-02 03:04" in row  # last used
    assert soon.strftime("%Y-%m-%d %H:%M") in row
    status, row = by_name["expired"]
    assert status == "expired"
    assert "Never" in row  # never used
    assert "2026-01-01 00:00" in row
    assert ">expired<" in row
    assert 'href="' + roll_url(expired.record) + '"' in row  # an expired key rolls


def test_create_with_an_expiry(keys: KeyManager, client: FlaskClient) -> None:
    form = Page(client.get(NEW).text)
    [select] = form.all("select")
    assert select.get("name") == "expires"
    token = form_token(client)
    before = datetime.now(timezone.utc)
    response = client.post(
        LIST, data={"name": "month", "expires": "30d", "csrf_token": token}
    )
    assert response.status_code == 200
    record = keys.authenticate(key_in(response))
    assert record.expires_at is not None
    assert before + timedelta(days=30) <= record.expires_at
    assert record.expires_at <= datetime.now(timezone.utc) + timedelta(days=30)
    assert record.expires_at.strftime("%Y-%m-%d %H:%M") in response.text


def test_an_unknown_expiry_is_refused_next_to_its_field(
    keys: KeyManager, client: FlaskClient
) -> None:
    token = form_token(client)
    response = client.post(
        LIST, data={"name": "odd", "expires": "forever", "csrf_token": token}
    )
    assert response.status_code == 422
    assert 'id="key-expires-error"' in response.text
    assert keys.list("proj_1", include_revoked=True) == []


def test_a_new_key_works_only_once_its_page_is_rendered(
    keys: KeyManager, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_render = pages_module.render_template
    real_activate = keys.activate

    def render(template: str, /, **context: Any) -> str:
        if template == "vemetric_auth/issued.html":
            events.append("rendered")
            # Rendered while the key does not work yet.
            with pytest.raises(InvalidApiKey):
                keys.authenticate(context["key"])
        return real_render(template, **context)

    def activate(issued: Any, **options: Any) -> ApiKey:
        events.append("activated")
        return real_activate(issued, **options)

    monkeypatch.setattr(pages_module, "render_template", render)
    monkeypatch.setattr(keys, "activate", activate)
    created = create(client, "pending first")
    assert keys.authenticate(key_in(created)).name == "pending first"
    old = keys.list("proj_1")[0]
    rolled = roll(client, old)
    assert keys.authenticate(key_in(rolled)).name == "pending first"
    assert events == ["rendered", "activated", "rendered", "activated"]


def test_a_new_key_whose_page_fails_never_works(
    keys: KeyManager, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued_keys: list[str] = []
    real_render = pages_module.render_template

    def render(template: str, /, **context: Any) -> str:
        if template == "vemetric_auth/issued.html":
            issued_keys.append(context["key"])
            raise RuntimeError("a template of the host is broken")
        return real_render(template, **context)

    monkeypatch.setattr(pages_module, "render_template", render)
    with pytest.raises(RuntimeError, match="broken"):
        create(client, "never shown")
    [key] = issued_keys
    with pytest.raises(InvalidApiKey):
        keys.authenticate(key)
    [record] = keys.list("proj_1", include_revoked=True)
    assert record.revoked_by == "vemetric-auth: the page showing it failed"


def test_a_failed_activation_shows_no_key(
    keys: KeyManager, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vemetric_auth import StoreUnavailable

    def activate(issued: Any, **options: Any) -> ApiKey:
        raise StoreUnavailable("the store went away")

    monkeypatch.setattr(keys, "activate", activate)
    response = create(client, "not activated")
    assert response.status_code == 503
    assert not KEY_PATTERN.search(response.text)


def test_roll_asks_for_the_overlap_then_shows_the_new_key(
    keys: KeyManager, client: FlaskClient
) -> None:
    old = keys.create("proj_1", "deploys", created_by="bob")
    form = client.get(roll_url(old.record))
    assert form.status_code == 200
    page = Page(form.text)
    assert "Roll API key “deploys”" in page.text
    radios = [i for i in page.all("input") if i.get("type") == "radio"]
    assert [r.get("value") for r in radios] == ["0", "1h", "24h", "7d", "30d"]
    assert [r.get("value") for r in radios if "checked" in r] == ["24h"]
    assert keys.authenticate(old.key).id == old.record.id  # asking changed nothing

    before = datetime.now(timezone.utc)
    response = roll(client, old.record, overlap="7d", expires="90d")
    assert response.status_code == 200
    new_key = key_in(response)
    new = keys.authenticate(new_key)
    assert (new.project_id, new.name, new.created_by) == ("proj_1", "deploys", "alice")
    assert new.expires_at is not None
    assert new.expires_at >= before + timedelta(days=90)
    text = Page(response.text).text
    assert "API key rolled" in text
    assert f"It replaces {old.record.prefix} , which keeps working until" in text
    # The old key still works, until the end of the overlap.
    stays = keys.authenticate(old.key)
    assert stays.id == old.record.id
    assert stays.expires_at is not None
    assert before + timedelta(days=7) <= stays.expires_at
    assert stays.expires_at <= datetime.now(timezone.utc) + timedelta(days=7)


def test_roll_with_no_overlap_revokes_the_old_key_at_once(
    keys: KeyManager, client: FlaskClient
) -> None:
    old = keys.create("proj_1", "now")
    response = roll(client, old.record, overlap="0")
    assert response.status_code == 200
    assert "was revoked" in Page(response.text).text
    with pytest.raises(InvalidApiKey):
        keys.authenticate(old.key)
    record = keys.get(old.record.id)
    assert (record.revoked, record.revoked_by) == (True, "alice")
    assert keys.authenticate(key_in(response)).name == "now"


@pytest.mark.parametrize(
    ("overlap", "expires", "field"),
    [
        pytest.param("2h", "never", "overlap", id="unknown-overlap"),
        pytest.param("", "never", "overlap", id="no-overlap"),
        pytest.param("1h", "soon", "key-expires", id="unknown-expiry"),
    ],
)
def test_roll_refuses_a_choice_it_does_not_offer(
    keys: KeyManager, client: FlaskClient, overlap: str, expires: str, field: str
) -> None:
    old = keys.create("proj_1", "stays")
    before = snapshot(keys)
    token = form_token(client, roll_url(old.record))
    response = client.post(
        roll_url(old.record),
        data={"overlap": overlap, "expires": expires, "csrf_token": token},
    )
    assert response.status_code == 422
    assert f'id="{field}-error"' in response.text
    assert snapshot(keys) == before


def test_a_revoked_key_is_not_rolled(keys: KeyManager, client: FlaskClient) -> None:
    gone = keys.create("proj_1", "gone")
    keys.revoke(gone.record.id)
    form = client.get(roll_url(gone.record))
    assert "a revoked key cannot be rolled" in Page(form.text).text
    assert not Page(form.text).all("form")
    before = snapshot(keys)
    token = form_token(client)
    response = client.post(
        roll_url(gone.record), data={"overlap": "1h", "csrf_token": token}
    )
    assert response.status_code == 409
    assert snapshot(keys) == before


def test_a_key_of_another_project_is_not_rolled_here(
    keys: KeyManager, client: FlaskClient
) -> None:
    theirs = keys.create("proj_2", "bob's")
    token = form_token(client)
    url = f"{LIST}/{theirs.record.id}/roll"
    assert client.get(url).status_code == 404
    response = client.post(url, data={"overlap": "0", "csrf_token": token})
    assert response.status_code == 404
    assert keys.authenticate(theirs.key).id == theirs.record.id
    assert len(keys.list("proj_2")) == 1


def test_a_store_without_the_lifecycle_offers_no_expiry_and_no_roll(
    hasher: Any,
) -> None:
    keys = KeyManager(SixMethodStore(), hasher=hasher)  # type: ignore[arg-type]
    client = Host(keys).client()
    issued = keys.create("proj_1", "old store")
    listed = Page(client.get(LIST).text)
    assert not any("/roll" in (a.get("href") or "") for a in listed.all("a"))
    assert not Page(client.get(NEW).text).all("select")
    assert client.get(roll_url(issued.record)).status_code == 404
    token = form_token(client)
    response = client.post(
        LIST, data={"name": "plain", "expires": "30d", "csrf_token": token}
    )
    assert response.status_code == 200
    record = keys.authenticate(key_in(response))
    assert record.expires_at is None


# -- the example app's login in front of the pages ----------------------------------


def example_module() -> Any:
    """``examples/flask_app.py``, imported."""
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        return importlib.import_module("flask_app")
    finally:
        sys.path.pop(0)


@pytest.fixture
def example_app(tmp_path: Path) -> Iterator[Flask]:
    flask_app = example_module()
    app = flask_app.create_app(
        {
            "VEMETRIC_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
            "DEMO_PASSWORD": "letmein",
        }
    )
    with app.app_context():
        flask_app.projects().add("proj_demo", "Demo", "demo.example")
    yield app
    flask_app.auth.keys_for(app).store.close()  # type: ignore[attr-defined]
    app.extensions["flask_app.projects"].engine.dispose()


EXAMPLE_KEYS = "/settings/projects/proj_demo/keys"


def test_the_example_sends_a_stranger_to_its_login_and_back(example_app: Flask) -> None:
    client = example_app.test_client()
    response = client.get(EXAMPLE_KEYS)
    assert response.status_code == 302
    assert response.location.startswith("/login?next=")
    wrong = client.post(
        "/login", data={"username": "demo", "password": "nope", "next": EXAMPLE_KEYS}
    )
    assert wrong.status_code == 401
    assert client.get(EXAMPLE_KEYS).status_code == 302
    right = client.post(
        "/login", data={"username": "demo", "password": "letmein", "next": EXAMPLE_KEYS}
    )
    assert (right.status_code, right.location) == (303, EXAMPLE_KEYS)
    assert client.get(EXAMPLE_KEYS).status_code == 200
    # A project the app does not have: refused by the callback.
    assert client.get("/settings/projects/proj_nope/keys").status_code == 403
    client.post("/logout")
    assert client.get(EXAMPLE_KEYS).status_code == 302


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:x"],
)
def test_the_example_login_sends_nobody_elsewhere(
    example_app: Flask, target: str
) -> None:
    response = example_app.test_client().post(
        "/login", data={"username": "demo", "password": "letmein", "next": target}
    )
    assert (response.status_code, response.location) == (303, "/login")


def test_the_example_login_is_off_without_a_password(tmp_path: Path) -> None:
    flask_app = example_module()
    app = flask_app.create_app(
        {
            "VEMETRIC_AUTH_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.db'}",
            "DEMO_PASSWORD": "",
        }
    )
    try:
        response = app.test_client().post(
            "/login", data={"username": "demo", "password": ""}
        )
        assert response.status_code == 401
        assert "set DEMO_PASSWORD" in response.text
    finally:
        flask_app.auth.keys_for(app).store.close()  # type: ignore[attr-defined]
        app.extensions["flask_app.projects"].engine.dispose()


def test_every_template_and_static_file_is_package_data() -> None:
    import configparser
    import fnmatch

    root = Path(__file__).resolve().parent.parent
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    patterns = config["options.package_data"]["vemetric_auth"].split()
    package = root / "vemetric_auth"
    shipped = [
        path.relative_to(package).as_posix()
        for folder in ("templates", "static")
        for path in (package / folder).rglob("*")
        if path.is_file()
    ]
    assert len(shipped) >= 9
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


class _LateRollStore(InMemoryKeyStore):
    """Lands every roll, but answers only after the manager gave up on it."""

    def roll(self, *args: Any, **kwargs: Any) -> ApiKey | None:
        time.sleep(0.6)
        return super().roll(*args, **kwargs)


def test_a_roll_the_store_lands_after_the_page_gave_up_is_undone(
    hasher: Any,
) -> None:
    """The roll page answers 503 without the key when the store is too slow;
    when the store then lands the roll anyway, nobody has the new key: it
    never works, and the old key keeps working as it did."""
    store = _LateRollStore()
    keys = KeyManager(store, hasher=hasher, store_timeout=0.2)
    old = keys.create("proj_1", "deploys", created_by="bob")
    client = Host(keys).client()
    response = roll(client, old.record, overlap="0")
    assert response.status_code == 503
    assert not KEY_PATTERN.search(response.text)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = store.list("proj_1", include_revoked=True)
        new = [r for r in records if r.id != old.record.id]
        if new and new[0].revoked_at is not None:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # the undo of the old key's retirement lands too
    assert [r.active for r in store.list("proj_1") if r.id != old.record.id] == []
    assert keys.authenticate(old.key).id == old.record.id
    keys.close()
