"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for tests and scripts.

One browser process per ``Browser`` (fresh ``--user-data-dir``, no network chatter of its own),
one websocket to it (aiohttp's client), pages attached in flat mode so that every command and
event goes over that one socket tagged with its page's ``sessionId``.

    async with Browser() as browser:
        page = await browser.new_page(width=390, height=844)
        await page.goto(url)
        title = await page.evaluate("document.title")
        await page.screenshot(path)

``evaluate`` awaits promises, so a test can poll a condition inside the page
(``page.wait_for("document.querySelector('video').currentTime > 0.5")``) instead of sleeping.
The browser is asked to close (then TERM, then KILL), whatever is left of its process group is
killed, and its profile directory removed, however the block ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-port=0")


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, executable: str = CHROMIUM, start_timeout: float = 60) -> None:
        self.executable = executable
        self.start_timeout = start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.profile: Path | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task | None = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.listeners: list[tuple[str | None, str, asyncio.Future]] = []

    async def __aenter__(self) -> "Browser":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        if shutil.which(self.executable) is None:
            raise BrowserError(f"{self.executable} is not installed (./manage.sh install puts it there)")
        self.profile = Path(tempfile.mkdtemp(prefix="storaged-chromium-"))
        self.proc = await asyncio.create_subprocess_exec(
            self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)  # its own group: close() ends all of it
        # Chromium writes its port and browser endpoint here once it listens.
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.returncode is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode} before listening")
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if len(lines) >= 2 and lines[1]:
                break
            if time.monotonic() > deadline:
                raise BrowserError("chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_msg_size=0)
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await asyncio.wait_for(self.send("Browser.close"), 5)
            except (Exception, asyncio.TimeoutError):
                pass
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.terminate()
                try:
                    await asyncio.wait_for(self.proc.wait(), 5)
                except asyncio.TimeoutError:
                    self.proc.kill()
                    await self.proc.wait()
        if self.proc is not None:
            # Renderers, zygotes and the GPU process are in the browser's process group: none outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.profile is not None:
            await asyncio.to_thread(shutil.rmtree, self.profile, True)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self.pending.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        if "error" in data:
                            fut.set_exception(BrowserError(f"{data['error'].get('message')}: {data['error']}"))
                        else:
                            fut.set_result(data.get("result", {}))
                    continue
                for entry in list(self.listeners):
                    session, method, fut = entry
                    if method == data.get("method") and session in (None, data.get("sessionId")):
                        self.listeners.remove(entry)
                        if not fut.done():
                            fut.set_result(data.get("params", {}))
        finally:
            for fut in list(self.pending.values()) + [f for _, _, f in self.listeners]:
                if not fut.done():
                    fut.set_exception(BrowserError("the DevTools connection closed"))

    async def send(self, method: str, params: dict | None = None, session: str | None = None,
                   timeout: float = 60) -> dict:
        msg_id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(msg_id, None)

    def expect(self, method: str, session: str | None = None) -> asyncio.Future:
        """A future for the next event ``method`` (register before the command that causes it)."""
        fut = asyncio.get_running_loop().create_future()
        self.listeners.append((session, method, fut))
        return fut

    async def new_page(self, width: int = 1280, height: int = 800, mobile: bool = False) -> "Page":
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        return page


class Page:
    def __init__(self, browser: Browser, target_id: str, session: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session = session

    async def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return await self.browser.send(method, params, session=self.session, timeout=timeout)

    async def goto(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event; BrowserError when the navigation itself fails."""
        loaded = self.browser.expect("Page.loadEventFired", self.session)
        result = await self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            loaded.cancel()
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.1) -> Any:
        """Poll a JavaScript expression until it is truthy; BrowserError with its last value after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout}s waiting for {expression!r} (last: {value!r})")
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path | str | None = None, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole scrollable page when ``full_page``); written to ``path`` if given."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = await self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        png = base64.b64decode((await self.send("Page.captureScreenshot", params))["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", {"targetId": self.target_id})
