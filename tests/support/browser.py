"""Debian's chromium, headless, driven through its chromedriver (bin/services installs both).

Nothing is downloaded: the browser and the driver are the system's, Selenium Manager stays offline."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000"]


def chromium():
    """A fresh headless chromium (its own profile directory); the caller quits it."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a browser online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise AssertionError(f"{path} is missing: run bin/services (installs chromium and chromium-driver)")
    profile = tempfile.mkdtemp(prefix="console-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.profile_dir = profile
    return driver


def quit_browser(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
