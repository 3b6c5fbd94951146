"""A real browser (headless Chromium) uploads through the page and sees the thumbnails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth_support import hs_token
from tests.conftest import Services
from tests.support import ARTIFACTS, jpeg_bytes

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ["chromium", "chromium-driver"]
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,1000",
]  # fmt: skip


def ensure_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver if missing; the reason if impossible."""
    if os.environ.get("BROWSER_TESTS") == "off":
        return "browser tests turned off (BROWSER_TESTS=off)"
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return None
    if shutil.which("apt-get") is None:
        return "chromium is not installed and apt-get is unavailable"
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif (
        shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0
    ):
        sudo = ["sudo", "-n"]
    else:
        return "chromium is not installed and we are neither root nor allowed sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # A fresh machine has no package lists (or stale ones naming files the mirror dropped).
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        result = subprocess.run(
            [*sudo, *command], capture_output=True, text=True, env=env, check=False, timeout=900
        )
        if result.returncode != 0:
            return f"{' '.join(command[:2])} failed: {result.stderr[-500:]}"
    return None


@pytest.fixture(scope="session")
def chrome_driver() -> Iterator[object]:
    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def upload_and_see_thumbnails(driver: object, base_url: str, picture: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver)
    driver.find_element(By.ID, "file").send_keys(str(picture))
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".card[data-status='DONE'] img")
    )
    images = driver.find_elements(By.CSS_SELECTOR, ".card[data-status='DONE'] img")
    assert sorted(img.get_attribute("data-label") or "" for img in images) == [
        "100x100", "1200x1200", "300x300",
    ]  # fmt: skip
    WebDriverWait(driver, 20).until(
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in images
        )
    )
    widths = {
        img.get_attribute("data-label"): driver.execute_script(
            "return arguments[0].naturalWidth", img
        )
        for img in images
    }
    assert widths == {"100x100": 100, "300x300": 300, "1200x1200": 1200}


def test_upload_page_shows_three_thumbnails(
    chrome_driver: object, services: Services, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome_driver
    assert isinstance(driver, WebDriver)
    picture = tmp_path / "holiday.jpg"
    picture.write_bytes(jpeg_bytes(2400, 1600, (40, 120, 200)))
    driver.get(services.base_url + "/")
    assert not driver.find_element(By.ID, "auth").is_displayed()  # none mode: no token asked
    upload_and_see_thumbnails(driver, services.base_url, picture)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser-upload.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    driver.get(services.base_url + "/dashboard")
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr"))
    time.sleep(0.5)
    driver.save_screenshot(str(ARTIFACTS / "browser-dashboard.png"))
    assert "holiday.jpg" in driver.find_element(By.ID, "rows").text


def test_jwt_mode_pages_ask_for_a_token_and_send_it(
    chrome_driver: object, jwt_services: Services, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome_driver
    assert isinstance(driver, WebDriver)
    picture = tmp_path / "private.jpg"
    picture.write_bytes(jpeg_bytes(1600, 1200, (200, 60, 90)))
    driver.get(jwt_services.base_url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    assert driver.find_element(By.ID, "auth").is_displayed()
    driver.find_element(By.ID, "token").send_keys(hs_token("dora"))
    driver.find_element(By.CSS_SELECTOR, "#auth button[type=submit]").click()
    upload_and_see_thumbnails(driver, jwt_services.base_url, picture)
    driver.save_screenshot(str(ARTIFACTS / "browser-upload-jwt.png"))
    driver.get(jwt_services.base_url + "/dashboard")  # same tab: the token is still there
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr"))
    assert "private.jpg" in driver.find_element(By.ID, "rows").text
    # Another subject sees none of dora's images.
    driver.find_element(By.ID, "token").send_keys(hs_token("eve"))
    driver.find_element(By.CSS_SELECTOR, "#auth button[type=submit]").click()
    WebDriverWait(driver, 20).until(
        lambda d: "private.jpg" not in d.find_element(By.ID, "rows").text
    )
    driver.execute_script("sessionStorage.clear()")
