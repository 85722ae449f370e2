"""The key management pages in a real browser: headless Chromium, by Selenium.

``examples/flask_app.py`` runs under werkzeug's server in a subprocess on a
free loopback port; the browser logs in, creates a key and reads it from the
page, calls the API with it, revokes it after confirming, and calls again.
Other tests drive the pages with the keyboard only, at 375 px wide, and with
JavaScript off.

Chromium and ChromeDriver are Debian's ``chromium`` and ``chromium-driver``
(``scripts/ensure-chromium.sh`` installs them). Without them, or without
Selenium, these tests skip, except under ``CI=true``, where they fail.

A screenshot of each page is saved under the test's temporary directory.
``SCREENSHOTS_DIR=docs/screenshots`` saves them there as well: that is how
the screenshots of the README are made.
"""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers.plugin import require

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PROJECT = "proj_demo"
PASSWORD = "browser-test-password"
KEYS_PATH = f"/settings/projects/{PROJECT}/keys"
INVALID = "Invalid or revoked API key"

pytestmark = pytest.mark.slow

#: The flags every Chromium of these tests starts with: headless, and quiet
#: on the network (no updates, sync or background requests of its own).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def find_binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """The paths of Chromium and its ChromeDriver."""
    require(
        importlib.util.find_spec("selenium") is not None,
        "selenium is not installed (pip install -e '.[test]')",
    )
    browser = find_binary("chromium", "chromium-browser")
    driver = find_binary("chromedriver")
    require(
        browser is not None and driver is not None,
        "no chromium and chromedriver (scripts/ensure-chromium.sh installs "
        "Debian's chromium and chromium-driver)",
    )
    assert browser is not None
    assert driver is not None
    return browser, driver


# -- the example app under a real server -------------------------------------------


class Server:
    """``python examples/flask_app.py`` on a free port, with a log of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.database_url = f"sqlite:///{directory / 'keys.db'}"
        self.log_path = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def add_project(self) -> None:
        sys.path.insert(0, str(EXAMPLES))
        try:
            import flask_app
        finally:
            sys.path.remove(str(EXAMPLES))
        app = flask_app.create_app({"VEMETRIC_AUTH_DATABASE_URL": self.database_url})
        try:
            with app.app_context():
                flask_app.projects().add(PROJECT, "Demo project", "demo.example")
        finally:
            flask_app.auth.keys_for(app).store.close()  # type: ignore[attr-defined]
            app.extensions["flask_app.projects"].engine.dispose()

    def start(self) -> None:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("VEMETRIC_AUTH_")
        }
        env.update(
            PORT="0",
            VEMETRIC_AUTH_DATABASE_URL=self.database_url,
            DEMO_PASSWORD=PASSWORD,
            SECRET_KEY="browser test secret",
            PYTHONUNBUFFERED="1",
            NO_COLOR="1",
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(EXAMPLES / "flask_app.py")],
                cwd=self.directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"Running on http://127\.0\.0\.1:(\d+)", self.log())
            if found:
                self.port = int(found.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("the example app did not start:\n" + self.log())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call_api(self, key: str) -> tuple[int, Any]:
        """``GET /v1/project`` with *key*: its status and JSON body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(
                "GET", "/v1/project", headers={"Authorization": f"Bearer {key}"}
            )
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()


