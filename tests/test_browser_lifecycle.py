"""The dashboard's delete (with its confirmation) and reprocess buttons, in headless Chromium
against the real API and worker."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import Services
from tests.support import ARTIFACTS, jpeg_bytes
from tests.test_browser import chrome_driver  # noqa: F401  (the session's browser)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def upload_done(base_url: str, name: str) -> str:
    image_id = str(
        httpx.post(f"{base_url}/images", files={"file": (name, jpeg_bytes(800, 600))}).json()["id"]
    )
    deadline = time.monotonic() + 30
    while httpx.get(f"{base_url}/images/{image_id}").json()["status"] != "DONE":
        assert time.monotonic() < deadline, f"{name} not DONE in time"
        time.sleep(0.2)
    return image_id


def test_dashboard_deletes_after_confirmation_and_reprocesses(
    chrome_driver: object,  # noqa: F811
    services: Services,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome_driver
    assert isinstance(driver, WebDriver)
    kept = upload_done(services.base_url, "kept.jpg")
    doomed = upload_done(services.base_url, "doomed.jpg")
    before = httpx.get(f"{services.base_url}/images/{kept}").json()["thumbnails"]
    driver.get(services.base_url + "/dashboard")
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr"))

    def press(action: str, image_id: str) -> None:
        driver.find_element(
            By.CSS_SELECTOR, f"button[data-action='{action}'][data-id='{image_id}']"
        ).click()

    press("delete", doomed)  # asked, and told no: nothing happens
    WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert)
    assert "doomed.jpg" in driver.switch_to.alert.text
    driver.switch_to.alert.dismiss()
    time.sleep(0.5)
    assert httpx.get(f"{services.base_url}/images/{doomed}").status_code == 200

    press("delete", doomed)  # asked, and told yes: the row and the image go
    WebDriverWait(driver, 5).until(lambda d: d.switch_to.alert)
    driver.switch_to.alert.accept()
    WebDriverWait(driver, 10).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, f"tr[data-id='{doomed}']")
    )
    assert "deleted doomed.jpg" in driver.find_element(By.ID, "note").text
    assert httpx.get(f"{services.base_url}/images/{doomed}").status_code == 404

    press("reprocess", kept)
    WebDriverWait(driver, 10).until(
        lambda d: "making kept.jpg again" in d.find_element(By.ID, "note").text
    )
    deadline = time.monotonic() + 30
    while httpx.get(f"{services.base_url}/images/{kept}").json()["thumbnails"] == before:
        assert time.monotonic() < deadline, "thumbnails not made again in time"
        time.sleep(0.2)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "browser-dashboard-actions.png"))
