"""Load a local HTML file in a real headless Chromium over the Chrome DevTools Protocol (CDP) and record what
the page did: console messages, uncaught exceptions, every request, the DOM after load and a full-page PNG.

Each `load_page` call starts its own Chromium with a throw-away profile in a temp dir and always kills every
process of it (its process group, plus the crash handlers that Chromium starts in sessions of their own) and
removes the temp dir, also on errors and timeouts. Host names resolve to nothing (`--host-resolver-rules`), so
a load never touches the real network; requests are still recorded, they just fail. Linux only (`/proc`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from PIL import Image

LOCAL_SCHEMES = {"file", "data", "blob", "about"}
ERROR_LEVELS = {"error", "assert"}  # console.assert failures are errors too; warnings are not
OFFLINE_RULES = "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"


@dataclass
class PageLoad:
    """What one page load did, recorded over CDP."""

    console: list[tuple[str, str]]
    """(level, text) of every console call (Runtime.consoleAPICalled) and browser log entry (Log.entryAdded)."""
    exceptions: list[str]
    """Description (message and stack) of every uncaught exception or unhandled rejection."""
    requests: list[str]
    """URL of every request the page made, its own file:// URL included, failed ones too."""
    screenshot: bytes
    """PNG of the full page (beyond the viewport)."""
    dom: str
    """`document.documentElement.outerHTML` after load."""
    value: Any = None
    """What the `evaluate` expression returned (by value), or None."""

    @property
    def errors(self) -> list[str]:
        """Console entries of level error (warnings excluded), then the uncaught exceptions."""
        return [text for level, text in self.console if level in ERROR_LEVELS] + self.exceptions

    @property
    def network(self) -> list[str]:
        """Requests that would leave the machine: all but file:, data:, blob: and about: URLs."""
        return [url for url in self.requests if urlsplit(url).scheme not in LOCAL_SCHEMES]


def chromium_or_skip() -> str:
    """Path to chromium; a missing browser skips the test locally and fails it in CI."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed and CI is set: the browser check must run in CI; "
                        "`make browser` installs it")  # fmt: skip
        pytest.skip("chromium not installed (`make browser` installs it); the browser check needs it")
    return chromium


def nonblank_fraction(png: bytes) -> float:
    """Fraction of pixels whose colour differs from the most common (background) colour."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    total = image.width * image.height
    background = max(count for count, _ in image.getcolors(maxcolors=total))
    return 1 - background / total


