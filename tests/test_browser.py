"""A real browser (headless Chromium) uploads through the page and sees the thumbnails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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


# Records, as the page builds it, each thumbnail slot (its placeholder colour, and whether its
# image had already loaded: it cannot have, if the placeholder came first) and each image load.
RECORD_TIMELINE = """
window.timeline = [];
new MutationObserver(() => {
  document.querySelectorAll(".slot:not([data-recorded])").forEach((slot) => {
    slot.dataset.recorded = "1";
    const img = slot.querySelector("img");
    window.timeline.push({kind: "slot", color: slot.dataset.color || null,
                          label: img.dataset.label, loaded: img.complete && img.naturalWidth > 0});
  });
}).observe(document.body, {subtree: true, childList: true});
document.addEventListener("load", (e) => {
  const img = e.target;
  if (img.tagName === "IMG") window.timeline.push({kind: "load", label: img.dataset.label});
}, true);
"""
PAINTED_PIXEL = """
const canvas = arguments[0];
if (!canvas.dataset.painted) return null;
const middle = [canvas.width >> 1, canvas.height >> 1];
return Array.from(canvas.getContext("2d").getImageData(...middle, 1, 1).data);
"""


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
    # Laid out at their real sizes before they loaded: the attributes came from the renditions.
    assert all(
        img.get_dom_attribute("width") == str(widths[img.get_attribute("data-label")])
        for img in images
    )


def test_upload_page_shows_the_placeholder_then_the_thumbnails_via_sse(
    chrome_driver: object, services: Services, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome_driver
    assert isinstance(driver, WebDriver)
    colour = (200, 80, 40)
    picture = tmp_path / "brick.jpg"
    picture.write_bytes(jpeg_bytes(1500, 1000, colour))
    driver.get(services.base_url + "/")
    driver.execute_script(RECORD_TIMELINE)
    upload_and_see_thumbnails(driver, services.base_url, picture)
    card = driver.find_element(By.CSS_SELECTOR, ".card[data-status='DONE']")
    image_id = card.get_attribute("data-id")
    log = services.api.logs()  # before this test's own GET below
    with httpx.Client(base_url=services.base_url) as client:
        placeholder = client.get(f"/images/{image_id}").json()["placeholder"]
    timeline = driver.execute_script("return window.timeline")
    slots = [entry for entry in timeline if entry["kind"] == "slot"]
    assert sorted(slot["label"] for slot in slots) == ["100x100", "1200x1200", "300x300"]
    # Each slot showed the placeholder colour before its thumbnail had loaded ...
    assert all(slot["color"] == placeholder["color"] and not slot["loaded"] for slot in slots)
    first_load = min(timeline.index(e) for e in timeline if e["kind"] == "load")
    assert max(timeline.index(slot) for slot in slots) < first_load
    # ... with the BlurHash painted under it, close to the picture's one colour.
    canvases = card.find_elements(By.CSS_SELECTOR, ".slot canvas.blur")
    assert len(canvases) == 3

    def painted(canvas: object) -> list[int]:
        pixel: list[int] = WebDriverWait(driver, 10).until(
            lambda d: d.execute_script(PAINTED_PIXEL, canvas)
        )
        return pixel

    pixels = [painted(canvas) for canvas in canvases]
    for red, green, blue, alpha in pixels:
        assert alpha == 255
        assert max(abs(red - 200), abs(green - 80), abs(blue - 40)) <= 12, pixels
    # The page followed the status over Server-Sent Events, not by polling.
    assert f'"path": "/images/{image_id}/events"' in log
    assert f'"path": "/images/{image_id}"' not in log


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
