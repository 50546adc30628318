"""The browser tier: chromium-driver (W3C WebDriver) and headless Chromium, started here, stopped by PID.

Debian's `chromium` and `chromium-driver` are installed by scripts/install-system-deps.sh (run
here when root); without them and without root the tier is skipped, saying what to install.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT
from tests.fixtures.services import _popen, _stop, _wait_http, free_port


def _tools() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A `tests.browser.webdriver.Browser`: one headless Chromium for the tier, 1500x1100."""
    import os

    from tests.browser.webdriver import Browser

    chromium, driver = _tools()
    if not (chromium and driver) and os.geteuid() == 0:
        subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "install-system-deps.sh")], check=False)
        chromium, driver = _tools()
    if not (chromium and driver):
        pytest.skip("the browser tier needs Debian's chromium and chromium-driver; "
                    "run scripts/install-system-deps.sh as root")
    work = tmp_path_factory.mktemp("chromedriver")
    port = free_port()
    log = work / "chromedriver.log"
    proc = _popen([driver, f"--port={port}", "--allowed-ips=127.0.0.1"], log, dict(os.environ))
    try:
        _wait_http(f"http://127.0.0.1:{port}/status", proc, log, 30, ok=lambda code: code == 200)
        session = Browser(f"http://127.0.0.1:{port}", chromium)
        try:
            yield session
        finally:
            session.close()
    finally:
        _stop(proc)
