"""The page in a real browser: headless Chromium (Debian's ``chromium`` and its driver, through
Selenium) loads ``/`` from a uvicorn server on 127.0.0.1, uploads a photo, waits for both
cartoons, and saves a screenshot; the result images are shown and decode. Skipped, with the
reason given as a warning too, only where no browser or driver is installed."""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
from helpers.ci_required import missing
from helpers.faces import stub_preprocessor, synthetic_photo
from helpers.serving import Uvicorn
from PIL import Image

from p2c_jax.inference import load_generator
from p2c_jax.serve.app import create_app
from p2c_jax.serve.batcher import Buckets

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)


def first_existing(paths) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def chrome(user_data_dir: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium", "pip install -e '.[test]'")
    browser, driver = first_existing(CHROMIUM), first_existing(DRIVER)
    if browser is None or driver is None:
        missing("chromium/chromedriver", "apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={user_data_dir}",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_page_in_chromium(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never look for downloads
    driver = chrome(tmp_path / "chromium-profile")
    try:
        engine = Buckets(load_generator(weights), max_batch=1)
        app = create_app(engine, stub_preprocessor)
        photo = tmp_path / "portrait.jpg"
        Image.fromarray(synthetic_photo(420, 360, 9)).save(photo, quality=92)
        with Uvicorn(app) as server:
            driver.set_page_load_timeout(30)
            driver.set_script_timeout(30)
            driver.get(f"http://127.0.0.1:{server.port}/")
            assert driver.title == "photo2cartoon"
            driver.find_element("id", "file").send_keys(str(photo))
            states = "return ['face', 'whole'].map(id => document.getElementById(id).dataset.state)"
            deadline = time.monotonic() + 120
            while (got := driver.execute_script(states)) != ["done", "done"]:
                status = driver.find_element("id", "status").text
                assert "error" not in got, status
                assert time.monotonic() < deadline, (got, status)
                time.sleep(0.1)
            assert driver.find_element("id", "status").text.startswith("Done in")
            images = {}
            for name in ("photo", "face", "whole"):
                shown = driver.execute_script(
                    "const i = document.getElementById(arguments[0]);"
                    "return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0",
                    name,
                )
                assert shown, name
                data_url = driver.execute_async_script(
                    "const done = arguments[1];"
                    "fetch(document.getElementById(arguments[0]).src).then(r => r.blob())"
                    ".then(b => { const f = new FileReader(); f.onload = () => done(f.result);"
                    " f.readAsDataURL(b); });",
                    name,
                )
                raw = base64.b64decode(data_url.split(",", 1)[1])
                images[name] = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
            assert images["face"].shape == (256, 256, 3)
            assert images["whole"].shape == images["photo"].shape == (420, 360, 3)
            assert not np.array_equal(images["whole"], images["photo"])
            for link in ("face-download", "whole-download"):
                a = driver.find_element("id", link)
                assert a.get_attribute("href").startswith("blob:")
                assert a.get_attribute("aria-disabled") == "false"
            shot = tmp_path / "page.png"
            assert driver.save_screenshot(str(shot))
            assert Image.open(shot).size[0] > 0
            if os.environ.get("P2C_PAGE_SCREENSHOT"):  # to look at
                shutil.copy(shot, os.environ["P2C_PAGE_SCREENSHOT"])
    finally:
        driver.quit()
