"""Headless Chromium driven over the DevTools protocol (websocket-client): load a page from file:// and report
its console errors, every request it made, its images as decoded, and an expression evaluated in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-component-update",
    "--remote-allow-origins=*",
)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@dataclass
class Page:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: object = None


def load(html: Path, expression: str, timeout: float = 180.0) -> Page:
    """Open ``html`` in a fresh headless Chromium, wait for its load event, evaluate ``expression`` (its
    JSON-able value comes back), and collect console errors, exceptions and requested URLs."""
    import websocket

    profile = tempfile.mkdtemp(prefix="fastall-chromium-")
    log = open(Path(profile).with_suffix(".log"), "w+b")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [chromium(), *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        try:
            url = _page_socket(Path(profile), proc, timeout)
        except RuntimeError as err:
            log.seek(0)
            raise RuntimeError(
                f"{err}; chromium said: {log.read()[-2000:].decode(errors='replace')}"
            ) from None
        ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        try:
            return _drive(ws, html, expression, timeout)
        finally:
            ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def _page_socket(profile: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode}")
        if port_file.is_file() and port_file.read_text().strip():
            port = port_file.read_text().split()[0]
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = json.load(r)
            except OSError:
                time.sleep(0.2)
                continue
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.2)
    raise RuntimeError("chromium did not open its DevTools port in time")


def _drive(ws, html: Path, expression: str, timeout: float) -> Page:
    page = Page()
    ids = iter(range(1, 10_000))
    replies: dict[int, dict] = {}
    loaded = False

    def handle(msg: dict) -> None:
        nonlocal loaded
        method, params = msg.get("method"), msg.get("params", {})
        if "id" in msg:
            replies[msg["id"]] = msg
        elif method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            page.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            page.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            page.errors.append(params["entry"].get("text", ""))
        elif method == "Page.loadEventFired":
            loaded = True

    def call(method: str, **params) -> dict:
        n = next(ids)
        ws.send(json.dumps({"id": n, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while n not in replies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no reply to {method}")
            handle(json.loads(ws.recv()))
        reply = replies.pop(n)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    for domain in ("Page", "Runtime", "Log", "Network"):
        call(f"{domain}.enable")
    call("Page.navigate", url=html.absolute().as_uri())
    deadline = time.monotonic() + timeout
    while not loaded:
        if time.monotonic() > deadline:
            raise RuntimeError("the page did not finish loading")
        handle(json.loads(ws.recv()))
    result = call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in result:
        raise RuntimeError(f"expression failed: {result['exceptionDetails']}")
    page.value = result["result"].get("value")
    return page


def screenshot(html: Path, out: Path, width: int = 1200, height: int = 2600) -> None:
    """A PNG of the top ``height`` pixels of the page."""
    profile = tempfile.mkdtemp(prefix="fastall-chromium-")
    try:
        subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                f"--screenshot={out}",
                html.absolute().as_uri(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            env={**os.environ},
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
