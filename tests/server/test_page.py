"""The live page in headless Chromium: type a prompt, watch both decoders finish, keep a screenshot."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="refusion-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1300,1000"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options), profile


def test_page_shows_both_decoders_live(live):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, profile = chromium_driver()
    try:
        driver.get(live.url + "/")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text == "tiny-llama")
        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Why is the sky blue?")
        Select(driver.find_element(By.ID, "mode")).select_by_value("both")
        for field, value in (("max_tokens", "32"), ("slot_threshold", "0")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "run").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
        panels = driver.find_elements(By.CSS_SELECTOR, "#panels .panel")
        assert [p.get_attribute("data-decoder") for p in panels] == ["ar", "refusion"]
        for panel in panels:
            assert panel.find_element(By.CLASS_NAME, "error").text == ""
            assert len(panel.find_element(By.CLASS_NAME, "answer").text) > 0
            assert "tok/s" in panel.find_element(By.CLASS_NAME, "tps").text
        ar_forwards = panels[0].find_element(By.CLASS_NAME, "nfe").text
        assert ar_forwards == "32 forwards"  # one token per forward
        # every position of the refusion canvas ended accepted: no masked grey cell is left
        masked = driver.execute_script("""
            const c = document.querySelectorAll('#panels canvas')[1], g = c.getContext('2d');
            let left = 0;
            for (let p = 0; p < 32; p++) {
              const x = (p % 32) * 22 + 11, y = Math.floor(p / 32) * 22 + 4;
              const [r, gr, b] = g.getImageData(x, y, 1, 1).data;
              if (r === 0x2a && gr === 0x32 && b === 0x3c) left++;
            }
            return left;""")
        assert masked == 0
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "server_page.png"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
