"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium,
and a real ``heygem serve`` for it to talk to.

Chromium starts with a fresh profile and everything that would phone home switched off
(the test machine has no network but loopback). Screenshots of every page go to
``web-artifacts/`` (or ``$HEYGEM_WEB_ARTIFACTS``); the browser console is read after each
test, and any error there fails it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HEYGEM_WEB_ARTIFACTS") or ROOT / "web-artifacts")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
)


def browser_binaries() -> tuple[str, str]:
    """Chromium and its driver, or a skip naming the Debian packages to install."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = " and ".join(
            name for name, found in (("chromium", chromium), ("chromedriver", driver)) if not found
        )
        pytest.skip(
            f"{missing} not installed: apt-get install chromium chromium-driver "
            "(the web page tests run in a real headless Chromium)"
        )
    return chromium, driver


@dataclass
class Browser:
    """One Chromium session on one server, with the few things the tests do."""

    driver: Any  # selenium.webdriver.Chrome
    base: str
    downloads: Path
    expected_console: list[str] = field(default_factory=list)

    def open(self, fragment: str = "") -> None:
        self.driver.get(f"{self.base}/{fragment}")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        return wait_for(condition, timeout=timeout, interval=0.1, what=what or "the page")

    def text(self, selector: str) -> str:
        """The text of the first element matching ``selector`` ('' when there is none)."""
        found = self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
            selector,
        )
        return str(found)

    def texts(self, selector: str) -> list[str]:
        found = self.js(
            "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)",
            selector,
        )
        return [str(t) for t in found]

    def count(self, selector: str) -> int:
        return int(self.js("return document.querySelectorAll(arguments[0]).length", selector))

    def wait_text(self, selector: str, timeout: float = 30.0) -> str:
        return str(self.wait(lambda: self.text(selector).strip(), timeout, f"text in {selector}"))

    def upload(self, selector: str, path: Path) -> None:
        self.driver.find_element("css selector", selector).send_keys(str(path))

    def click(self, selector: str) -> None:
        self.driver.find_element("css selector", selector).click()

    def screenshot(self, name: str) -> Path:
        """The whole page, beyond the window's height (Chromium's own capture)."""
        import base64

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def console_errors(self) -> list[str]:
        """Console errors (and failed loads) since the last call, less the expected ones."""
        entries = self.driver.get_log("browser")
        return [
            str(e["message"])
            for e in entries
            if e["level"] == "SEVERE"
            and not any(expected in e["message"] for expected in self.expected_console)
        ]


@contextmanager
def chromium(base: str) -> Iterator[Browser]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_binaries()
    profile = tempfile.mkdtemp(prefix="heygem-chromium-")
    downloads = Path(tempfile.mkdtemp(prefix="heygem-downloads-"))
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield Browser(driver, base, downloads)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)
