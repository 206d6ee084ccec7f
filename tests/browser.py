"""A real headless Chromium for the playground tests: Debian's `chromium` driven through its `chromedriver` with
Selenium (no browser download). Started with the flags that keep it from reaching for Google's services on a closed
network, a fresh profile, and the browser's console and network logs kept for the tests to read."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
"""Debian's packages put them in /usr/bin; `.ci/prerequisites` installs them when they are not on PATH."""
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
T = TypeVar("T")


def missing_browser() -> str | None:
    """Why no browser test can run here, or None: Debian's packages `chromium` and `chromium-driver`."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        return f"no Chromium here ({', '.join(missing)} missing): apt-get install chromium chromium-driver"
    return None


@dataclass
class Request:
    """One request the page made, from Chromium's network log."""

    url: str
    method: str
    headers: dict[str, str]


class Browser:
    """One Chromium, its console and network logs collected as they come."""

    def __init__(self, downloads: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self.downloads = downloads
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_script_timeout(30)
        downloading = {"behavior": "allow", "downloadPath": str(downloads)}
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", downloading)
        self.console: list[dict[str, Any]] = []
        self._by_id: dict[str, Request] = {}

    def quit(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def collect(self) -> None:
        """Move what Chromium logged since the last call into `console` and `requests`."""
        self.console.extend(self.driver.get_log("browser"))
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message["params"]
            if message["method"] == "Network.requestWillBeSent":
                request = params["request"]
                seen = self._by_id.setdefault(params["requestId"], Request("", "", {}))
                seen.url, seen.method = request["url"], request["method"]
                seen.headers.update({k.lower(): v for k, v in request.get("headers", {}).items()})
            elif message["method"] == "Network.requestWillBeSentExtraInfo":
                # the headers as sent on the wire come in this second event, which may arrive first
                seen = self._by_id.setdefault(params["requestId"], Request("", "", {}))
                seen.headers.update({k.lower(): v for k, v in params.get("headers", {}).items()})

    @property
    def requests(self) -> list[Request]:
        """Every request since the page was opened (call `collect` first)."""
        return [request for request in self._by_id.values() if request.url]

    def open(self, url: str) -> None:
        """Load the page and wait until its modules have wired everything."""
        self.collect()
        self.console.clear()
        self._by_id.clear()
        self.driver.get(url)
        self.wait(lambda: self.js("return document.body.dataset.ready === 'true'"), "the page to start")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def wait(self, condition: Callable[[], T], what: str, timeout: float = 60) -> T:
        """Poll `condition` until it returns something truthy; fail naming `what` and the page's errors."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                self.collect()
                raise AssertionError(f"timed out waiting for {what}; console: {self.console}")
            time.sleep(0.1)

    def text(self, selector: str) -> str:
        return str(self.js("return document.querySelector(arguments[0]).textContent", selector)).strip()

    def visible(self, selector: str) -> bool:
        script = "const e = document.querySelector(arguments[0]); return !!e && e.checkVisibility()"
        return bool(self.js(script, selector))

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def full_page_screenshot(self, path: Path) -> Path:
        """The whole page, beyond the window (Chromium's own capture)."""
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def scroll_to(self, selector: str | None) -> None:
        """Scroll the element to the top of the window (None: the page's top)."""
        if selector is None:
            self.js("window.scrollTo(0, 0)")
        else:
            self.js("document.querySelector(arguments[0]).scrollIntoView({block: 'start'})", selector)

    def emulate_phone(self, width: int = 390, height: int = 844) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True},
        )

    def stop_emulation(self) -> None:
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def severe_console_messages(self) -> list[str]:
        self.collect()
        return [entry["message"] for entry in self.console if entry["level"] == "SEVERE"]
