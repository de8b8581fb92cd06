"""Headless Chromium driven over the DevTools protocol on a pipe (no port, no websocket).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages from fd 3 and
writes its answers and events to fd 4, each a JSON object ended by a NUL byte. The
benchmarks and the viewer tests use Debian's ``chromium`` package (or ``REFED_CHROMIUM``);
nothing is downloaded.

    with Chromium() as browser:
        tab = browser.new_tab()
        tab.open(Path("report/index.html").resolve().as_uri())
        tab.wait_for("document.title !== ''")
        tab.evaluate("document.title")
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    """Chromium is missing, exited, or answered a command with an error."""


def find_chromium() -> str | None:
    """``REFED_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH, else None."""
    given = os.environ.get("REFED_CHROMIUM")
    if given:
        return given if Path(given).exists() or shutil.which(given) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_version(binary: str | None = None) -> str:
    binary = binary or find_chromium()
    if binary is None:
        return "-"
    res = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return res.stdout.strip() or "-"


class Chromium:
    """One headless Chromium with a fresh profile; ``close`` (or ``with``) ends it."""

    def __init__(self, binary: str | None = None, *, width: int = 1280, height: int = 900) -> None:
        found = binary or find_chromium()
        if found is None:
            raise BrowserError(
                "Chromium not found: apt-get install chromium, or set REFED_CHROMIUM"
            )
        self.profile = tempfile.mkdtemp(prefix="refed-chromium-")
        to_child, self._write_fd = os.pipe()
        self._read_fd, from_child = os.pipe()
        # fd 3 and 4 of the browser are our pipe ends; bash puts them in place (dash
        # takes only one-digit fd numbers).
        cmd = [
            shutil.which("bash") or "/bin/bash",
            "-c",
            f'exec "$@" 3<&{to_child} 4>&{from_child}',
            "chromium",
            found,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_child)
        os.close(from_child)
        self._next_id = 0
        self._lock = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False
        self._stderr: list[bytes] = []
        self._reader = threading.Thread(target=self._read, name="chromium-pipe", daemon=True)
        self._reader.start()
        threading.Thread(target=self._drain_stderr, name="chromium-stderr", daemon=True).start()
        self.version = self.send("Browser.getVersion")["product"]

    # --- the pipe -----------------------------------------------------------------
    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read_fd, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._lock:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._lock.notify_all()
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-50]

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Send one command and wait for its answer (its ``result``)."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise BrowserError(f"Chromium is gone ({exc}); {self.stderr_tail()}") from exc
        deadline = time.monotonic() + timeout
        with self._lock:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if self._closed:
                    raise BrowserError(f"Chromium closed the pipe; {self.stderr_tail()}")
                if left <= 0:
                    raise BrowserError(f"no answer to {method} within {timeout:g} s")
                self._lock.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def wait_event(
        self,
        method: str,
        *,
        session: str | None = None,
        since: int = 0,
        match: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 120,
    ) -> dict[str, Any]:
        """The first event ``method`` (of ``session``) at or after position ``since``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for event in self.events[since:]:
                    if event.get("method") != method:
                        continue
                    if session is not None and event.get("sessionId") != session:
                        continue
                    if match is None or match(event.get("params", {})):
                        return event
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"no {method} event within {timeout:g} s")
                self._lock.wait(left)

    def stderr_tail(self) -> str:
        return b"".join(self._stderr[-10:]).decode(errors="replace")

    # --- tabs and shutdown --------------------------------------------------------
    def new_tab(self, *, width: int = 1280, height: int = 900) -> Tab:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        return Tab(self, session, width=width, height=height)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrowserError):
                self.send("Browser.close", timeout=10)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._write_fd, self._read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tab:
    """One page, with the Page, Runtime and Network domains on: every request it makes
    and every uncaught exception are kept (``requests``, ``errors``)."""

    def __init__(self, browser: Chromium, session: str, *, width: int, height: int) -> None:
        self.browser = browser
        self.session = session
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def send(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, **kw)

    def _mine(self, method: str) -> list[dict[str, Any]]:
        with self.browser._lock:
            return [
                dict(e.get("params", {}))
                for e in self.browser.events
                if e.get("method") == method and e.get("sessionId") == self.session
            ]

    def open(self, url: str, *, timeout: float = 300) -> float:
        """Navigate and wait for the load event; returns the seconds it took."""
        since = len(self.browser.events)
        started = time.monotonic()
        reply = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if reply.get("errorText"):
            raise BrowserError(f"cannot open {url}: {reply['errorText']}")
        self.browser.wait_event(
            "Page.loadEventFired", session=self.session, since=since, timeout=timeout
        )
        return time.monotonic() - started

    def evaluate(self, expression: str, *, timeout: float = 120) -> Any:
        """The value of ``expression`` (awaited when it is a promise), as JSON."""
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]!r} threw: {text}")
        return reply.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float = 120, every: float = 0.05) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression, timeout=timeout)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} still falsy after {timeout:g} s")
            time.sleep(every)

    def requests(self) -> list[str]:
        """The URL of every request the page started (documents, images, fetches …)."""
        return [p["request"]["url"] for p in self._mine("Network.requestWillBeSent")]

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors of the page."""
        thrown = [
            str(p["exceptionDetails"].get("exception", {}).get("description") or p)
            for p in self._mine("Runtime.exceptionThrown")
        ]
        console = [
            " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            for p in self._mine("Runtime.consoleAPICalled")
            if p.get("type") == "error"
        ]
        return thrown + console

    def heap_mb(self) -> float:
        self.send("Performance.enable")
        metrics = self.send("Performance.getMetrics").get("metrics", [])
        used = {m["name"]: m["value"] for m in metrics}.get("JSHeapUsedSize", 0.0)
        return float(used) / 2**20

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
        data = self.send("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
