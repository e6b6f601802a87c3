"""The CDP page loader: what it records from real pages in headless Chromium, and that it leaves no process
and no temp dir behind, also when the load times out or Chromium fails to start."""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

try:  # tests/ may become a package later
    from .browser import PageLoad, chromium_or_skip, is_alive, load_page, nonblank_fraction, processes_under
except ImportError:
    from browser import PageLoad, chromium_or_skip, is_alive, load_page, nonblank_fraction, processes_under

FAILING = """<!doctype html><html><body>
<img src="https://example.invalid/a.png">
<script>
console.error("boom");
console.warn("careful");
fetch("http://127.0.0.1:9/x").catch(() => {});
throw new Error("kaboom");
</script></body></html>"""
CLEAN = """<!doctype html><html><body style="margin:0;background:#fff">
<div style="width:200px;height:100px;background:#c33"></div><div></div><div></div>
<script>console.log("ready", 3)</script></body></html>"""
WHITE_TALL = '<!doctype html><html><body style="margin:0"><div style="height:3000px"></div></body></html>'
HANG = "<!doctype html><html><body><script>while (true) {}</script></body></html>"


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


def page(tmp_path: Path, name: str, html: str) -> Path:
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    return path


def size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_errors_exceptions_and_network_are_recorded(chromium: str, tmp_path: Path) -> None:
    path = page(tmp_path, "failing.html", FAILING)
    load = load_page(path, settle_s=0.5)
    assert ("error", "boom") in load.console and ("warning", "careful") in load.console
    assert "boom" in load.errors and "careful" not in load.errors
    assert len(load.exceptions) == 1 and load.exceptions[0].startswith("Error: kaboom\n    at file://")
    assert load.exceptions[0] in load.errors
    assert load.requests[0] == path.as_uri()  # the failed requests are recorded all the same
    assert sorted(load.network) == ["http://127.0.0.1:9/x", "https://example.invalid/a.png"]


def test_clean_page_and_screenshot(chromium: str, tmp_path: Path) -> None:
    clean = page(tmp_path, "clean.html", CLEAN)
    load = load_page(clean, width=800, height=600, settle_s=0.2)
    assert load.console == [("log", "ready 3")]
    assert load.errors == [] and load.network == [] and load.requests == [clean.as_uri()]
    assert size(load.screenshot) == (800, 600)
    # Only the red 200x100 div differs from the white background.
    assert nonblank_fraction(load.screenshot) == pytest.approx(200 * 100 / (800 * 600), rel=0.01)
    assert load.dom.startswith("<html><head></head><body") and load.dom.count("<div") == 3

    white = load_page(page(tmp_path, "white.html", WHITE_TALL), width=800, height=600, settle_s=0.2)
    assert size(white.screenshot) == (800, 3000)  # the full page, beyond the 600 px viewport
    assert nonblank_fraction(white.screenshot) == 0


def test_nonblank_fraction_counts_non_background_pixels() -> None:
    image = Image.new("RGB", (10, 10), "white")
    image.paste((0, 0, 255), (0, 0, 10, 3))  # 30 blue pixels
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert nonblank_fraction(png.getvalue()) == pytest.approx(0.3)


def test_evaluate_returns_the_value(chromium: str, tmp_path: Path) -> None:
    path = page(tmp_path, "clean.html", CLEAN)
    load = load_page(path, settle_s=0.1, evaluate="[document.querySelectorAll('div').length, {a: 'b'}]")
    assert load.value == [3, {"a": "b"}]
    with pytest.raises(RuntimeError, match="threw: ReferenceError: nope is not defined"):
        load_page(path, settle_s=0.1, evaluate="nope.length")


def watch_processes(base: Path, run: Callable[[], object]) -> tuple[set[int], object]:
    """Run `run` while recording every live process whose command line names a path under `base`."""
    seen: set[int] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.update(processes_under(base))
            done.wait(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        result: object = run()
    except Exception as e:  # handed back to the caller, who asserts on it
        result = e
    finally:
        done.set()
        watcher.join()
    return seen, result


@pytest.fixture
def temp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory that `tempfile` (so `load_page`'s profile dir) uses for this test."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


def test_no_process_or_temp_dir_survives_a_load(chromium: str, tmp_path: Path, temp_base: Path) -> None:
    path = page(tmp_path, "clean.html", CLEAN)
    seen, load = watch_processes(temp_base, lambda: load_page(path, settle_s=0.5))
    assert isinstance(load, PageLoad)
    assert len(seen) >= 3, "expected chromium's browser, zygote and renderer processes"
    assert processes_under(temp_base) == [] and not any(is_alive(pid) for pid in seen)
    assert list(temp_base.iterdir()) == []


def test_timeout_kills_chromium(chromium: str, tmp_path: Path, temp_base: Path) -> None:
    path = page(tmp_path, "hang.html", HANG)
    seen, error = watch_processes(temp_base, lambda: load_page(path, timeout_s=4))
    assert isinstance(error, TimeoutError) and f"loading {path} in chromium took over 4s" in str(error)
    assert seen and not any(is_alive(pid) for pid in seen)
    assert list(temp_base.iterdir()) == []


def fake_browser(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-chromium"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(0o755)
    return str(script)


def test_start_failure_shows_chromium_stderr(tmp_path: Path, temp_base: Path) -> None:
    browser = fake_browser(tmp_path, 'echo "Missing X server" >&2; exit 3')
    with pytest.raises(RuntimeError, match=r"exited with code 3 (.|\n)*Missing X server"):
        load_page(page(tmp_path, "clean.html", CLEAN), browser=browser)
    assert list(temp_base.iterdir()) == []


def test_start_timeout_kills_the_browser_tree(tmp_path: Path, temp_base: Path) -> None:
    pids = tmp_path / "pids"
    browser = fake_browser(tmp_path, f'echo "still starting" >&2; sleep 60 & echo $$ $! > {pids}; wait')
    # 4 s: time for the fake browser to write its pids even on a loaded CI machine
    with pytest.raises(TimeoutError, match=r"took over 4s, while starting chromium(.|\n)*still starting"):
        load_page(page(tmp_path, "clean.html", CLEAN), timeout_s=4, browser=browser)
    shell, sleeper = map(int, pids.read_text().split())
    assert not is_alive(shell) and not is_alive(sleeper)  # the sleep is a grandchild: killed with the group
    assert list(temp_base.iterdir()) == []


def test_missing_chromium_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make browser"):
        chromium_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        chromium_or_skip()
