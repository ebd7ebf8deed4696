"""The head-score report in a real browser: headless Chromium, driven over the DevTools protocol.

Opens a generated `report.html` at 1,400 and 800 px and checks what a reader would notice: the page
fits the window, logs no error, requests nothing from the network, the head selector and the overview
grid change the picture; and, with JavaScript off, that the static fallback shows an image.
Needs Debian's `chromium` (`.ci/run` installs it); skipped, saying so, when no Chromium is found.
The DevTools websocket is spoken with the small client below (stdlib only), so no test dependency is added.
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from interp.cli import main

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (install Debian's chromium package: "
                                "apt-get install chromium; .ci/run does)")


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames out (masked), frames in."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        host_port, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = host_port.partition(":")
        self.socket = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.socket.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.socket.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response[:200]
        self.buffer = response.split(b"\r\n\r\n", 1)[1]

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.socket.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        size = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", size) if size < 1 << 16 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", size))
        self.socket.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(size)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode in (0x9, 0xA):  # ping / pong: DevTools does not send them, ignore
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        self.socket.close()


class Page:
    """One browser tab: send commands, collect events (console, exceptions, requests)."""

    def __init__(self, url: str) -> None:
        self.socket = WebSocket(url)
        self.next_id = 0
        self.events: list[dict] = []

    def command(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(json.loads(self.socket.receive()))
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, width: int, scripts: bool = True) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.command(f"{domain}.enable")
        self.command("Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1, mobile=False)
        self.command("Emulation.setScriptExecutionDisabled", value=not scripts)
        self.command("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        height = self.evaluate("document.documentElement.scrollHeight")
        data = self.command("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": self.evaluate("window.innerWidth"), "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(data["data"]))

    def errors(self) -> list:
        return [e for e in self.events
                if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                or e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium; yields a function that opens a new tab and returns its `Page`."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                                "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and len(port_file.read_text().split()) == 2):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"{CHROMIUM} did not start its DevTools server (exit code {process.poll()})")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    pages = []

    def new_page() -> Page:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(f"PUT /json/new?about:blank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            response = b""
            while not response.rstrip().endswith(b"}"):
                response += connection.recv(65536)
        target = json.loads(response.split(b"\r\n\r\n", 1)[1])
        pages.append(Page(target["webSocketDebuggerUrl"]))
        return pages[-1]

    yield new_page
    for page in pages:
        page.socket.close()
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def report_url(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    assert main(["heads", "--random-repeated", "8", "--length", "10", "--out", str(out), "--no-progress"]) == 0
    return (out / "interp-toy" / "repeated" / "report.html").resolve().as_uri()


GRID = "document.querySelector('.iav-gridbox canvas').toDataURL()"
SELECT = "document.querySelector('.interp-attention-view select')"


@pytest.mark.parametrize("width", [1400, 800])
def test_report_fits_logs_nothing_and_loads_nothing(browser, report_url, width):
    page = browser()
    page.open(report_url, width)
    assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("window.innerWidth")
    # The token row wraps: its last token is inside the window.
    assert page.evaluate("document.querySelector('.iav-tokens span:last-child').getBoundingClientRect().right") <= width
    assert page.errors() == []
    assert [url for url in page.requests() if url != report_url and not url.startswith("data:")] == []
    assert page.evaluate("getComputedStyle(document.querySelector('.iav-static')).display") == "none"  # scripts ran
    if os.environ.get("INTERP_SCREENSHOTS"):  # a folder: keep what the browser showed, to look at
        page.screenshot(Path(os.environ["INTERP_SCREENSHOTS"]) / f"report-{width}.png")


def test_head_selector_and_overview_change_the_picture(browser, report_url):
    page = browser()
    page.open(report_url, 1400)
    names = page.evaluate(f"Array.from({SELECT}.options).map(function (o) {{ return o.text; }})")
    assert len(names) == 8  # the bundled model's 2 x 4 heads: every head is embedded
    opened = page.evaluate(f"{SELECT}.selectedIndex")
    assert names[opened].startswith("L0H2 previous_token")  # the strongest head (0.97), not L0H0
    assert page.evaluate("document.querySelectorAll('.iav-thumb').length") == 8
    first = page.evaluate(GRID)

    other = (opened + 1) % len(names)
    page.evaluate(f"var s = {SELECT}; s.selectedIndex = {other}; s.dispatchEvent(new Event('change')); 0")
    by_selector = page.evaluate(GRID)
    assert by_selector != first

    thumbs = "document.querySelectorAll('.iav-thumb')"
    page.evaluate(f"{thumbs}[{opened}].dispatchEvent(new MouseEvent('mouseenter')); 0")  # hover previews...
    assert page.evaluate(GRID) == first
    page.evaluate(f"{thumbs}[{opened}].dispatchEvent(new MouseEvent('mouseleave')); 0")  # ...and leaving restores
    assert page.evaluate(GRID) == by_selector
    page.evaluate(f"{thumbs}[{opened}].dispatchEvent(new MouseEvent('click')); 0")  # a click selects
    assert page.evaluate(f"{SELECT}.selectedIndex") == opened and page.evaluate(GRID) == first

    info = "document.querySelector('.iav-info').textContent"
    idle = page.evaluate(info)
    page.evaluate("var c = document.querySelector('.iav-gridbox canvas'), r = c.getBoundingClientRect();"
                  "c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.right - 6, clientY: r.bottom - 6})); 0")
    assert page.evaluate(info).startswith("query ")
    page.evaluate("document.querySelector('.iav-gridbox canvas').dispatchEvent(new MouseEvent('mouseleave')); 0")
    assert page.evaluate(info) == idle  # the info line clears when the mouse leaves
    assert page.errors() == []


def test_static_fallback_without_javascript(browser, report_url):
    page = browser()
    page.open(report_url, 800, scripts=False)
    image = "document.querySelector('.iav-static img')"
    assert page.evaluate(f"{image}.complete && {image}.naturalWidth") > 0
    assert page.evaluate(f"{image}.getBoundingClientRect().height") > 100  # shown, not hidden
    assert page.evaluate("getComputedStyle(document.querySelector('.iav-live')).display") == "none"
    assert "JavaScript is off" in page.evaluate("document.querySelector('noscript').textContent")
    assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("window.innerWidth")
    if os.environ.get("INTERP_SCREENSHOTS"):
        page.screenshot(Path(os.environ["INTERP_SCREENSHOTS"]) / "report-no-javascript.png")