@pytest.fixture
def server(chromium: tuple[str, str], tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.add_project()
    running.start()
    try:
        yield running
    finally:
        running.stop()


# -- the browser -------------------------------------------------------------------


class Browser:
    """A Selenium-driven Chromium with a fresh profile, saving screenshots."""

    #: The height of the screen, in CSS pixels; its width is given.
    HEIGHT = 800

    def __init__(
        self,
        chromium: tuple[str, str],
        directory: Path,
        *,
        javascript: bool = True,
        width: int = 1100,
    ) -> None:
        from selenium import webdriver

        browser, driver = chromium
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        profile = directory / "profile"
        profile.mkdir(parents=True)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={max(width, 800)},900")
        if not javascript:
            options.add_experimental_option(
                "prefs", {"profile.managed_default_content_settings.javascript": 2}
            )
        # The driver's path is given: Selenium Manager, which would download
        # one, never runs.
        service = webdriver.ChromeService(
            executable_path=driver, log_output=str(directory / "chromedriver.log")
        )
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_page_load_timeout(30)
        self.width = width
        self._emulate(self.HEIGHT)
        self.directory = directory
        self.shots: list[Path] = []

    def close(self) -> None:
        self.driver.quit()

    def get(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def link(self, text: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.PARTIAL_LINK_TEXT, text)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return "/" + url.split("/", 3)[3]

    @property
    def text(self) -> str:
        body: str = self.find("body").text
        return body

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def overflows(self) -> bool:
        """Whether the page is wider than the window: a sideways scroll."""
        width: int = self.driver.execute_script(
            "return document.documentElement.scrollWidth"
        )
        viewport: int = self.driver.execute_script(
            "return document.documentElement.clientWidth"
        )
        return width > viewport

    def _emulate(self, height: int) -> None:
        # A screen of exactly this width, as a phone's when narrow (the
        # viewport meta tag counts then); whatever the window's own minimum.
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": self.width,
                "height": height,
                "deviceScaleFactor": 1,
                "mobile": self.width < 600,
            },
        )

    def screenshot(self, name: str) -> Path:
        """Save the whole page as ``<name>.png``; also in SCREENSHOTS_DIR if set."""
        height = self.driver.execute_script(
            "return document.documentElement.scrollHeight"
        )
        self._emulate(max(int(height), 300))
        try:
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png"}
            )
        finally:
            self._emulate(self.HEIGHT)
        path = self.directory / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        self.shots.append(path)
        copy_to = os.environ.get("SCREENSHOTS_DIR")
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(copy_to) / path.name)
        return path

    def click(self, element: Any) -> None:
        """Click *element*, and wait for the page it opens."""
        self._opening(element.click)

    def enter(self, element: Any) -> None:
        """Press Enter on *element*, and wait for the page it opens."""
        from selenium.webdriver.common.keys import Keys

        self._opening(lambda: element.send_keys(Keys.ENTER))

    def _opening(self, action: Callable[[], None]) -> None:
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.wait import WebDriverWait

        old = self.find("html")
        action()
        WebDriverWait(self.driver, 10).until(expected_conditions.staleness_of(old))
        self.wait_for(
            lambda: (
                self.driver.execute_script("return document.readyState") == "complete"
            ),
            "the page to load",
        )

    def select(self, css: str, value: str) -> None:
        """Choose the option *value* of the ``<select>`` *css*."""
        from selenium.webdriver.support.select import Select

        Select(self.find(css)).select_by_value(value)

    def click_label(self, field_id: str) -> None:
        """Click the label of the field *field_id*, as a person does."""
        self.find(f"label[for='{field_id}']").click()
        assert self.find(f"#{field_id}").is_selected()

    def focused(self) -> Any:
        return self.driver.switch_to.active_element

    def press(self, *keys: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(*keys).perform()

    def tab_to(self, matches: Callable[[Any], bool], limit: int = 40) -> Any:
        """Press Tab until the focused element *matches*; return it."""
        from selenium.webdriver.common.keys import Keys

        for _ in range(limit):
            self.press(Keys.TAB)
            element = self.focused()
            if matches(element):
                return element
        raise AssertionError("Tab never reached the element")


@pytest.fixture
def open_browser(
    chromium: tuple[str, str], tmp_path: Path
) -> Iterator[Callable[..., Browser]]:
    opened: list[Browser] = []

    def open_one(**options: Any) -> Browser:
        browser = Browser(chromium, tmp_path / f"browser-{len(opened)}", **options)
        opened.append(browser)
        return browser

    yield open_one
    for browser in opened:
        browser.close()


def log_in(browser: Browser, server: Server) -> None:
    """Open the key pages, get sent to the app's login, log in, come back."""
    browser.get(server.url + KEYS_PATH)
    assert browser.path.startswith("/login?next=")
    browser.find("#username").send_keys("demo")
    browser.find("#password").send_keys(PASSWORD)
    browser.click(browser.find("button[type=submit]"))
    browser.wait_for(lambda: browser.path == KEYS_PATH, "the key list")


def row_of(browser: Browser, prefix: str) -> Any:
    """The list's row showing the key whose display prefix is *prefix*."""
    for row in browser.find_all("table.keys tbody tr"):
        if prefix in row.text:
            return row
    raise AssertionError(f"no row shows {prefix}")


def prefix_of(key: str) -> str:
    return key[:12] + "..."


# -- the flow ------------------------------------------------------------------------


def test_the_whole_flow_in_a_browser(
    server: Server, open_browser: Callable[..., Browser]
) -> None:
    browser = open_browser()
    browser.get(server.url + KEYS_PATH)
    assert browser.path.startswith("/login?next=")
    browser.screenshot("01-login")
    browser.find("#username").send_keys("demo")
    browser.find("#password").send_keys(PASSWORD)
    browser.click(browser.find("button[type=submit]"))
    browser.wait_for(lambda: browser.path == KEYS_PATH, "the key list")
    assert "No API keys yet" in browser.text
    browser.screenshot("02-list-empty")

    # Create a key, expiring in 90 days, and read it from the page.
    browser.click(browser.link("Create API key"))
    assert browser.path == KEYS_PATH + "/new"
    browser.find("#key-name").send_keys("CI deploys")
    browser.select("#key-expires", "90d")
    browser.screenshot("03-create")
    browser.click(browser.find("button[type=submit]"))
    assert "API key created" in browser.text
    assert "will not be shown again" in browser.text
    key = browser.find("#new-key").get_attribute("value")
    assert re.fullmatch(r"vem_[a-z0-9]{32}", key)
    assert key not in browser.driver.current_url
    copy = browser.find("button[data-copy=new-key]")
    assert copy.is_displayed()  # the script shows it
    copy.click()
    browser.wait_for(lambda: bool(browser.find("#new-key-status").text), "copying")
    assert f"Bearer {key}" in browser.find("#curl-line").text
    browser.screenshot("04-created")

    # The key works.
    status, body = server.call_api(key)
    assert (status, body["project"]["id"]) == (200, PROJECT)

    # Back to the list: the key is there, by its prefix only.
    browser.click(browser.link("back to API keys"))
    assert browser.path == KEYS_PATH
    row = row_of(browser, prefix_of(key))
    assert "CI deploys" in row.text
    assert "demo" in row.text
    assert "active" in row.text
    assert key not in browser.driver.page_source
    browser.screenshot("05-list")

    # Roll it: the old key works for an hour more, the new one at once.
    browser.click(row.find_element("css selector", "a[href$='/roll']"))
    assert browser.path.endswith("/roll")
    assert "Roll API key “CI deploys”" in browser.text
    browser.click_label("overlap-1h")
    browser.screenshot("06-roll")
    browser.click(browser.find("form button[type=submit]"))
    assert "API key rolled" in browser.text
    new_key = browser.find("#new-key").get_attribute("value")
    assert re.fullmatch(r"vem_[a-z0-9]{32}", new_key)
    assert new_key != key
    assert f"It replaces {prefix_of(key)}, which keeps working until" in browser.text
    browser.screenshot("07-rolled")
    assert server.call_api(new_key)[0] == 200
    assert server.call_api(key)[0] == 200

    browser.click(browser.link("back to API keys"))
    assert "CI deploys" in row_of(browser, prefix_of(new_key)).text
    browser.screenshot("08-list-rolled")

    # Revoke the old key, after confirming.
    row = row_of(browser, prefix_of(key))
    browser.click(row.find_element("css selector", "a.danger"))
    assert browser.path.endswith("/revoke")
    assert "Revoke API key “CI deploys”?" in browser.text
    assert prefix_of(key) in browser.text
    browser.screenshot("09-revoke")
    assert server.call_api(key)[0] == 200  # asking changed nothing
    browser.click(browser.find("form button[type=submit]"))
    assert browser.path == KEYS_PATH
    assert f"Revoked “CI deploys” ({prefix_of(key)})" in browser.text
    browser.screenshot("10-revoked")
    status, body = server.call_api(key)
    assert (status, body["error"]["message"]) == (401, INVALID)
    assert server.call_api(new_key)[0] == 200

    browser.click(browser.link("Show revoked keys"))
    assert "revoked" in row_of(browser, prefix_of(key)).text
    browser.screenshot("11-list-revoked")

    # Neither key reached the server's log (the URLs it wrote).
    log = server.log()
    assert "POST /settings/projects/proj_demo/keys" in log
    for plaintext in (key, new_key):
        assert plaintext not in log
        assert plaintext[12:] not in log


def test_keyboard_only_on_a_375_px_screen(
    server: Server, open_browser: Callable[..., Browser]
) -> None:

    browser = open_browser(width=375)
    log_in(browser, server)
    assert not browser.overflows()
    browser.screenshot("phone-01-list-empty")

    # Tab to "Create your first API key", Enter; type the name (the field has
    # the focus), Enter.
    browser.enter(browser.tab_to(lambda element: "Create" in element.text))
    browser.wait_for(lambda: browser.path.endswith("/new"), "the form")
    assert browser.focused().get_attribute("id") == "key-name"
    browser.press("phone")
    browser.enter(browser.focused())
    browser.wait_for(lambda: "API key created" in browser.text, "the new key")
    assert not browser.overflows()
    browser.screenshot("phone-02-created")
    # The key can be reached and selected from the keyboard.
    field = browser.tab_to(lambda element: element.get_attribute("id") == "new-key")
    key = field.get_attribute("value")
    assert server.call_api(key)[0] == 200

    browser.enter(browser.tab_to(lambda element: "back to API keys" in element.text))
    browser.wait_for(lambda: browser.path == KEYS_PATH, "the list")
    assert not browser.overflows()
    browser.screenshot("phone-03-list")

    browser.enter(browser.tab_to(lambda element: element.text.startswith("Roll")))
    browser.wait_for(lambda: browser.path.endswith("/roll"), "the roll form")
    assert not browser.overflows()
    browser.screenshot("phone-04-roll")
    browser.get(server.url + KEYS_PATH)

    browser.enter(browser.tab_to(lambda element: element.text.startswith("Revoke")))
    browser.wait_for(lambda: browser.path.endswith("/revoke"), "the confirmation")
    assert not browser.overflows()
    browser.screenshot("phone-05-revoke")
    browser.enter(browser.tab_to(lambda element: element.tag_name == "button"))
    browser.wait_for(lambda: browser.path == KEYS_PATH, "the list")
    assert "Revoked “phone”" in browser.text
    assert server.call_api(key)[0] == 401


def test_the_pages_work_without_javascript(
    server: Server, open_browser: Callable[..., Browser]
) -> None:
    browser = open_browser(javascript=False)
    log_in(browser, server)
    browser.click(browser.link("Create API key"))
    browser.find("#key-name").send_keys("no script")
    browser.click(browser.find("button[type=submit]"))
    field = browser.find("#new-key")
    key = field.get_attribute("value")
    # No copy button without the script: the key is selected and copied
    # from its read-only field.
    assert not browser.find("button[data-copy=new-key]").is_displayed()
    assert field.get_attribute("readonly") is not None
    browser.screenshot("nojs-created")
    assert server.call_api(key)[0] == 200

    browser.click(browser.link("back to API keys"))
    browser.click(
        row_of(browser, prefix_of(key)).find_element("css selector", "a.danger")
    )
    browser.click(browser.find("form button[type=submit]"))
    assert browser.path == KEYS_PATH
    assert server.call_api(key)[0] == 401


def test_a_name_with_markup_shows_as_text_and_runs_nothing(
    server: Server, open_browser: Callable[..., Browser]
) -> None:
    browser = open_browser()
    log_in(browser, server)
    browser.click(browser.link("Create API key"))
    browser.find("#key-name").send_keys("<script>alert(1)</script>")
    browser.click(browser.find("button[type=submit]"))
    assert "API key “<script>alert(1)</script>”" in browser.text
    browser.click(browser.link("back to API keys"))
    assert "<script>alert(1)</script>" in browser.find("table.keys").text
    # No alert opened: the name was never run.
    assert browser.driver.execute_script("return document.scripts.length") == 0


def test_a_refused_name_is_shown_next_to_its_field(
    server: Server, open_browser: Callable[..., Browser]
) -> None:
    browser = open_browser()
    log_in(browser, server)
    browser.click(browser.link("Create API key"))
    browser.find("#key-name").send_keys("   ")
    browser.click(browser.find("button[type=submit]"))
    error = browser.find("#key-name-error")
    assert "Name must not be empty." in error.text
    assert browser.find("#key-name").get_attribute("aria-invalid") == "true"
    browser.screenshot("create-refused")
