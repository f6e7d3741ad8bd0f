"""Headless Chromium (Debian's package) driven over the Chrome DevTools Protocol."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["BrowserError", "Chromium", "chromium_executable"]


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or a page did not get where a test waited for."""


def chromium_executable() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError(
        "no chromium on PATH: install Debian's package (apt-get install chromium); "
        "`make test` does that when it is missing"
    )


class Chromium:
    """One headless Chromium with one page; console errors and exceptions are collected.

    Nothing is downloaded: it runs the system's chromium with a throw-away profile.
    """

    def __init__(
        self,
        width: int = 1400,
        height: int = 1000,
        start_timeout: float = 30.0,
        niceness: int = 0,
    ) -> None:
        self.width = width
        #: CPU priority of the browser's processes (``nice``): a benchmark runs it at 19 so it
        #: yields the cores to the server it looks at, as a browser on another machine would.
        self.niceness = niceness
        self.height = height
        self.start_timeout = start_timeout
        #: Console errors, uncaught exceptions and failed loads the page reported.
        self.errors: list[str] = []
        self._profile = tempfile.TemporaryDirectory(prefix="nearline-chromium-")
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0

    async def __aenter__(self) -> Chromium:
        profile = Path(self._profile.name)
        self._process = subprocess.Popen(
            [
                chromium_executable(),
                "--headless=new",
                "--no-sandbox",  # tests run as root in CI, where the sandbox refuses to start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
                f"--window-size={self.width},{self.height}",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.nice(self.niceness)) if self.niceness else None,
        )
        port = await self._devtools_port(profile / "DevToolsActivePort")
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t["type"] == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                await asyncio.to_thread(self._process.wait)
        self._profile.cleanup()

    async def _devtools_port(self, path: Path) -> int:
        """Chromium writes the port it chose to its profile once it listens."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited at start (code {self._process.returncode})")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(path.read_text().splitlines()[0])
            await asyncio.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port in {self.start_timeout} s")

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            body = json.loads(message.data)
            if "id" in body:
                future = self._pending.pop(body["id"], None)
                if future is not None and not future.done():
                    future.set_result(body)
            else:
                self._on_event(body["method"], body.get("params", {}))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {description}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._socket is not None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self._socket.send_json({"id": self._next_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer["result"]  # type: ignore[no-any-return]

    async def goto(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded."""
        await self.send("Page.navigate", url=url)
        await self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            what=f"{url} to load",
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0, what: str = "") -> Any:
        """Evaluate ``expression`` until it is truthy; its value, or :class:`BrowserError`."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise BrowserError(
            f"timed out after {timeout} s waiting for {what or expression} (last: {value!r}); "
            f"page errors: {self.errors}"
        )

    async def type_text(self, text: str) -> None:
        """Type into the focused element, as a keyboard would."""
        await self.send("Input.insertText", text=text)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by this browser's processes."""
        profile = f"--user-data-dir={self._profile.name}".encode()
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if profile not in (proc / "cmdline").read_bytes():
                    continue
                fields = (proc / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # exited meanwhile
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    async def screenshot(self, path: Path, element: str | None = None) -> Path:
        """The whole page as a PNG at ``path``; only the box of the first element that the
        CSS selector ``element`` matches, if given."""
        clip: dict[str, Any] = {}
        if element is not None:
            box = await self.evaluate(
                f"(({{x, y, width, height}}) => ({{x, y, width, height}}))"
                f"(document.querySelector({json.dumps(element)}).getBoundingClientRect())"
            )
            scroll = await self.evaluate("[window.scrollX, window.scrollY]")
            box["x"] += scroll[0]
            box["y"] += scroll[1]
            clip = {"clip": {**box, "scale": 1}}
        shot = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
