"""Headless Debian Chromium driven by Selenium, never a downloaded browser.

``chromium_driver()`` starts ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``
(Debian's ``chromium`` and ``chromium-driver``). Selenium Manager is switched off
(``SE_OFFLINE``) and both paths are given, so nothing is fetched from the internet.
``browser_missing()`` says why the browser tests cannot run here, or "".
"""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)


def _first(paths: tuple[str, ...]) -> str:
    return next((p for p in paths if os.access(p, os.X_OK)), "")


def browser_missing() -> str:
    """Why a browser test would skip ("" when chromium, chromedriver and selenium are all there)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not _first(CHROMIUM_CANDIDATES):
        return "Debian's chromium is not installed (apt-get install chromium)"
    if not _first(DRIVER_CANDIDATES) and not shutil.which("chromedriver"):
        return "Debian's chromium-driver is not installed (apt-get install chromium-driver)"
    return ""


def chromium_driver(width_px: int = 1000, height_px: int = 900) -> Any:
    """A headless Chromium WebDriver on Debian's binaries."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _first(CHROMIUM_CANDIDATES)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width_px},{height_px}", "--autoplay-policy=no-user-gesture-required",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    service = Service(executable_path=_first(DRIVER_CANDIDATES) or shutil.which("chromedriver"))
    return webdriver.Chrome(service=service, options=options)
