"""The page `coap proxy` serves at `/`, in headless Chromium (Debian's `chromium`,
installed by `scripts/services up tools`), driven over its DevTools protocol with a
few lines of our own (websocket-client, which stomp.py already depends on): the page
lists a device's resources, and an observed value changes on screen when the device's
resource changes.

Every navigation (Page.navigate, the form's submission) is waited for by its DevTools
events: the main frame's `load` lifecycle event of the new document's loader. Nothing is
evaluated while a navigation is under way: a Runtime.evaluate still unanswered when the
new document commits is answered "Inspected target navigated or closed" (Chromium ends
the old document's pending evaluations), which a loaded machine makes likely."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest

from tests.protocols.coap_proxy_helpers import curl, start_device, start_proxy, stop, wait_for

CHROMIUM = "chromium"


class Browser:
    """Headless Chromium with a DevTools connection to its one page."""

    def __init__(self, profile):
        if shutil.which(CHROMIUM) is None:
            pytest.fail(f"{CHROMIUM} is missing; install it with: scripts/services up tools (as root)", pytrace=False)
        import websocket

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = os.path.join(profile, "DevToolsActivePort")
            wait_for(lambda: os.path.exists(port_file) and open(port_file).read().strip(), 30,
                     "chromium's DevTools port")
            port = int(open(port_file).read().split()[0])
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            (page,) = [t for t in targets if t["type"] == "page"]
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=15, suppress_origin=True)
            self.n = 0
            self.events: list[dict] = []   # events not yet looked at, oldest first
            self.call("Page.enable")
            self.call("Page.setLifecycleEventsEnabled", enabled=True)
            self.frame = self.call("Page.getFrameTree")["frameTree"]["frame"]["id"]
        except BaseException:
            self.close()
            raise

    def _receive(self, timeout: float) -> dict:
        import websocket

        self.ws.settimeout(max(timeout, 0.001))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"no word from chromium's DevTools within {timeout:g} s") from None
        finally:
            self.ws.settimeout(15)

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            message = self._receive(15)
            if message.get("id") == self.n:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def wait_event(self, match, timeout: float, what: str) -> dict:
        """The first event (already received or still to come) that `match` accepts;
        the events before it are dropped."""
        end = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if match(event):
                    del self.events[:i + 1]
                    return event
            self.events.clear()
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what} did not happen within {timeout:g} s")
            message = self._receive(remaining)
            if "method" in message:
                self.events.append(message)

    def _loaded(self, loader: str, what: str) -> None:
        """Wait for the main frame's `load` of the document that `loader` brings."""
        self.wait_event(lambda e: e["method"] == "Page.lifecycleEvent" and e["params"]["name"] == "load"
                        and e["params"]["frameId"] == self.frame and e["params"]["loaderId"] == loader,
                        15, f"the load of {what}")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise AssertionError(f"{url}: {result['errorText']}")
        self._loaded(result["loaderId"], url)
        assert self.evaluate("location.href") == url

    def navigate_by(self, script: str, what: str) -> None:
        """Run `script`, which makes the page navigate (a form's submission), and wait
        until the new document has loaded. The script runs from a task of its own, so
        the evaluation that schedules it has answered before the navigation starts."""
        self.events.clear()
        self.evaluate(f"setTimeout(() => {{ {script} }}, 0)")
        navigated = self.wait_event(lambda e: e["method"] == "Page.frameNavigated"
                                    and e["params"]["frame"]["id"] == self.frame, 15, f"the navigation to {what}")
        self._loaded(navigated["params"]["frame"]["loaderId"], what)

    def cell(self, path: str) -> dict | None:
        return self.evaluate(f"""(() => {{
            const row = document.querySelector('tr[data-path="{path}"]');
            if (!row) return null;
            const cell = row.querySelector('.value');
            return {{text: cell.textContent, state: cell.dataset.state || '', updates: Number(cell.dataset.updates || 0)}};
        }})()""")

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    dev = start_device(tmp_path_factory.mktemp("device"))
    yield dev
    stop(dev.proc)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    px = start_proxy(tmp_path_factory.mktemp("proxy"), coap=False)
    yield px
    stop(px.proc)


@pytest.fixture
def browser(tmp_path):
    b = Browser(str(tmp_path / "profile"))
    yield b
    b.close()


def test_the_page_shows_an_observed_value_change_live(proxy, device, browser, iotctl):
    name = f"page-{uuid.uuid4().hex[:8]}"
    assert curl("-X", "PUT", "-H", "Content-Type: text/plain", "--data-binary", "v1",
                proxy.hc(f"{device.uri}/store/{name}")).status == 201
    browser.open(f"{proxy.http}/?device={device.uri}")
    paths = browser.evaluate("[...document.querySelectorAll('tr[data-path]')].map(r => r.dataset.path)")
    assert {"/time", "/sensors/temperature", "/actuators/led", "/large", f"/store/{name}"} <= set(paths), paths
    wait_for(lambda: (browser.cell(f"/store/{name}") or {}).get("text") == "v1", 15, "v1 on the page")
    # the device's value changes (set on the device itself, not through the proxy): the page follows
    r = iotctl("coap", "put", f"{device.uri}/store/{name}", "-m", "v2")
    assert r.exit_code == 0, r
    wait_for(lambda: browser.cell(f"/store/{name}")["text"] == "v2", 15, "v2 on the page")
    assert browser.cell(f"/store/{name}")["state"] == "live"
    # a sensor that changes every 0.2 s keeps changing on screen
    seen = set()
    wait_for(lambda: seen.add(browser.cell("/sensors/temperature")["text"]) or len(seen) >= 3, 15,
             "three temperatures")
    assert browser.evaluate("document.getElementById('status').textContent") == "live"
    # one event stream for the page, one observation per resource at the device
    log = device.log()
    assert log.count(f"GET /store/{name} observe=0") == 1
    browser.close()
    device.wait_log(rf"GET /store/{name} observe=1 -> 2\.05", timeout=10)   # the page went: deregistered


def test_a_resource_that_is_not_observable_is_fetched_by_its_button(proxy, device, browser):
    browser.open(f"{proxy.http}/?device={device.uri}")
    assert browser.cell("/large")["text"] == "GET"
    browser.evaluate("document.querySelector('tr[data-path=\"/large\"] button.get').click()")
    wait_for(lambda: len(browser.cell("/large")["text"]) == 4096, 15, "/large fetched")
    assert browser.cell("/large")["text"].startswith("000000 The quick brown fox")


def test_the_form_names_the_device(proxy, device, browser):
    browser.open(f"{proxy.http}/")
    assert browser.evaluate("document.querySelectorAll('tr[data-path]').length") == 0
    browser.navigate_by(f"document.querySelector('input[name=device]').value = '{device.uri}';"
                        "document.querySelector('form').submit()", "the device's page")
    assert browser.evaluate("document.querySelectorAll('tr[data-path]').length") >= 7
    assert browser.evaluate("location.search") == "?device=" + device.uri.replace(":", "%3A").replace("/", "%2F")


def test_a_device_that_is_not_there_is_said_on_the_page(proxy, browser):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = curl(f"{proxy.http}/?device=coap://127.0.0.1:{port}")
    assert r.status == 502 and "connection refused" in r.text
    browser.open(f"{proxy.http}/?device=127.0.0.1:{port}")   # no scheme in the form: coap://
    assert "connection refused" in browser.evaluate("document.getElementById('error').textContent")