def load_page(
    path: Path,
    *,
    width: int = 1280,
    height: int = 900,
    settle_s: float = 1.0,
    timeout_s: float = 60,
    evaluate: str | None = None,
    browser: str | None = None,
) -> PageLoad:
    """Open `path` in a fresh headless Chromium and record the load.

    Args:
        path: The HTML file to open (as its file:// URL).
        width: Viewport width in CSS pixels.
        height: Viewport height in CSS pixels; the screenshot covers the whole page regardless.
        settle_s: Seconds to wait after the load event before reading the page.
        timeout_s: Limit for the whole load, start-up included.
        evaluate: A JS expression evaluated after settling; its result is `PageLoad.value`.
        browser: The Chromium binary; default `chromium` on PATH.

    Raises:
        FileNotFoundError: `path` or the browser does not exist.
        RuntimeError: Chromium exited or the page failed to load (with Chromium's stderr tail).
        TimeoutError: The load did not finish in `timeout_s` (says which stage it was in).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no page to load at {path}")
    browser = browser or shutil.which("chromium")
    if browser is None:
        raise FileNotFoundError("chromium is not on PATH; `make browser` installs it")
    tmp = Path(tempfile.mkdtemp(prefix="musicssl-chromium-"))
    proc: subprocess.Popen[bytes] | None = None
    stage = ["starting chromium"]
    try:
        proc = _start(browser, tmp, width, height)
        run = _drive(proc, tmp, path, width, height, settle_s, evaluate, stage)
        try:
            return asyncio.run(asyncio.wait_for(run, timeout_s))
        except asyncio.TimeoutError:  # builtin TimeoutError only from 3.11
            raise TimeoutError(f"loading {path} in chromium took over {timeout_s}s, while {stage[0]}; "
                               f"chromium stderr (tail):\n{_stderr_tail(tmp)}") from None  # fmt: skip
    finally:
        if proc is not None:
            _kill_all(proc, tmp)
        shutil.rmtree(tmp)


def _start(browser: str, tmp: Path, width: int, height: int) -> subprocess.Popen[bytes]:
    args = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
        f"--user-data-dir={tmp / 'profile'}", "--no-first-run", "--no-default-browser-check",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
        f"--host-resolver-rules={OFFLINE_RULES}", f"--window-size={width},{height}", "about:blank",
    ]  # fmt: skip
    # XDG_CONFIG_HOME moves the crash handler's database into tmp, so its command line names tmp too.
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config")}
    with open(tmp / "stderr.log", "wb") as stderr:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env,
                                start_new_session=True)  # fmt: skip


async def _drive(
    proc: subprocess.Popen[bytes],
    tmp: Path,
    path: Path,
    width: int,
    height: int,
    settle_s: float,
    evaluate: str | None,
    stage: list[str],
) -> PageLoad:
    port = await _devtools_port(proc, tmp)
    async with aiohttp.ClientSession() as http:
        stage[0] = "finding the page target"
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        pages = [t for t in targets if t["type"] == "page"]
        if not pages:
            raise RuntimeError(f"chromium shows no page target; it lists {[t['url'] for t in targets]}")
        url, timeout = pages[0]["webSocketDebuggerUrl"], aiohttp.ClientWSTimeout(ws_close=2)
        async with http.ws_connect(url, max_msg_size=0, timeout=timeout) as ws:  # screenshots are big
            cdp = _Cdp(ws)
            try:
                return await _record(cdp, path, width, height, settle_s, evaluate, stage)
            except ConnectionError as e:
                raise RuntimeError(f"{e}; chromium stderr (tail):\n{_stderr_tail(tmp)}") from e
            finally:
                await cdp.close()


async def _devtools_port(proc: subprocess.Popen[bytes], tmp: Path) -> int:
    active = tmp / "profile" / "DevToolsActivePort"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode} before opening its DevTools "
                               f"port; its stderr (tail):\n{_stderr_tail(tmp)}")  # fmt: skip
        lines = active.read_text().splitlines() if active.exists() else []
        if len(lines) >= 2 and lines[0].isdigit():
            return int(lines[0])
        await asyncio.sleep(0.05)


async def _record(
    cdp: _Cdp, path: Path, width: int, height: int, settle_s: float, evaluate: str | None, stage: list[str]
) -> PageLoad:
    stage[0] = "enabling CDP domains"
    for domain in ("Runtime", "Log", "Network", "Page"):
        await cdp.call(f"{domain}.enable")
    await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                   mobile=False)  # fmt: skip
    stage[0] = f"loading {path.as_uri()}"
    cdp.navigating = True
    navigated = await cdp.call("Page.navigate", url=path.as_uri())
    if navigated.get("errorText"):
        raise RuntimeError(f"chromium could not open {path.as_uri()}: {navigated['errorText']}")
    await cdp.wait_loaded()
    stage[0] = "settling after the load event"
    await asyncio.sleep(settle_s)
    value = None
    if evaluate is not None:
        stage[0] = f"evaluating {evaluate!r}"
        value = await cdp.evaluate(evaluate)
    stage[0] = "reading the DOM and the screenshot"
    dom = await cdp.evaluate("document.documentElement.outerHTML")
    size = (await cdp.call("Page.getLayoutMetrics"))["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": max(size["width"], 1), "height": max(size["height"], 1), "scale": 1}
    shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
    return PageLoad(cdp.console, cdp.exceptions, cdp.requests, base64.b64decode(shot["data"]), dom, value)


class _Cdp:
    """One DevTools websocket: numbered calls and their replies, and the events that `PageLoad` records."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[tuple[str, str]] = []
        self.exceptions: list[str] = []
        self.requests: list[str] = []
        self.navigating = False  # the about:blank start page loaded before Page.enable; only count ours
        self.loaded = asyncio.Event()
        self.closed: str | None = None
        self.reader = asyncio.ensure_future(self._read())

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        if self.closed:
            raise ConnectionError(self.closed)
        key = len(self.replies) + 1
        self.replies[key] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps({"id": key, "method": method, "params": params}))
        reply = await self.replies[key]
        if "error" in reply:
            raise RuntimeError(f"CDP {method} failed: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression!r} threw: {_describe(result['exceptionDetails'])}")
        return result["result"].get("value")

    async def wait_loaded(self) -> None:
        await self.loaded.wait()
        if self.closed:
            raise ConnectionError(self.closed)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                if not self.replies[data["id"]].done():  # done: cancelled by a timeout
                    self.replies[data["id"]].set_result(data)
            else:
                self._on_event(data["method"], data.get("params", {}))
        self.closed = "chromium closed the DevTools connection"
        for reply in self.replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError(self.closed))
        self.loaded.set()

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            self.console.append((params["type"], " ".join(_text(arg) for arg in params["args"])))
        elif method == "Log.entryAdded":
            self.console.append((params["entry"]["level"], params["entry"]["text"]))
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(_describe(params["exceptionDetails"]))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Page.loadEventFired" and self.navigating:
            self.loaded.set()


def _text(arg: dict[str, Any]) -> str:
    """A console argument (a CDP RemoteObject) as text."""
    if "value" in arg:
        return arg["value"] if isinstance(arg["value"], str) else json.dumps(arg["value"])
    return str(arg.get("unserializableValue") or arg.get("description") or arg["type"])


def _describe(details: dict[str, Any]) -> str:
    """An exception's description (message and stack), else CDP's summary text ("Uncaught ...")."""
    return str(details.get("exception", {}).get("description") or details["text"])


def _stderr_tail(tmp: Path, chars: int = 3000) -> str:
    log = tmp / "stderr.log"
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no stderr captured)"


def processes_under(directory: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names a path inside `directory` (Linux `/proc`)."""
    needle = os.fsencode(directory) + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and is_alive(int(entry.name)):
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or another user's
    return found


def is_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (this container's PID 1 does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # zombies are dead, just not yet reaped


def _kill_all(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """SIGKILL chromium's process group and its crash handlers (own sessions), then wait until all are gone."""
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while left := processes_under(tmp):
        if time.monotonic() > deadline:
            raise RuntimeError(f"chromium processes {left} survived SIGKILL for 10 s (profile {tmp})")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
