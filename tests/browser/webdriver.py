"""A small W3C WebDriver client over HTTP (the protocol chromium-driver speaks), for the browser tier.

Only what the tier needs: a headless Chromium session, navigate, run a script, wait until the
rendered page says something, take a screenshot. Plain JSON over urllib: no driver package to pin.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

# Headless and quiet: no sandbox (root in CI containers), no GPU, nothing fetched from the internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--lang=en-US"]


class WebDriverError(RuntimeError):
    pass


def _call(method: str, url: str, body: dict | None = None, timeout: float = 60.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"{}").get("value")
    except urllib.error.HTTPError as e:
        try:
            value = json.loads(e.read()).get("value", {})
        except (ValueError, AttributeError):
            value = {}
        raise WebDriverError(f"{method} {url}: HTTP {e.code} {value.get('error', '')}: "
                             f"{str(value.get('message', ''))[:500]}") from None


class Browser:
    """One WebDriver session on the driver at `driver_url` (``http://127.0.0.1:PORT``)."""

    def __init__(self, driver_url: str, binary: str, width: int = 1500, height: int = 1100):
        caps = {"browserName": "chrome",
                "goog:chromeOptions": {"binary": binary, "args": CHROMIUM_ARGS + [f"--window-size={width},{height}"]}}
        value = _call("POST", f"{driver_url}/session", {"capabilities": {"alwaysMatch": caps}}, timeout=120)
        self.url = f"{driver_url}/session/{value['sessionId']}"

    def close(self) -> None:
        _call("DELETE", self.url)

    def get(self, url: str) -> None:
        _call("POST", f"{self.url}/url", {"url": url}, timeout=120)

    def script(self, source: str, *args):
        """Run `source` (a function body; `arguments[i]` are args) in the page; returns its value."""
        return _call("POST", f"{self.url}/execute/sync", {"script": source, "args": list(args)})

    def wheel(self, x: int, y: int, dy: int) -> None:
        """Turn the mouse wheel by `dy` pixels at viewport point (x, y), as a person scrolls."""
        scroll = {"type": "scroll", "x": int(x), "y": int(y), "deltaX": 0, "deltaY": int(dy), "duration": 100,
                  "origin": "viewport"}
        _call("POST", f"{self.url}/actions", {"actions": [{"type": "wheel", "id": "wheel", "actions": [scroll]}]})

    def text(self) -> str:
        return self.script("return document.body ? document.body.innerText : '';")

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(_call("GET", f"{self.url}/screenshot")))
        return path

    def wait_for_text(self, *needles: str, timeout: float = 60.0) -> str:
        """Poll the rendered text until it holds every needle; returns it. On timeout the error lists
        the needles still missing and the start of what the page did show."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise WebDriverError(f"after {timeout:.0f}s the page lacks {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.5)
